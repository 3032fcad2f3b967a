"""What the teacher and the students share: a backbone, the optimiser/schedule, and real-data evaluation.

What the module knows about its data (class names, clip geometry, normalisation) is its
``data_spec`` (:class:`~tsgf_lightning.data.spec.DataSpec`): linked from the DataModule by the CLI,
or, for a module built by hand, taken from the DataModule once in ``setup``; never read from the
trainer's DataModule afterwards.

Metrics are micro-averaged top-1 / top-5 accuracy (fractions) from torchmetrics, one object per
stage and k, logged as ``val/acc_top1``, ``val/acc_top5``, ``test/acc_top1``, ``test/acc_top5``;
top-5 is capped at the number of classes (torchmetrics refuses ``top_k > num_classes``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..data.spec import DataSpec, resolve_spec
from ..models import describe

Backbone = Callable[[int], nn.Module]
Schedule = Literal["cosine", "constant", "step"]


def lr_lambda(schedule: Schedule, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step ``step``: linear warm-up, then cosine to 0,
    constant, or ``step``: x0.1 from half of the steps after warm-up on (the published VDSD evaluation)."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return 1.0 if step - warmup_steps < (total_steps - warmup_steps) / 2 else 0.1
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


class VideoClassifierModule(L.LightningModule):
    """A backbone built for ``num_classes``, trained by a subclass, evaluated on real clips.

    Args:
        backbone: a network class (or callable) taking ``num_classes``; YAML gives its ``class_path``
            and ``init_args``, LightningCLI supplies ``num_classes`` from the data.
        num_classes: linked from ``data.num_classes``.
        optimizer: optimiser factory (default AdamW, lr 1e-3, weight decay 0.01).
        schedule: per-step learning-rate schedule after ``warmup_steps`` linear warm-up steps.
        data_spec: linked from ``data.spec``; None = the DataModule's, taken in ``setup``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, optimizer: OptimizerCallable = torch.optim.AdamW,
                 schedule: Schedule = "cosine", warmup_steps: int = 0, data_spec: DataSpec | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"Expected argument `num_classes` to be >= 2 but got {num_classes}")
        self.net = backbone(num_classes)
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.schedule, self.warmup_steps = schedule, warmup_steps
        k5 = min(5, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")
        self.data_spec = data_spec

    def setup(self, stage: str) -> None:
        self.data_spec = resolve_spec(self.data_spec, self._trainer, type(self).__name__)

    def forward(self, video: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` normalised clips -> logits ``(B, num_classes)``."""
        return self.net(video)

    def _evaluate(self, batch: dict, top1: MulticlassAccuracy, top5: MulticlassAccuracy, stage: str) -> None:
        logits = self(batch["video"])
        top1.update(logits, batch["label"])
        top5.update(logits, batch["label"])
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, batch["label"]), sync_dist=True)
        self.log(f"{stage}/acc_top1", top1)
        self.log(f"{stage}/acc_top5", top5)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_top1, self.val_top5, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_top1, self.test_top5, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        lr = self.base_lr()
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.schedule, total, self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def base_lr(self) -> float | None:
        """A learning rate that replaces the optimiser's configured one (None: keep it); the scheduler scales it."""
        return None

    def architecture(self) -> dict:
        """``{"class_path", "init_args"}`` of the backbone, recorded in checkpoints."""
        return describe(self.net)
