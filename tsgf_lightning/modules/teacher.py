"""TeacherModule: cross-entropy training of a video classifier on the real training set (Eq. 3)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable

from ..data.spec import DataSpec
from ..tsgf import mixed_cross_entropy, step_seed, student_mix
from ..tsgf.mixing import MixMode
from .classifier import Backbone, Schedule, VideoClassifierModule
from .frozen import checkpoint_record


class TeacherModule(VideoClassifierModule):
    """Trains ``backbone`` with cross-entropy on real clips (optionally label-smoothed, optionally mixed).

    Its checkpoints carry a ``tsgf`` record (architecture, classes, clip geometry, normalisation) so
    later stages can rebuild the teacher and refuse a checkpoint that does not match their data.

    Args:
        backbone, num_classes, optimizer, schedule, warmup_steps, data_spec: see ``VideoClassifierModule``.
        label_smoothing: cross-entropy label smoothing.
        mix: batch mixing of the real clips, as the student's (:func:`~tsgf_lightning.tsgf.student_mix`):
            ``none`` (default), ``videomix`` (a CutMix box from a partner clip in every frame) or ``tsgf``
            (only in non-key frames); the loss weights both labels by voxel share.
        mix_prob, mix_alpha: probability that a batch is mixed; Beta parameter of the box area.
        seed: seed of the mixing draws (per step and rank).
    """

    def __init__(self, backbone: Backbone, num_classes: int, optimizer: OptimizerCallable = torch.optim.AdamW,
                 schedule: Schedule = "cosine", warmup_steps: int = 0, label_smoothing: float = 0.0,
                 mix: MixMode = "none", mix_prob: float = 1.0, mix_alpha: float = 1.0, seed: int = 0,
                 data_spec: DataSpec | None = None):
        super().__init__(backbone, num_classes, optimizer, schedule, warmup_steps, data_spec)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "data_spec"])
        if not 0.0 <= mix_prob <= 1.0 or mix_alpha <= 0:
            raise ValueError(f"Expected `mix_prob` in [0, 1] and `mix_alpha` > 0 but got {mix_prob}, {mix_alpha}")
        self.label_smoothing = label_smoothing

    def training_step(self, batch: dict, batch_idx: int):
        h, x, y = self.hparams, batch["video"], batch["label"]
        gen = torch.Generator().manual_seed(step_seed(h.seed, self.global_step, self.global_rank))
        mix = h.mix if float(torch.rand((), generator=gen)) < h.mix_prob else "none"
        x, partner, frac = student_mix(x, mix, gen, self.data_spec.mean, self.data_spec.std, h.mix_alpha)
        logits = self(x)
        loss = mixed_cross_entropy(logits, y, partner, frac, self.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc_top1", acc, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tsgf"] = checkpoint_record("teacher", self.architecture(), self.num_classes, self.data_spec)
