"""SynthesisModule: optimise IPC synthetic videos per class against a frozen teacher (Eq. 4-8, Algorithm 1).

Each step:

1. draw a clip-consistent random crop/flip for every synthetic video (one generator seeded from
   ``(seed, step)``, so augmentation does not depend on the number of ranks or on resuming);
2. ``L = a_ce * CE(teacher(x), y) + a_reg * sum_l w_l (||mu_l - RM_l||_2 + ||var_l - RV_l||_2)``
   with the batch statistics of the *whole* synthetic set (all-reduced across ranks);
3. ``on_before_optimizer_step``: the TSGF mask (Eq. 6-8, from the current videos) scales each
   frame's gradient, or (``mask_target: update``) each frame's update;
4. after the step, pixels are clamped to the valid range.

The parameters are the videos, in normalised input space (as in SRe2L, so the paper's learning
rates keep their meaning). Under :class:`~tsgf_lightning.strategy.ShardedSynthesisStrategy` each rank
owns the videos of a contiguous range of classes. Checkpoints always hold the whole set (gathered),
so a run can resume on any number of ranks. At the end of fit the set is exported
(:mod:`~tsgf_lightning.export`).
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.nn import functional as F

from ..export import SYNTHESIS_EXTRAS, export_distilled, plain_types
from ..select import select as select_clips
from ..strategy import ShardedSynthesisStrategy
from ..tsgf import BNStatistics, key_frames, temporal_saliency, tsgf_mask
from ..tsgf.augment import apply_crop_flip, crop_flip_thetas
from ..tsgf.multiformation import pack_tiles, tile_map, unpack_tiles
from ..tsgf.saturation import MAX_SATURATED_FRACTION, check_saturation
from ..video import at_pixel_bounds, denormalize, normalize, pixel_bounds
from ..visualize import frame_grid, saliency_map
from .classifier import Backbone, Schedule, lr_lambda
from .frozen import drop_teacher_weights, load_teacher, restore_teacher_weights

MaskShape = Literal["none", "eq8", "binary"]

__all__ = ["SynthesisModule", "apply_crop_flip", "crop_flip_thetas", "shard_classes"]


def shard_classes(num_classes: int, world_size: int, rank: int) -> range:
    """Contiguous class range of ``rank`` (sizes differ by at most one)."""
    if world_size > num_classes:
        raise ValueError(f"synthesis shards by class: {world_size} ranks for {num_classes} classes leaves some "
                         "ranks without work; use at most as many devices as classes")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class _AllReduceSum:
    """Differentiable all-reduce (sum) of BN moments: every rank sees the statistics of the whole set."""

    def __call__(self, t: Tensor) -> Tensor:
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(t, op=dist.ReduceOp.SUM)


class SynthesisModule(L.LightningModule):
    """Synthetic videos optimised against a frozen teacher with TSGF-guided updates.

    Args:
        num_classes: linked from the data.
        teacher_ckpt: TeacherModule checkpoint; loaded in ``setup()`` and checked against the data.
        teacher_backbone: the teacher architecture, if the config wants it checked against the
            checkpoint; None = rebuild what the checkpoint records.
        ipc: synthetic videos per class (stored videos: the storage budget).
        factor: multi-formation factor: each stored video holds ``factor x factor`` tiles, each a clip
            of the class at ``1/factor`` resolution that the teacher (and later the student) sees
            upsampled to full size (:mod:`~tsgf_lightning.tsgf.multiformation`). 1 = the paper.
        init: ``real`` = real training clips of each class (recorded in the export), ``noise`` =
            standard normal in input space.
        init_select: which real clips: ``random`` (seed ``init_seed``), or the teacher's choice
            (``confident``: highest probability of their class; ``herding``; ``kcenter``).
        init_seed: seed of the initialisation.
        lr, betas, schedule: Adam on the videos (SRe2L: betas (0.5, 0.9), cosine).
        ce_weight, bn_weight: ``a_ce`` and ``a_reg`` of Eq. 4 (the paper's r_bn is ``bn_weight``).
        first_bn_multiplier: weight of the first BN layer in Eq. 5 (SRe2L uses 10).
        augment: random crop/flip of every video each step; augment_scale: the crop's area range;
            augment_flip: allow horizontal flips (named apart from the DataModule's ``crop_scale``/``flip``,
            which Lightning would otherwise refuse as conflicting hyper-parameters).
        mask: TSGF_O mask: ``eq8`` (the paper), ``binary`` (key frames 0, others 1), ``none`` (SRe2L).
        mask_target: ``gradient`` (the paper: scale the gradient; Adam largely normalises a slowly
            varying scale away) or ``update`` (scale the optimiser's actual step per frame).
        mask_source: ``current`` (the paper: saliency of the current videos, every step) or ``init``
            (saliency of the real initialisation, fixed: key frames then stay exactly real).
        signed_mask: the Appendix-E ablation: the mask may flip the gradient's sign.
        window_length, window, eps, eps_mode: saliency smoothing (Eq. 7) and threshold (Eq. 8).
        seed: seed of the per-step augmentation.
        max_saturated_fraction: the share of the pixels a step can move that may sit at 0 or 1 beyond
            the initialisation's share; checked after every update, before anything is saved: above it
            the run stops (the clamp turns a divergence into a black-and-white set, never a NaN). The
            measurements behind the default: :mod:`~tsgf_lightning.tsgf.saturation`.
        export_dir: where ``distilled.pt`` and pictures go at the end of fit (default: the logger's dir).
        image_every_n_steps: TensorBoard frame grids / saliency maps every this many steps (0 = never).
    """

    def __init__(
        self,
        num_classes: int,
        teacher_ckpt: str,
        teacher_backbone: Backbone | None = None,
        ipc: int = 1,
        factor: int = 1,
        init: Literal["real", "noise"] = "real",
        init_select: Literal["random", "confident", "herding", "kcenter"] = "random",
        init_seed: int = 0,
        lr: float = 0.25,
        betas: tuple[float, float] = (0.5, 0.9),
        schedule: Schedule = "cosine",
        ce_weight: float = 1.0,
        bn_weight: float = 0.01,
        first_bn_multiplier: float = 10.0,
        augment: bool = True,
        augment_scale: tuple[float, float] = (0.5, 1.0),
        augment_flip: bool = True,
        mask: MaskShape = "eq8",
        mask_target: Literal["gradient", "update"] = "gradient",
        mask_source: Literal["current", "init"] = "current",
        signed_mask: bool = False,
        window_length: int = 3,
        window: Literal["uniform", "hann", "exponential", "linear"] = "hann",
        eps: float = 0.5,
        eps_mode: Literal["absolute", "quantile"] = "quantile",
        seed: int = 0,
        max_saturated_fraction: float = MAX_SATURATED_FRACTION,
        export_dir: str | None = None,
        image_every_n_steps: int = 200,
    ):
        super().__init__()
        if ipc < 1:
            raise ValueError(f"Expected argument `ipc` to be >= 1 but got {ipc}")
        if factor < 1:
            raise ValueError(f"Expected argument `factor` to be >= 1 but got {factor}")
        if lr <= 0:
            raise ValueError(f"Expected argument `lr` to be > 0 but got {lr}")
        if not 0.0 < max_saturated_fraction <= 1.0:
            raise ValueError(f"Expected argument `max_saturated_fraction` to be in (0, 1] but got "
                             f"{max_saturated_fraction}")
        if signed_mask and mask != "eq8":
            raise ValueError(f"Expected `signed_mask` only with `mask: eq8` but got mask={mask!r}")
        self.save_hyperparameters(ignore=["teacher_backbone"])
        self.num_classes, self.ipc, self.factor = num_classes, ipc, factor
        self.teacher_backbone = teacher_backbone
        self.teacher: nn.Module | None = None
        self.videos: nn.Parameter | None = None
        self._mask: Tensor | None = None
        self._before_step: Tensor | None = None
        self._moved: Tensor | None = None  # (n * factor^2, T): frames the mask has let move in this process
        self._moving = 1.0  # their share of the whole set's voxels
        self.saturated_fraction: float | None = None  # share of pixel values at 0 or 1, whole set
        self.init_saturated_fraction: float | None = None

    # ------------------------------------------------------------------ set-up
    @property
    def n_global(self) -> int:
        return self.num_classes * self.ipc

    def setup(self, stage: str) -> None:
        if self.videos is not None:
            return
        # Plain `ddp` would run without an error and make a wrong set: DDP broadcasts rank 0's videos over
        # the other ranks' shards and averages their gradients.
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, ShardedSynthesisStrategy):
            raise ValueError(
                f"SynthesisModule cannot run under {type(strategy).__name__} (`strategy: ddp`): DDP would copy "
                "rank 0's synthetic videos to every rank and average their gradients. Use "
                "`trainer.strategy: ddp_shards` (tsgf_lightning.strategy.ShardedSynthesisStrategy), which "
                "keeps one shard of classes per rank")
        h = self.hparams
        dm = self.trainer.datamodule
        teacher, self.teacher_record = load_teacher(h.teacher_ckpt, self.num_classes, self.teacher_backbone,
                                                    dm.class_names, dm.frames, dm.size)
        self.teacher = teacher.to(self.device)
        self.class_names, self.mean, self.std = list(dm.class_names), tuple(dm.mean), tuple(dm.std)
        self.bn = BNStatistics(self.teacher, reduce=_AllReduceSum() if self._world > 1 else None)

        classes = shard_classes(self.num_classes, self._world, self.global_rank)
        index = torch.arange(classes.start * self.ipc, classes.stop * self.ipc)
        labels = torch.arange(self.num_classes).repeat_interleave(self.ipc)
        if h.init == "real":
            # ipc * factor^2 clips per class, class-major; packing keeps each run of factor^2 in one video.
            clips, _, fit_idx = select_clips(dm, h.init_select, self.ipc, h.init_seed, teacher_ckpt=h.teacher_ckpt,
                                             factor=self.factor)
            stored = pack_tiles(clips.float() / 255.0, self.factor)
            init = normalize(stored[index], self.mean, self.std)
            paths = dm.split("fit").paths
            self.init_paths = [paths[i] for i in fit_idx.tolist()]
        else:
            gen = torch.Generator().manual_seed(h.init_seed)
            C, T, S = 3, dm.frames, dm.size
            init = torch.randn(self.n_global, C, T, S, S, generator=gen)[index]
            self.init_paths = []
        lo, hi = pixel_bounds(self.mean, self.std, init)
        self.videos = nn.Parameter(torch.maximum(torch.minimum(init, hi), lo).to(self.device))
        self.register_buffer("labels", labels[index].to(self.device))
        self.register_buffer("global_index", index.to(self.device))
        # The saliency of the initialisation, for `mask_source: init`, and its saturation, the baseline of
        # `max_saturated_fraction` (both recomputed identically on resume, before the checkpoint loads).
        self._init_saliency = self._saliency()
        self.init_saturated_fraction = self._measure_saturation()

    @property
    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.Adam([self.videos], lr=h.lr, betas=tuple(h.betas))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(h.schedule, total, 0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ the step
    @property
    def n_clips(self) -> int:
        """Clips the teacher sees per step over the whole set: stored videos x tiles."""
        return self.n_global * self.factor ** 2

    def _tile_rows(self) -> Tensor:
        """Global indices of this rank's tiles (clips), in the order ``unpack_tiles`` produces them."""
        f2 = self.factor ** 2
        return (self.global_index.cpu()[:, None] * f2 + torch.arange(f2)).flatten()

    def _augment(self, x: Tensor, step: int) -> Tensor:
        h = self.hparams
        gen = torch.Generator().manual_seed(h.seed * 1_000_003 + step)
        theta = crop_flip_thetas(self.n_clips, gen, tuple(h.augment_scale), h.augment_flip)  # for the whole set
        return apply_crop_flip(x, theta[self._tile_rows()])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        h = self.hparams
        x = unpack_tiles(self.videos, self.factor)  # (n * factor^2, C, T, H, W): every tile at full size
        x = self._augment(x, self.global_step) if h.augment else x
        logits = self.teacher(x)
        labels = self.labels.repeat_interleave(self.factor ** 2)
        ce_sum = F.cross_entropy(logits, labels, reduction="sum")
        reg = self.bn.loss(h.first_bn_multiplier)
        # CE is a mean over the whole set; the regulariser is computed identically on every rank and
        # its gradient summed by the all-reduce's backward, hence / world.
        loss = h.ce_weight * ce_sum / self.n_clips + h.bn_weight * reg / self._world
        finite = bool(torch.isfinite(loss).item())
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise FloatingPointError(
                f"synthesis loss is not finite at step {self.global_step} (ce_sum={ce_sum.item():.4g}, "
                f"bn={reg.item():.4g}); stopped before the update. The last checkpoint and any earlier "
                "export are untouched; lower `lr` or `bn_weight`")
        with torch.no_grad():
            ce_mean = self._sum_over_ranks(ce_sum.detach()) / self.n_clips
            acc = self._sum_over_ranks((logits.argmax(1) == labels).sum().float()) / self.n_clips
        self.log("train/loss_ce", ce_mean)
        self.log("train/loss_bn", reg.detach())
        self.log("train/loss", h.ce_weight * ce_mean + h.bn_weight * reg.detach(), prog_bar=True)
        self.log("train/teacher_acc", acc, prog_bar=True)
        return loss

    def _sum_over_ranks(self, t: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum") if self._world > 1 else t

    def _measure_saturation(self) -> float:
        """Share of the whole set's pixel values at 0 or 1 (every rank's shard; a collective: call on all ranks)."""
        with torch.no_grad():
            count = at_pixel_bounds(self.videos.detach(), self.mean, self.std).sum().float()
            self.saturated_fraction = float(self._sum_over_ranks(count)) / (self.n_global * self.videos[0].numel())
        return self.saturated_fraction

    def _saliency(self) -> Tensor:
        """Per-clip, per-frame saliency ``(n * factor^2, T)`` of the current videos (Eq. 6-7, pixel space)."""
        h = self.hparams
        pixels = denormalize(unpack_tiles(self.videos.detach(), self.factor), self.mean, self.std)
        return temporal_saliency(pixels, h.window_length, h.window)

    def on_before_optimizer_step(self, optimizer) -> None:
        h = self.hparams
        if h.mask == "none":
            return
        with torch.no_grad():
            saliency = self._init_saliency if h.mask_source == "init" else self._saliency()
            mask = tsgf_mask(saliency, h.eps, h.eps_mode, h.mask, h.signed_mask)  # (n * factor^2, T)
            # Adam keeps moving a frame whose mask was once non-zero; tiles and frames are equal shares of a video.
            self._moved = (mask != 0) if self._moved is None else self._moved | (mask != 0)
            self._moving = float(self._sum_over_ranks(self._moved.sum().float())) / (self.n_clips * mask.shape[1])
        self.log("train/frames_frozen", (mask == 0).float().mean())
        self.log("train/mask_mean", mask.mean())
        H, W = self.videos.shape[-2:]
        m = tile_map(mask, self.factor, H, W).to(self.videos)  # (n, 1, T, H, W): each tile its own mask
        if h.mask_target == "gradient":
            self.videos.grad.mul_(m)
        else:
            self._mask, self._before_step = m, self.videos.detach().clone()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        # The update mask, the clamp and the saturation check complete the step here, before any callback:
        # Lightning calls the module's `on_train_batch_end` after the callbacks' (ModelCheckpoint's), which
        # would save unmasked, unclamped (or saturated) videos and make a resumed run differ.
        optimizer.step(closure=optimizer_closure)
        with torch.no_grad():
            if self._before_step is not None:
                # Keep only the masked share of the optimiser's step (Adam's momentum included).
                self.videos.copy_(self._before_step + self._mask * (self.videos - self._before_step))
                self._mask = self._before_step = None
            lo, hi = pixel_bounds(self.mean, self.std, self.videos)
            self.videos.copy_(torch.maximum(torch.minimum(self.videos, hi), lo))
        self.log("train/saturated_fraction", self._measure_saturation())
        check_saturation(self.global_step, self.saturated_fraction, self.init_saturated_fraction, self._moving,
                         self.hparams.max_saturated_fraction, self.hparams.lr)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.hparams.image_every_n_steps
        if every and self.global_step % every == 0:
            self._log_images()

    # ------------------------------------------------------------------ gathering, checkpoints, export
    def _shard_sizes(self) -> list[int]:
        return [len(shard_classes(self.num_classes, self._world, r)) * self.ipc for r in range(self._world)]

    def _gather(self, t: Tensor) -> Tensor:
        """Concatenate every rank's shard of ``t`` (rows = this rank's videos) in global order."""
        if self._world == 1:
            return t
        sizes = self._shard_sizes()
        padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        gathered = self.all_gather(padded)  # (world, max, ...)
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    def full_set(self) -> tuple[Tensor, Tensor]:
        """The whole synthetic set in ``[0, 1]`` pixel space ``(N, C, T, H, W)`` and its labels (every rank)."""
        videos = self._gather(self.videos.detach())
        return denormalize(videos, self.mean, self.std).clamp(0, 1), self._gather(self.labels)

    def _record(self) -> dict:
        h = self.hparams
        return {"stage": "synthesis", "num_classes": self.num_classes, "class_names": self.class_names,
                "ipc": self.ipc, "factor": self.factor, "mean": list(self.mean), "std": list(self.std),
                "method": "tsgf" if h.mask != "none" else "sre2l",
                "teacher_sha256": self.teacher_record["sha256"], "teacher_arch": self.teacher_record["arch"],
                "init_paths": self.init_paths, "saturated_fraction": self.saturated_fraction,
                "init_saturated_fraction": self.init_saturated_fraction, "config": plain_types(dict(h))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # World-size-free checkpoint: whole tensors, built as new dicts (the nested optimiser dicts
        # are the live optimiser's own).
        sd = checkpoint["state_dict"]
        checkpoint["state_dict"] = {**sd, "videos": self._gather(self.videos.detach()),
                                    "labels": self._gather(self.labels),
                                    "global_index": self._gather(self.global_index)}
        states = []
        for opt in checkpoint["optimizer_states"]:
            per_param = {pid: {k: self._gather(v) if torch.is_tensor(v) and v.dim() == 5 else v
                               for k, v in st.items()} for pid, st in opt["state"].items()}
            states.append({**opt, "state": per_param})
        checkpoint["optimizer_states"] = states
        self._measure_saturation()
        checkpoint["tsgf"] = self._record()
        drop_teacher_weights(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rows = self.global_index.cpu()
        sd = checkpoint["state_dict"]
        if sd["videos"].shape[0] != self.n_global:
            raise ValueError(f"checkpoint holds {sd['videos'].shape[0]} videos but this run has "
                             f"{self.num_classes} classes x ipc {self.ipc}")
        checkpoint["state_dict"] = {**sd, "videos": sd["videos"][rows], "labels": sd["labels"][rows],
                                    "global_index": sd["global_index"][rows]}
        checkpoint["optimizer_states"] = [
            {**opt, "state": {pid: {k: v[rows] if torch.is_tensor(v) and v.dim() == 5 else v for k, v in st.items()}
                              for pid, st in opt["state"].items()}}
            for opt in checkpoint["optimizer_states"]]
        restore_teacher_weights(checkpoint, self.teacher)

    def on_fit_end(self) -> None:
        videos, labels = self.full_set()
        self._measure_saturation()
        if self.global_rank != 0:
            return
        out = self.hparams.export_dir or self.trainer.log_dir or self.trainer.default_root_dir
        record = self._record()
        export_distilled(out, videos.cpu(), labels.cpu(), self.class_names, self.ipc, list(self.mean),
                         list(self.std), method=record["method"], teacher_sha256=record["teacher_sha256"],
                         config=record["config"], factor=self.factor,
                         extra={**{k: record[k] for k in SYNTHESIS_EXTRAS}, "steps": int(self.global_step)})

    def _log_images(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(experiment, "add_image"):
            return
        h = self.hparams
        with torch.no_grad():
            first = self.labels != torch.roll(self.labels, 1)  # first video of each class of this shard
            first[0] = True
            pick = torch.nonzero(first).flatten()[:8]
            pixels = denormalize(self.videos.detach()[pick], self.mean, self.std).float().cpu()
            f2 = self.factor ** 2
            s = self._saliency().reshape(len(self.videos), f2, -1)[pick].reshape(len(pick) * f2, -1).cpu()
            key = key_frames(s, h.eps, h.eps_mode)
        experiment.add_image("synthesis/frames", frame_grid(pixels), self.global_step)
        experiment.add_image("synthesis/saliency", saliency_map(s, key), self.global_step)

