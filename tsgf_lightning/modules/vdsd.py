"""VDSDModule: static/dynamic disentanglement (Wang et al. 2024) with the DM loss, both stages in one fit.

Memories, class-major:

- static ``(num_classes * static_per_class, C, H, W)``: one frame per entry, in normalised input space;
- dynamic ``(num_classes * dynamic_per_class, 1, T, H, W)``: one map per entry;
- a :class:`~tsgf_lightning.baselines.Hallucinator` (``Conv3d`` 4 -> 3, kernel 3) shared by all videos.

Every pair (static entry, dynamic entry) of a class is one synthetic video
(:func:`~tsgf_lightning.baselines.pair_memories`), so a class has ``static_per_class * dynamic_per_class``
videos, which must equal ``ipc``: the export holds IPC videos per class, the storage budget every other
method gets. With the defaults ``static_per_class = 1`` and ``dynamic_per_class = ipc`` (IPC 1 -> 1 x 1,
IPC 5 -> 1 x 5, IPC 10 -> 1 x 10; 2 x 5 also fits IPC 10).

Steps ``0 .. static_steps - 1`` (stage 1) distil the static frames with image DM: a fresh network embeds
``batch_real`` random frames of real clips of each class and the class's static frames, each frame
repeated ``T`` times into a still clip (the frame-level embedding of the same 3D network family; the
published stage 1 runs a 2D image method on frames); then the static memory is frozen. Steps
``static_steps .. static_steps + dynamic_steps - 1`` (stage 2) learn the dynamic memory and the
hallucinator with DM on the assembled videos (:func:`~tsgf_lightning.baselines.assemble_videos`) against
``batch_real`` real clips per class. The stage is a function of the step alone, so a run resumes exactly
at any step, in either stage.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..baselines import Hallucinator, assemble_videos, dm_loss, pair_memories
from ..data.spec import DataSpec
from ..models import ConvNet3D
from ..tsgf import step_seed
from ..video import denormalize, normalize
from .classifier import Backbone
from .dm import embed_in_chunks
from .pixel_set import DistilledSetModule, check_at_least, clamp_pixels_, fresh_network, network_seed


def still_clips(frames: Tensor, length: int) -> Tensor:
    """Frames ``(N, C, H, W)`` -> still clips ``(N, C, length, H, W)``: each frame repeated ``length`` times."""
    return frames.unsqueeze(2).expand(-1, -1, length, -1, -1)


class VDSDModule(DistilledSetModule):
    """Static frames and dynamic maps per class, assembled into IPC videos per class by a hallucinator.

    Hyper-parameters, with the published code's values (method.md, "Baselines"; DM variant, IPC 1):

    - ``lr_dynamic`` 1e-4, ``lr_hal`` 1e-5, SGD momentum 0.95 on both (published); 5000 stage-2 steps;
    - dynamic memory initialised ``N(0, 1)`` (published ``randn``); the hallucinator at PyTorch's default
      ``Conv3d`` init (seeded by ``init_seed``; the published hallucinator's own init was not checked);
    - ``batch_real`` 64 (published);
    - stage 1: ``lr_static`` 1.0 with momentum 0.5 (image DM's defaults; the published stage 1 is a
      separate image-distillation run whose result is loaded and frozen), static frames initialised from
      the middle frame of random real clips.

    Where ours differs:

    - storage: ``static_per_class * dynamic_per_class == ipc`` videos per class, every pairing exported. The
      published code uses 2 static and 2 dynamic entries per class at IPC 1 and pairs them at random each
      step, i.e. 4 possible videos per class (and more storage than one video) for IPC 1;
    - stage 1 embeds still clips with the 3D network rather than frames with a 2D network, and runs inside
      the same fit; the embedding network is in eval mode, and the static frames are clamped to the valid
      pixel range after each step (see :class:`~.dm.DMModule`);
    - one process only (the hallucinator is shared by every class, so class shards would need gradient
      exchange).

    Args:
        num_classes, ipc, export_dir, export_media, image_every_n_steps, data_spec: see
            :class:`~.pixel_set.DistilledSetModule`.
        static_per_class: static entries per class; dynamic_per_class: dynamic entries per class
            (None = ``ipc / static_per_class``); their product must be ``ipc``.
        static_steps, dynamic_steps: steps of each stage; ``trainer.max_steps`` must be their sum.
        embed_backbone: the network built fresh each step (None = ``ConvNet3D`` at its defaults).
        batch_real, embed_batch: real clips per class per step; clips embedded at once (memory only).
        lr_static, static_momentum: SGD on the static frames (stage 1).
        lr_dynamic, lr_hal, momentum: SGD on the dynamic memory and the hallucinator (stage 2).
        dynamic_init_std: standard deviation of the dynamic memory's normal initialisation.
        init_seed: seed of the initialisation (real clips, dynamic memory, hallucinator).
        seed: seed of the per-step networks and draws.
    """

    method = "vdsd"

    def __init__(
        self,
        num_classes: int,
        ipc: int = 1,
        static_per_class: int = 1,
        dynamic_per_class: int | None = None,
        static_steps: int = 1000,
        dynamic_steps: int = 5000,
        embed_backbone: Backbone | None = None,
        batch_real: int = 64,
        embed_batch: int = 256,
        lr_static: float = 1.0,
        static_momentum: float = 0.5,
        lr_dynamic: float = 1e-4,
        lr_hal: float = 1e-5,
        momentum: float = 0.95,
        dynamic_init_std: float = 1.0,
        init_seed: int = 0,
        seed: int = 0,
        export_dir: str | None = None,
        export_media: bool = True,
        image_every_n_steps: int = 0,
        data_spec: DataSpec | None = None,
    ):
        super().__init__(num_classes, ipc, export_dir, export_media, image_every_n_steps, data_spec)
        check_at_least(1, static_per_class=static_per_class)
        dynamic_per_class = dynamic_per_class or max(1, ipc // static_per_class)
        if static_per_class * dynamic_per_class != ipc:
            raise ValueError(f"Expected `static_per_class * dynamic_per_class` to equal `ipc` = {ipc} (each class "
                             f"exports every pairing) but got {static_per_class} x {dynamic_per_class}")
        check_at_least(0, static_steps=static_steps, dynamic_steps=dynamic_steps)
        self.save_hyperparameters(ignore=["embed_backbone", "data_spec"])
        self.hparams.dynamic_per_class = dynamic_per_class
        self.spc, self.dpc = static_per_class, dynamic_per_class
        self.embed_backbone = embed_backbone or ConvNet3D
        self.static: nn.Parameter | None = None
        self.dynamic: nn.Parameter | None = None
        self.hallucinator: Hallucinator | None = None
        self.init_paths: list[str] = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        if self.static is not None:
            return
        h = self.hparams
        spec, dm = self._embedding_setup(shards=False)
        clips, _, idx = dm.random_subset(self.spc, h.init_seed)  # (classes * spc, C, T, S, S), class-major
        paths = dm.part("fit").paths
        self.init_paths = [paths[i] for i in idx.tolist()]
        middle = clips[:, :, spec.frames // 2 : spec.frames // 2 + 1].float() / 255.0  # (N, C, 1, S, S)
        middle = normalize(middle, spec.mean, spec.std)[:, :, 0]  # (N, C, S, S): the middle frames
        gen = torch.Generator().manual_seed(h.init_seed)
        dynamic = h.dynamic_init_std * torch.randn(self.num_classes * self.dpc, 1, spec.frames, spec.size, spec.size,
                                                   generator=gen)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(h.init_seed)
            self.hallucinator = Hallucinator(len(spec.mean)).to(self.device)
        self.static = nn.Parameter(clamp_pixels_(middle, spec.mean, spec.std).to(self.device))
        self.dynamic = nn.Parameter(dynamic.to(self.device))
        static_index, dynamic_index = pair_memories(self.num_classes, self.spc, self.dpc)
        self.register_buffer("static_index", static_index.to(self.device))
        self.register_buffer("dynamic_index", dynamic_index.to(self.device))
        self.register_buffer("labels", torch.arange(self.num_classes).repeat_interleave(self.ipc).to(self.device))
        self.register_buffer("static_labels", torch.arange(self.num_classes).repeat_interleave(self.spc)
                             .to(self.device))

    def on_fit_start(self) -> None:
        h, total = self.hparams, self.hparams.static_steps + self.hparams.dynamic_steps
        if self.trainer.max_steps != total:
            raise ValueError(f"VDSDModule runs static_steps + dynamic_steps = {h.static_steps} + {h.dynamic_steps} "
                             f"= {total} steps but trainer.max_steps is {self.trainer.max_steps}: set it to {total}")

    def configure_optimizers(self):
        # One SGD, one group per memory. A stage's loss leaves the other stage's tensors without a gradient
        # (None after zero_grad), and SGD skips those entirely: neither their values nor their momentum move.
        h = self.hparams
        return torch.optim.SGD([
            {"params": [self.static], "lr": h.lr_static, "momentum": h.static_momentum},
            {"params": [self.dynamic], "lr": h.lr_dynamic, "momentum": h.momentum},
            {"params": list(self.hallucinator.parameters()), "lr": h.lr_hal, "momentum": h.momentum}])

    # ------------------------------------------------------------------ the steps
    def stage_of(self, step: int) -> str:
        return "static" if step < self.hparams.static_steps else "dynamic"

    def assembled(self, static: Tensor | None = None) -> Tensor:
        """The synthetic videos ``(N, C, T, H, W)`` in normalised input space (differentiable)."""
        static = self.static.detach() if static is None else static
        return assemble_videos(static, self.dynamic, self.static_index, self.dynamic_index, self.hallucinator)

    def step_loss(self, step: int) -> Tensor:
        """Step ``step``'s DM loss: still clips of frames in stage 1, assembled videos in stage 2."""
        h, T = self.hparams, self.data_spec.frames
        gen = torch.Generator().manual_seed(step_seed(h.seed, step))
        net = fresh_network(self.embed_backbone, self.num_classes, network_seed(gen)).to(self.device, self.dtype)
        draws = self.bank.draw(gen, h.batch_real)
        index = torch.cat(draws)
        real_labels = torch.cat([torch.full((len(d),), c) for c, d in enumerate(draws)]).to(self.device)
        if self.stage_of(step) == "static":
            pick = torch.randint(T, (len(index),), generator=gen)  # one random frame of each real clip
            real = self._embed_frames(net, index, pick)
            syn, syn_labels = net.features(still_clips(self.static, T)), self.static_labels
        else:
            real = embed_in_chunks(net, self.bank, index, h.embed_batch, self.device, self.dtype)
            syn, syn_labels = net.features(self.assembled()), self.labels
        return dm_loss(real, real_labels, syn, syn_labels, self.num_classes)

    def _embed_frames(self, net: nn.Module, index: Tensor, pick: Tensor) -> Tensor:
        """Embeddings ``(n, D)`` of frame ``pick[i]`` of real clip ``index[i]`` as still clips, without a graph."""
        chunk, T, out = self.hparams.embed_batch, self.data_spec.frames, []
        with torch.no_grad():
            for i in range(0, len(index), chunk):
                clips = self.bank.batch(index[i:i + chunk], self.device, self.dtype)  # (n, C, T, H, W)
                rows, at = torch.arange(len(clips), device=clips.device), pick[i:i + chunk].to(clips.device)
                frames = clips[rows, :, at]  # (n, C, H, W)
                out.append(net.features(still_clips(frames, T)))
        return torch.cat(out)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        stage = self.stage_of(self.global_step)
        loss = self.step_loss(self.global_step)
        self._check_finite(loss.detach(), f"{stage} stage, loss={loss.item():.4g}")
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log(f"train/loss_{stage}", loss.detach())
        self.log("train/stage", float(stage == "dynamic"))
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        clamp_pixels_(self.static, *self._norm)  # before any callback (ModelCheckpoint) sees the step

    # ------------------------------------------------------------------ export
    def full_set(self) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return denormalize(self.assembled(), *self._norm).clamp(0, 1), self.labels

    def memory_sizes(self) -> dict:
        return {"static_per_class": self.spc, "dynamic_per_class": self.dpc,
                "static_shape": list(self.static.shape), "dynamic_shape": list(self.dynamic.shape),
                "hallucinator_parameters": sum(p.numel() for p in self.hallucinator.parameters())}

    def record(self) -> dict:
        return {**super().record(), **self.memory_sizes(), "embed_arch": self.embed_arch,
                "init_paths": list(self.init_paths)}

    def export_extra(self) -> dict:
        return {**self.memory_sizes(), "embed_arch": self.embed_arch, "init_paths": list(self.init_paths)}
