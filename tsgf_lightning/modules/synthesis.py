"""SynthesisModule: optimise IPC synthetic videos per class against a frozen teacher (Eq. 4-8, Algorithm 1).

Each step:

1. draw a clip-consistent random crop/flip for every synthetic video (one generator seeded from
   ``(seed, step)``, so augmentation does not depend on the number of ranks or on resuming);
2. ``L = a_ce * CE(teacher(x), y) + a_reg * sum_l w_l (||mu_l - RM_l||_2 + ||var_l - RV_l||_2)``
   with the batch statistics of the *whole* synthetic set (all-reduced across ranks);
3. ``on_before_optimizer_step``: the TSGF mask (Eq. 6-8, from the current videos) scales each
   frame's gradient, or (``mask_target: update``) each frame's update;
4. after the step, pixels are clamped to the valid range.

The parameters are the videos, in normalised input space (as in SRe2L, so the paper's learning rates keep their
meaning). Under :class:`~tsgf_lightning.strategy.ShardedSynthesisStrategy` each rank owns the videos of a contiguous
range of classes. Checkpoints always hold the whole set (gathered), so a run can resume on any number of ranks. At
the end of fit the set is exported (:mod:`~tsgf_lightning.export`).

The data's class names, geometry and normalisation come as ``data_spec`` (linked by the CLI; a module built by hand
takes its DataModule's in ``setup``, :mod:`~tsgf_lightning.data.spec`); the DataModule is read only in ``setup``,
for ``init: real`` (:func:`~tsgf_lightning.data.selection.real_initialisation`, given the loaded teacher). The
teacher is held outside the module tree (:class:`~.frozen.FrozenTeacher`).
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import strategy as sharding
from ..data.selection import real_initialisation
from ..data.spec import DataSpec, resolve_spec
from ..export import export_synthesis, synthesis_record
from ..tsgf import BNStatistics, step_seed, temporal_saliency, tsgf_mask
from ..tsgf.augment import apply_crop_flip, crop_flip_thetas
from ..tsgf.multiformation import tile_map, unpack_tiles
from ..tsgf.saliency import MaskShape, check_floor
from ..tsgf.saturation import MAX_SATURATED_FRACTION, check_saturation
from ..video import at_pixel_bounds, denormalize, normalize
from ..visualize import synthesis_pictures
from .classifier import Backbone, Schedule, lr_lambda
from .frozen import FrozenTeacher, load_teacher
from .pixel_set import check_at_least, clamp_pixels_

#: The ``mask`` setting: a TSGF_O mask shape, or ``none`` (SRe2L: no mask).
TSGFMask = Literal["none", MaskShape]

#: What a checkpoint holds per video (gathered into the whole set on saving, re-sliced on loading).
_PER_VIDEO = ("videos", "labels", "global_index", "moved_frames")


class SynthesisModule(L.LightningModule):
    """Synthetic videos optimised against a frozen teacher with TSGF-guided updates.

    Args:
        num_classes: linked from the data.
        data_spec: linked from ``data.spec``; None = the DataModule's, taken in ``setup``.
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
        optimizer, lr, betas, schedule: ``adam`` on the videos (SRe2L: betas (0.5, 0.9), cosine) or
            ``sgd``, Algorithm 1's plain step ``S <- S - lr * M * grad`` (``betas`` unused).
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
        mask_floor: every frame's factor is at least this (key frames move at this share of the step).
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
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 0.25,
        betas: tuple[float, float] = (0.5, 0.9),
        schedule: Schedule = "cosine",
        ce_weight: float = 1.0,
        bn_weight: float = 0.01,
        first_bn_multiplier: float = 10.0,
        augment: bool = True,
        augment_scale: tuple[float, float] = (0.5, 1.0),
        augment_flip: bool = True,
        mask: TSGFMask = "eq8",
        mask_target: Literal["gradient", "update"] = "gradient",
        mask_source: Literal["current", "init"] = "current",
        signed_mask: bool = False,
        mask_floor: float = 0.0,
        window_length: int = 3,
        window: Literal["uniform", "hann", "exponential", "linear"] = "hann",
        eps: float = 0.5,
        eps_mode: Literal["absolute", "quantile"] = "quantile",
        seed: int = 0,
        max_saturated_fraction: float = MAX_SATURATED_FRACTION,
        export_dir: str | None = None,
        image_every_n_steps: int = 200,
        data_spec: DataSpec | None = None,
    ):
        super().__init__()
        check_at_least(1, ipc=ipc, factor=factor)
        check_floor(mask_floor, signed_mask)
        if lr <= 0:
            raise ValueError(f"Expected argument `lr` to be > 0 but got {lr}")
        if not 0.0 < max_saturated_fraction <= 1.0:
            raise ValueError(f"Expected argument `max_saturated_fraction` in (0, 1] but got {max_saturated_fraction}")
        if signed_mask and mask != "eq8":
            raise ValueError(f"Expected `signed_mask` only with `mask: eq8` but got mask={mask!r}")
        self.save_hyperparameters(ignore=["teacher_backbone", "data_spec"])
        self.num_classes, self.ipc, self.factor = num_classes, ipc, factor
        self.teacher_backbone, self.data_spec = teacher_backbone, data_spec
        self.teacher: FrozenTeacher | None = None
        self.videos: nn.Parameter | None = None
        self._mask: Tensor | None = None
        self._before_step: Tensor | None = None
        self._moving = 1.0  # share of the whole set's voxels in frames the mask has let move (`moved_frames`)
        self.saturated_fraction: float | None = None  # share of pixel values at 0 or 1, whole set
        self.init_saturated_fraction: float | None = None

    # ------------------------------------------------------------------ set-up
    @property
    def n_global(self) -> int:
        return self.num_classes * self.ipc

    def setup(self, stage: str) -> None:
        if self.videos is not None:
            return
        sharding.refuse_wrapping_ddp(self.trainer.strategy)
        h = self.hparams
        spec = self.data_spec = resolve_spec(self.data_spec, self._trainer, "SynthesisModule")
        if spec is None:
            raise ValueError("SynthesisModule needs its data's class names, geometry and normalisation: fit it with "
                             "a VideoDataModule, or pass `data_spec` (the DataModule's `spec`)")
        self.teacher, self.teacher_record = load_teacher(h.teacher_ckpt, self.num_classes, self.teacher_backbone, spec)
        self.bn = BNStatistics(self.teacher.net, reduce=sharding.AllReduceSum() if self._world > 1 else None)

        classes = sharding.shard_classes(self.num_classes, self._world, self.global_rank)
        index = torch.arange(classes.start * self.ipc, classes.stop * self.ipc)
        labels = torch.arange(self.num_classes).repeat_interleave(self.ipc)
        if h.init == "real":
            stored, self.init_paths = real_initialisation(self.trainer.datamodule, h.init_select, self.ipc,
                                                          h.init_seed, self.teacher, self.factor)
            init = normalize(stored[index], spec.mean, spec.std)
        else:
            gen = torch.Generator().manual_seed(h.init_seed)
            init = torch.randn(self.n_global, 3, spec.frames, spec.size, spec.size, generator=gen)[index]
            self.init_paths = []
        self.videos = nn.Parameter(clamp_pixels_(init, spec.mean, spec.std).to(self.device))
        self.register_buffer("labels", labels[index].to(self.device))
        self.register_buffer("global_index", index.to(self.device))
        moved = torch.zeros(len(index), self.factor ** 2, spec.frames, dtype=torch.uint8)  # frames the mask let move
        self.register_buffer("moved_frames", moved.to(self.device))  # checkpointed: a resumed run guards alike
        # The saliency of the initialisation, for `mask_source: init`, and its saturation, the baseline of
        # `max_saturated_fraction` (both recomputed identically on resume, before the checkpoint loads).
        self._init_saliency = self._saliency()
        self.init_saturated_fraction = self._measure_saturation()

    def on_fit_start(self) -> None:
        self.teacher.follow(self)  # Lightning has put the module on this rank's device, in the precision plugin's dtype

    @property
    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def configure_optimizers(self):
        h = self.hparams
        optimizer = (torch.optim.SGD([self.videos], lr=h.lr) if h.optimizer == "sgd"
                     else torch.optim.Adam([self.videos], lr=h.lr, betas=tuple(h.betas)))
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
        gen = torch.Generator().manual_seed(step_seed(h.seed, step))
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
            count = at_pixel_bounds(self.videos.detach(), *self._norm).sum().float()
            self.saturated_fraction = float(self._sum_over_ranks(count)) / (self.n_global * self.videos[0].numel())
        return self.saturated_fraction

    def _saliency(self) -> Tensor:
        """Per-clip, per-frame saliency ``(n * factor^2, T)`` of the current videos (Eq. 6-7, pixel space)."""
        h = self.hparams
        pixels = denormalize(unpack_tiles(self.videos.detach(), self.factor), *self._norm)
        return temporal_saliency(pixels, h.window_length, h.window)

    def on_before_optimizer_step(self, optimizer) -> None:
        h = self.hparams
        if h.mask == "none":
            return
        with torch.no_grad():
            saliency = self._init_saliency if h.mask_source == "init" else self._saliency()
            mask = tsgf_mask(saliency, h.eps, h.eps_mode, h.mask, h.signed_mask, h.mask_floor)  # (n * factor^2, T)
            self.moved_frames |= (mask != 0).view_as(self.moved_frames).to(torch.uint8)  # Adam keeps moving them
            moved = self._sum_over_ranks(self.moved_frames.sum().float())  # tiles and frames: equal shares of a video
            self._moving = float(moved) / (self.n_clips * mask.shape[1])
        self.log("train/frames_frozen", (mask == 0).float().mean())
        self.log("train/mask_mean", mask.mean())
        H, W = self.videos.shape[-2:]
        m = tile_map(mask, self.factor, H, W).to(self.videos)  # (n, 1, T, H, W): each tile its own mask
        if h.mask_target == "gradient":
            self.videos.grad.mul_(m)
        else:
            self._mask, self._before_step = m, self.videos.detach().clone()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        # The update mask, the clamp and the saturation check complete the step here, before any callback: Lightning
        # calls the module's `on_train_batch_end` after ModelCheckpoint's, which would save an unfinished step.
        optimizer.step(closure=optimizer_closure)
        with torch.no_grad():
            if self._before_step is not None:
                # Keep only the masked share of the optimiser's step (Adam's momentum included).
                self.videos.copy_(self._before_step + self._mask * (self.videos - self._before_step))
                self._mask = self._before_step = None
            clamp_pixels_(self.videos, *self._norm)
        self.log("train/saturated_fraction", self._measure_saturation())
        check_saturation(self.global_step, self.saturated_fraction, self.init_saturated_fraction, self._moving,
                         self.hparams.max_saturated_fraction, self.hparams.lr)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.hparams.image_every_n_steps
        if every and self.global_step % every == 0:
            self._log_images()

    # ------------------------------------------------------------------ gathering, checkpoints, export
    @property
    def _norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.data_spec.mean, self.data_spec.std

    def _gather(self, t: Tensor) -> Tensor:
        """Concatenate every rank's shard of ``t`` (rows = this rank's videos) in global order."""
        return sharding.gather_shards(self, t, sharding.shard_sizes(self.num_classes, self.ipc, self._world))

    def full_set(self) -> tuple[Tensor, Tensor]:
        """The whole synthetic set in ``[0, 1]`` pixel space ``(N, C, T, H, W)`` and its labels (every rank)."""
        videos = self._gather(self.videos.detach())
        return denormalize(videos, *self._norm).clamp(0, 1), self._gather(self.labels)

    def _record(self) -> dict:
        return synthesis_record(self.data_spec, self.ipc, self.factor, self.teacher_record, self.init_paths,
                                self.saturated_fraction, self.init_saturated_fraction, dict(self.hparams))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sharding.whole_checkpoint(checkpoint, _PER_VIDEO, self._gather)  # a world-size-free checkpoint
        self._measure_saturation()
        checkpoint["tsgf"] = self._record()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        held = checkpoint["state_dict"]["videos"].shape[0]
        if held != self.n_global:
            raise ValueError(f"checkpoint holds {held} videos but this run has {self.num_classes} classes x ipc "
                             f"{self.ipc}")
        checkpoint["state_dict"].setdefault("moved_frames", torch.zeros(  # a checkpoint of an older version
            held, *self.moved_frames.shape[1:], dtype=torch.uint8))
        sharding.shard_checkpoint(checkpoint, _PER_VIDEO, self.global_index.cpu())

    def on_fit_end(self) -> None:
        videos, labels = self.full_set()
        self._measure_saturation()
        if self.global_rank != 0:
            return
        out = self.hparams.export_dir or self.trainer.log_dir or self.trainer.default_root_dir
        export_synthesis(out, videos.cpu(), labels.cpu(), self._record(), int(self.global_step))

    def _log_images(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(experiment, "add_image"):
            return
        with torch.no_grad():
            grid, heat = synthesis_pictures(denormalize(self.videos.detach(), *self._norm), self.labels,
                                            self._saliency(), self.hparams.eps, self.hparams.eps_mode)
        experiment.add_image("synthesis/frames", grid, self.global_step)
        experiment.add_image("synthesis/saliency", heat, self.global_step)
