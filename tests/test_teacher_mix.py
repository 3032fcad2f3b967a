"""TeacherModule's optional batch mixing: the loss of a mixed batch against a naive per-clip sum.

As in tests/test_student.py (whose stand-in network and pixel-level mix inference are reused), what
was mixed is read from the pixels the network was given, independently of the mixing code.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn import functional as F

from tsgf_lightning.modules.teacher import TeacherModule

from .test_student import attached_module, infer_mix, random_batch

attached_teacher = functools.partial(attached_module, TeacherModule)


def naive_loss(module: TeacherModule, mixed: torch.Tensor, batch: dict, smoothing: float) -> torch.Tensor:
    """Each clip's smoothed cross-entropy on its own label and its partner's, weighted by the voxels it took."""
    partners, f = infer_mix(mixed, batch["video"])
    with torch.no_grad():
        logits = module.net(mixed)
    total = 0.0
    for i, (p, fi) in enumerate(zip(partners, f)):
        own = F.cross_entropy(logits[i:i + 1], batch["label"][i:i + 1], label_smoothing=smoothing)
        other = F.cross_entropy(logits[i:i + 1], batch["label"][p:p + 1], label_smoothing=smoothing)
        total = total + (1 - fi) * own + fi * other
    return total / len(partners), f


@pytest.mark.parametrize("mix", ["videomix", "tsgf"])
def test_a_mixed_batch_weights_both_labels_by_the_voxels_taken(mix) -> None:
    module = attached_teacher(mix=mix, label_smoothing=0.1)
    batch = random_batch()
    loss = module.training_step(batch, 0)
    (mixed,) = module.net.inputs
    expected, f = naive_loss(module, mixed, batch, 0.1)
    assert ((f > 0) & (f < 1)).sum() >= 2  # not vacuous: clips really were mixed
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("kwargs", [{}, {"mix": "videomix", "mix_prob": 0.0}])
def test_without_mixing_the_teacher_sees_its_batch_and_plain_cross_entropy(kwargs) -> None:
    module = attached_teacher(label_smoothing=0.2, **kwargs)
    batch = random_batch()
    loss = module.training_step(batch, 0)
    (seen,) = module.net.inputs
    assert torch.equal(seen, batch["video"])
    with torch.no_grad():
        plain = F.cross_entropy(module.net(seen), batch["label"], label_smoothing=0.2)
    torch.testing.assert_close(loss.detach(), plain)


@pytest.mark.parametrize("bad", [{"mix_prob": 1.5}, {"mix_alpha": 0.0}])
def test_bad_mix_settings_are_named(bad) -> None:
    with pytest.raises(ValueError, match="mix_prob"):
        attached_teacher(mix="videomix", **bad)
