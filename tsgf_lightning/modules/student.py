"""StudentModule: train a fresh network on a distilled (or random real) set, evaluate on real test clips.

Post-evaluation as Algorithm 1 ends: each training batch is augmented with VideoMix pasted only
into the non-key frames (TSGF_A: ``s_i <= eps``; key frames untouched), on top of the DataModule's
clip-consistent crop/flip, and labelled by the frozen teacher on the augmented clip
(``y_s = teacher(x_s)``: soft labels, KL with temperature ``tau``, optionally plus a hard-label
cross-entropy). With hard labels, a mixed clip's label is the voxel-weighted mix of the two labels.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..data.spec import DataSpec
from ..tsgf import mixed_cross_entropy, soft_label_kd, step_seed, student_mix
from ..tsgf.mixing import MixMode
from .classifier import Backbone, Schedule, VideoClassifierModule
from .frozen import FrozenTeacher, checkpoint_record, load_teacher


def compare_teachers(distilled_meta: dict | None, teacher_record: dict) -> bool | None:
    """Whether a distilled set was made through the teacher that relabels it, warning when it was not.

    Evaluating a set through another teacher is legitimate (cross-teacher tables), so it is reported,
    not refused; unnoticed, it makes a result read as the set's own.

    Args:
        distilled_meta: the set's entries other than videos and labels (``VideoDataModule.distilled_meta``),
            or None when the student trains on no distilled set.
        teacher_record: :func:`~tsgf_lightning.modules.frozen.load_teacher`'s record (``sha256``, ``path``).

    Returns:
        None when there is no set or it records no teacher (random and coreset selections write ""),
        else whether the two checkpoints' sha256 digests are equal.
    """
    made_with = (distilled_meta or {}).get("teacher_sha256") or ""
    if not made_with:
        return None
    if made_with == teacher_record["sha256"]:
        return True
    set_teacher = (distilled_meta.get("config") or {}).get("teacher_ckpt")
    through = f"teacher {set_teacher}" if set_teacher else "a teacher"
    rank_zero_warn(f"distilled set {distilled_meta.get('path', '')} was distilled through {through} (sha256 "
                   f"{made_with[:12]}...) but this student's teacher {teacher_record['path']} is another checkpoint "
                   f"(sha256 {teacher_record['sha256'][:12]}...): its soft labels come from a network the set was "
                   "not optimised against. Fine for a cross-teacher evaluation; otherwise set `teacher_ckpt` to "
                   "the set's teacher")
    return False


class StudentModule(VideoClassifierModule):
    """A fresh ``backbone`` trained on a distilled set with TSGF_A and teacher relabelling.

    The teacher is a :class:`~tsgf_lightning.modules.frozen.FrozenTeacher`, loaded in ``setup`` and
    kept outside the module tree: checkpoints hold only the student.

    Args:
        backbone, num_classes, optimizer, schedule, warmup_steps, data_spec: see ``VideoClassifierModule``.
        teacher_ckpt: the teacher for soft labels (needed when ``labels: soft``).
        labels: ``soft`` (teacher on the augmented clip) or ``hard`` (the set's labels).
        temperature: KL temperature ``tau`` of soft labels (loss scaled by ``tau^2``).
        hard_weight: weight of an extra hard-label cross-entropy with soft labels.
        mix: ``tsgf`` (saliency-gated VideoMix), ``videomix`` (every frame), ``none``.
        mix_prob: probability that a batch is mixed.
        mix_alpha: Beta parameter of the CutMix box area.
        window_length, window, eps, eps_mode: saliency for the gate (as in synthesis).
        seed: seed of the mixing draws (per step and rank).
        lr_from_set: train at the learning rate the distilled set carries (MTT's learnt ``syn_lr``,
            as the published MTT evaluation does) instead of the optimiser's; a set without one
            keeps the optimiser's.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        teacher_ckpt: str | None = None,
        labels: Literal["soft", "hard"] = "soft",
        temperature: float = 4.0,
        hard_weight: float = 0.0,
        mix: MixMode = "tsgf",
        mix_prob: float = 1.0,
        mix_alpha: float = 1.0,
        window_length: int = 3,
        window: Literal["uniform", "hann", "exponential", "linear"] = "hann",
        eps: float = 0.5,
        eps_mode: Literal["absolute", "quantile"] = "quantile",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        schedule: Schedule = "cosine",
        warmup_steps: int = 0,
        seed: int = 0,
        lr_from_set: bool = False,
        data_spec: DataSpec | None = None,
    ):
        super().__init__(backbone, num_classes, optimizer, schedule, warmup_steps, data_spec)
        if labels == "soft" and not teacher_ckpt:
            raise ValueError("`labels: soft` needs `teacher_ckpt` (the teacher that relabels each augmented clip)")
        if temperature <= 0:
            raise ValueError(f"Expected argument `temperature` to be > 0 but got {temperature}")
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"Expected argument `mix_prob` to be in [0, 1] but got {mix_prob}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "data_spec"])
        self.teacher: FrozenTeacher | None = None
        #: Whether the distilled set was made through this student's teacher (:func:`compare_teachers`).
        self.distilled_teacher_match: bool | None = None
        #: The distilled set's learnt learning rate, used instead of the optimiser's (``lr_from_set``).
        self.set_lr: float | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.data_spec is None:
            raise ValueError("StudentModule mixes in pixel space and needs its data's normalisation: fit it with a "
                             "VideoDataModule, or pass `data_spec` (the DataModule's `spec`)")
        # The DataModule's setup (which loads the set) has run: Lightning calls it before the module's.
        distilled_meta = getattr(getattr(self._trainer, "datamodule", None), "distilled_meta", None) or {}
        if self.hparams.lr_from_set and distilled_meta.get("syn_lr") is not None:
            self.set_lr = float(distilled_meta["syn_lr"])
        if self.teacher is not None or not self.hparams.teacher_ckpt:
            return
        self.teacher, self.teacher_record = load_teacher(self.hparams.teacher_ckpt, self.num_classes,
                                                         spec=self.data_spec)
        self.distilled_teacher_match = compare_teachers(distilled_meta or None, self.teacher_record)

    def base_lr(self) -> float | None:
        return self.set_lr

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.follow(self)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        h = self.hparams
        x, y = batch["video"], batch["label"]
        gen = torch.Generator().manual_seed(step_seed(h.seed, self.global_step, self.global_rank))
        mix = h.mix if float(torch.rand((), generator=gen)) < h.mix_prob else "none"
        x, partner, frac = student_mix(x, mix, gen, self.data_spec.mean, self.data_spec.std, h.mix_alpha,
                                       h.window_length, h.window, h.eps, h.eps_mode)
        logits = self(x)
        hard = mixed_cross_entropy(logits, y, partner, frac)
        if h.labels == "soft":
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            kd = soft_label_kd(logits, teacher_logits, h.temperature)
            loss = kd + h.hard_weight * hard
            self.log("train/loss_kd", kd)
        else:
            loss = hard
        self.log("train/loss_ce", hard)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mixed_fraction", frac.mean())
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tsgf"] = checkpoint_record("student", self.architecture(), self.num_classes, self.data_spec)
