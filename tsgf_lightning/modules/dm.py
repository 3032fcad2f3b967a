"""DMModule: distribution matching (Zhao & Bilen 2023) on videos, as the published video code runs it.

Each step ``s``, with one generator seeded from ``step_seed(seed, s)``:

1. a freshly initialised network (``embed_backbone``, default :class:`~tsgf_lightning.models.ConvNet3D`)
   is built from the generator's first draw and frozen (:func:`~.pixel_set.fresh_network`);
2. ``batch_real`` real training clips of every class are drawn (without replacement; all of a class
   that has fewer), centre clips at the distilled size, normalised as the data spec says;
3. ``L = sum_c ||mean f(real_c) - mean f(syn_c)||^2`` with ``f = net.features`` (the penultimate
   embedding; :func:`~tsgf_lightning.baselines.dm_loss`);
4. one SGD step (momentum) on the pixels, then the pixels are clamped to the valid range.

The real clips are embedded under ``no_grad`` in chunks of ``embed_batch``; only the synthetic videos
receive gradients. Nothing random is kept between steps, so a checkpoint (videos, SGD momentum) resumes
exactly. Under ``trainer.strategy: ddp_shards`` each rank owns the videos of a contiguous range of
classes: the loss is a sum over classes and the network and the draws are the same on every rank, so the
shards need no communication but the logging sum and the gathering at checkpoint and export time.
Checkpoints hold the whole set, whatever the world size.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .. import strategy as sharding
from ..baselines import dm_loss
from ..data.spec import DataSpec
from ..models import ConvNet3D
from ..tsgf import step_seed
from ..video import denormalize
from .classifier import Backbone
from .pixel_set import (
    DistilledSetModule,
    RealClipBank,
    check_at_least,
    clamp_pixels_,
    fresh_network,
    initial_videos,
    network_seed,
)

#: What a checkpoint holds per video (gathered into the whole set on saving, re-sliced on loading).
_PER_VIDEO = ("videos", "labels", "global_index")


def embed_in_chunks(net: nn.Module, bank: RealClipBank, index: Tensor, chunk: int, device, dtype) -> Tensor:
    """``net.features`` of the bank's clips at ``index`` ``(n, D)``, ``chunk`` clips at a time, without a graph."""
    with torch.no_grad():
        return torch.cat([net.features(bank.batch(index[i:i + chunk], device, dtype))
                          for i in range(0, len(index), chunk)])


class DMModule(DistilledSetModule):
    """IPC synthetic videos per class matched to real clips in the embedding of a fresh random network.

    Hyper-parameters, with the published video code's values (method.md, "Baselines"):

    - ``batch_real`` 64 real clips per class per step (published: 64);
    - ``lr_img`` 30 (published README, MiniUCF IPC 1, normalised pixel space), SGD ``momentum`` 0.5 (published);
    - ``embed_backbone``: ConvNet3D 64/128/128 without normalisation (published); the embedding is its
      ``features`` (the time-averaged last feature map: the published ``embed``);
    - real initialisation, random real clips per class (published); ``init: noise`` is offered;
    - 5000 steps in the published runs (``trainer.max_steps`` here).

    Where ours differs:

    - the network is in eval mode (the published code calls ``train()``): identical for ConvNet3D, which
      has neither normalisation nor dropout in its embedding; for a BatchNorm backbone, train mode would
      normalise each class's real and synthetic batches by their own statistics, removing the very mean
      difference the loss measures;
    - pixels are clamped to ``[0, 1]`` pixel space after each step (the published DM does not clamp; the
      exported set is clamped anyway, so the student would otherwise see another set than the one optimised);
    - the real clips are the DataModule's cached centre clips (published: a random 16-frame window of each
      video, re-read every draw), and all steps' draws are seeded (published: NumPy's global RNG).

    Args:
        num_classes, ipc, export_dir, export_media, image_every_n_steps, data_spec: see
            :class:`~.pixel_set.DistilledSetModule`.
        embed_backbone: the network class (or callable taking ``num_classes``) built fresh each step;
            None = ``ConvNet3D`` at its defaults.
        batch_real: real clips per class per step.
        embed_batch: real clips embedded at once (memory only: the result does not depend on it).
        lr_img, momentum: SGD on the pixels.
        init: ``real`` (random real training clips of each class, seed ``init_seed``) or ``noise``.
        init_seed: seed of the initialisation.
        seed: seed of the per-step networks and draws.
    """

    method = "dm"

    def __init__(
        self,
        num_classes: int,
        ipc: int = 1,
        embed_backbone: Backbone | None = None,
        batch_real: int = 64,
        embed_batch: int = 256,
        lr_img: float = 30.0,
        momentum: float = 0.5,
        init: Literal["real", "noise"] = "real",
        init_seed: int = 0,
        seed: int = 0,
        export_dir: str | None = None,
        export_media: bool = True,
        image_every_n_steps: int = 0,
        data_spec: DataSpec | None = None,
    ):
        super().__init__(num_classes, ipc, export_dir, export_media, image_every_n_steps, data_spec)
        check_at_least(1, batch_real=batch_real, embed_batch=embed_batch)
        if lr_img <= 0:
            raise ValueError(f"Expected argument `lr_img` to be > 0 but got {lr_img}")
        self.save_hyperparameters(ignore=["embed_backbone", "data_spec"])
        self.embed_backbone = embed_backbone or ConvNet3D
        self.videos: nn.Parameter | None = None
        self.init_paths: list[str] = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        if self.videos is not None:
            return
        h = self.hparams
        spec, dm = self._embedding_setup(shards=True)
        self.classes = sharding.shard_classes(self.num_classes, self._world, self.global_rank)
        index = torch.arange(self.classes.start * self.ipc, self.classes.stop * self.ipc)
        labels = torch.arange(self.num_classes).repeat_interleave(self.ipc)
        init, self.init_paths = initial_videos(dm, h.init, self.ipc, h.init_seed, spec)
        self.videos = nn.Parameter(init[index].to(self.device))
        self.register_buffer("labels", labels[index].to(self.device))
        self.register_buffer("global_index", index.to(self.device))

    def configure_optimizers(self):
        return torch.optim.SGD([self.videos], lr=self.hparams.lr_img, momentum=self.hparams.momentum)

    # ------------------------------------------------------------------ the step
    def step_loss(self, step: int) -> tuple[Tensor, nn.Module, list[Tensor]]:
        """This rank's share of step ``step``'s loss, with the step's network and real draws (every class)."""
        h = self.hparams
        gen = torch.Generator().manual_seed(step_seed(h.seed, step))
        net = fresh_network(self.embed_backbone, self.num_classes, network_seed(gen)).to(self.device, self.dtype)
        draws = self.bank.draw(gen, h.batch_real)
        mine = range(self.classes.start, self.classes.stop)
        index = torch.cat([draws[c] for c in mine])
        real_labels = torch.cat([torch.full((len(draws[c]),), c - self.classes.start) for c in mine]).to(self.device)
        real = embed_in_chunks(net, self.bank, index, h.embed_batch, self.device, self.dtype)
        syn = net.features(self.videos)
        loss = dm_loss(real, real_labels, syn, self.labels - self.classes.start, len(mine))
        return loss, net, draws

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _, _ = self.step_loss(self.global_step)
        total = self._sum_over_ranks(loss.detach())
        self._check_finite(total, f"loss={total.item():.4g}")
        self.log("train/loss", total, prog_bar=True)
        self.log("train/loss_per_class", total / self.num_classes)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        # The clamp completes the step here, before any callback (ModelCheckpoint) can save unclamped pixels.
        optimizer.step(closure=optimizer_closure)
        clamp_pixels_(self.videos, *self._norm)

    # ------------------------------------------------------------------ checkpoints, export
    def _gather(self, t: Tensor) -> Tensor:
        return sharding.gather_shards(self, t, sharding.shard_sizes(self.num_classes, self.ipc, self._world))

    def full_set(self) -> tuple[Tensor, Tensor]:
        videos = self._gather(self.videos.detach())
        return denormalize(videos, *self._norm).clamp(0, 1), self._gather(self.labels)

    def record(self) -> dict:
        return {**super().record(), "embed_arch": self.embed_arch, "init_paths": list(self.init_paths)}

    def export_extra(self) -> dict:
        return {"embed_arch": self.embed_arch, "init_paths": list(self.init_paths)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sharding.whole_checkpoint(checkpoint, _PER_VIDEO, self._gather)  # a world-size-free checkpoint
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        held = checkpoint["state_dict"]["videos"].shape[0]
        if held != self.num_classes * self.ipc:
            raise ValueError(f"checkpoint holds {held} videos but this run has {self.num_classes} classes x ipc "
                             f"{self.ipc}")
        sharding.shard_checkpoint(checkpoint, _PER_VIDEO, self.global_index.cpu())
