"""Soft-label knowledge distillation, the student's loss on teacher-relabelled clips."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def soft_label_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    ``KL(p || q) = sum_k p_k (log p_k - log q_k)`` per sample, then the batch mean (PyTorch's
    ``reduction="batchmean"``). The ``T^2`` factor (Hinton et al., 2015) keeps the gradient's scale
    roughly independent of ``T``. The teacher's logits are detached here, so no gradient ever
    reaches the teacher whatever the caller passes.

    Args:
        student_logits: ``(B, K)``.
        teacher_logits: ``(B, K)``.
        temperature: ``T > 0``.

    Returns:
        scalar, ``>= 0``, zero when the two softened distributions agree.
    """
    if student_logits.dim() != 2:
        raise ValueError(
            f"Expected argument `student_logits` to be (B, K) but got shape {tuple(student_logits.shape)}"
        )
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"Expected argument `teacher_logits` to have shape {tuple(student_logits.shape)} "
            f"but got {tuple(teacher_logits.shape)}"
        )
    is_number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not is_number or not (0 < temperature < math.inf):
        raise ValueError(f"Expected argument `temperature` to be a finite number > 0 but got {temperature}")
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2
