"""TeacherModule: cross-entropy training of a video classifier on the real training set (Eq. 3)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from ..data.spec import DataSpec
from .classifier import Backbone, Schedule, VideoClassifierModule
from .frozen import checkpoint_record


class TeacherModule(VideoClassifierModule):
    """Trains ``backbone`` with cross-entropy (optionally label-smoothed) on real clips.

    Its checkpoints carry a ``tsgf`` record (architecture, classes, clip geometry, normalisation) so
    later stages can rebuild the teacher and refuse a checkpoint that does not match their data.

    Args:
        backbone, num_classes, optimizer, schedule, warmup_steps, data_spec: see ``VideoClassifierModule``.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, backbone: Backbone, num_classes: int, optimizer: OptimizerCallable = torch.optim.AdamW,
                 schedule: Schedule = "cosine", warmup_steps: int = 0, label_smoothing: float = 0.0,
                 data_spec: DataSpec | None = None):
        super().__init__(backbone, num_classes, optimizer, schedule, warmup_steps, data_spec)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "data_spec"])
        self.label_smoothing = label_smoothing

    def training_step(self, batch: dict, batch_idx: int):
        logits = self(batch["video"])
        loss = nn.functional.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc_top1", acc, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tsgf"] = checkpoint_record("teacher", self.architecture(), self.num_classes, self.data_spec)
