"""Soft-label KD against a naive per-sample KL sum."""

from __future__ import annotations

import math

import pytest
import torch

from tsgf_lightning.tsgf.losses import soft_label_kd


def naive_kd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> float:
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        zs = sum(math.exp(v / T) for v in s_row)
        zt = sum(math.exp(v / T) for v in t_row)
        for sv, tv in zip(s_row, t_row, strict=True):
            p, q = math.exp(tv / T) / zt, math.exp(sv / T) / zs
            total += p * (math.log(p) - math.log(q))
    return total / student.shape[0] * T * T


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_matches_naive(T: float) -> None:
    g = torch.Generator().manual_seed(int(T))
    student, teacher = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    assert math.isclose(float(soft_label_kd(student, teacher, T)), naive_kd(student, teacher, T), rel_tol=1e-5)


def test_zero_when_equal_and_positive_otherwise() -> None:
    # float64 and a seeded generator: in float32 the shift case rounds to ~1e-6 * T^2 for some draws.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=g, dtype=torch.float64)
    assert abs(float(soft_label_kd(logits, logits.clone(), 4.0))) < 1e-10
    assert abs(float(soft_label_kd(logits, logits + 3.0, 4.0))) < 1e-10  # softmax ignores a shift
    assert float(soft_label_kd(logits, torch.randn(4, 10, generator=g, dtype=torch.float64), 4.0)) > 0


def test_gradient_reaches_student_only() -> None:
    student = torch.randn(3, 6, requires_grad=True)
    teacher = torch.randn(3, 6, requires_grad=True)  # deliberately not detached by the caller
    soft_label_kd(student, teacher, 2.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # d/dz_s of T^2 KL / B is T (q - p) / B per logit.
    with torch.no_grad():
        p, q = torch.softmax(teacher / 2.0, 1), torch.softmax(student / 2.0, 1)
    torch.testing.assert_close(student.grad, 2.0 * (q - p) / 3)


def test_validation() -> None:
    with pytest.raises(ValueError, match="`temperature`"):
        soft_label_kd(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="`teacher_logits`"):
        soft_label_kd(torch.randn(2, 3), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="`student_logits`"):
        soft_label_kd(torch.randn(2, 3, 1), torch.randn(2, 3, 1), 1.0)
