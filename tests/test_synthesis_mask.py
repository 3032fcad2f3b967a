"""SynthesisModule's TSGF_O hook: the mask each step applies to the gradient or to the update.

A callback records every optimiser step from outside the module and the expected mask is recomputed
from the recorded videos (Eq. 6-8 in pixel space); data and teacher: tests/synthesis_utils.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tsgf_lightning.modules.synthesis import SynthesisModule
from tsgf_lightning.tsgf import temporal_saliency, tsgf_mask
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD, denormalize

from .synthesis_utils import build_world, fit_synthesis


@pytest.fixture(scope="module")
def world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    return build_world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory)


# ================================================================================ the TSGF_O hook
class StepProbe(L.Callback):
    """Records each optimiser step from outside the module.

    Callback hooks run before the module's: ``on_before_optimizer_step`` sees the raw gradient (before
    the TSGF mask) and the videos before the step; ``on_train_batch_end`` sees the finished step and
    the gradient the optimiser used. ``momentum`` plants an Adam state with non-zero moments before
    the first step (as after earlier steps), so zero-gradient elements would still move.
    """

    def __init__(self, momentum: bool = False):
        self.momentum, self.records = momentum, []

    def on_train_start(self, trainer, pl_module) -> None:
        if self.momentum:
            p, g = pl_module.videos, torch.Generator().manual_seed(0)
            trainer.optimizers[0].state[p] = {"step": torch.tensor(3.0), "exp_avg": torch.randn(p.shape, generator=g),
                                              "exp_avg_sq": torch.rand(p.shape, generator=g) + 0.5}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        state = optimizer.state.get(pl_module.videos, {})
        self.records.append({"before": pl_module.videos.detach().clone(), "raw": pl_module.videos.grad.clone(),
                             "exp_avg": state["exp_avg"].clone() if "exp_avg" in state else None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.records[-1].update(after=pl_module.videos.detach().clone(), used=pl_module.videos.grad.clone())


def expected_mask(videos: torch.Tensor, module: SynthesisModule, shape: str, signed: bool = False) -> torch.Tensor:
    """Eq. 6-8 on the current videos in [0, 1] pixel units, recomputed outside the module: ``(N, 1, T, 1, 1)``."""
    h = module.hparams
    s = temporal_saliency(denormalize(videos, IMAGENET_MEAN, IMAGENET_STD), h.window_length, h.window)
    return tsgf_mask(s, h.eps, h.eps_mode, shape, signed)[:, None, :, None, None]


def frame_views(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elements of ``x (N, C, T, H, W)`` on frames where ``mask (N, 1, T, 1, 1)`` is 0, and elsewhere."""
    zero = (mask == 0).expand_as(x)
    return x[zero], x[~zero]


def test_binary_gradient_mask_zeroes_key_frames_and_keeps_the_rest(world, tmp_path) -> None:
    probe = StepProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="binary", mask_target="gradient")
    for rec in probe.records:
        m = expected_mask(rec["before"], module, "binary")
        assert 0 < (m == 0).sum() < m.numel()  # both kinds of frames are present
        key_used, calm_used = frame_views(rec["used"], m)
        key_raw, calm_raw = frame_views(rec["raw"], m)
        assert key_raw.abs().sum() > 0 and torch.all(key_used == 0)
        assert torch.equal(calm_used, calm_raw)


def test_eq8_gradient_mask_scales_each_frame_by_the_recomputed_mask(world, tmp_path) -> None:
    probe = StepProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="eq8", mask_target="gradient")
    for rec in probe.records:
        m = expected_mask(rec["before"], module, "eq8")
        assert ((m > 0) & (m < 1)).any()  # a graded mask, not a binary one
        torch.testing.assert_close(rec["used"], rec["raw"] * m, rtol=1e-6, atol=0)


def test_signed_mask_flips_the_gradient_of_key_frames(world, tmp_path) -> None:
    probe = StepProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=1, callbacks=[probe], mask="eq8", mask_target="gradient",
                              signed_mask=True)
    rec = probe.records[0]
    m = expected_mask(rec["before"], module, "eq8", signed=True)
    torch.testing.assert_close(rec["used"], rec["raw"] * m, rtol=1e-6, atol=0)
    key = (m < 0).expand_as(rec["raw"]) & (rec["raw"] != 0)
    calm = (m > 0).expand_as(rec["raw"]) & (rec["raw"] != 0)
    assert key.any() and calm.any()
    assert torch.all(torch.sign(rec["used"][key]) == -torch.sign(rec["raw"][key]))
    assert torch.all(torch.sign(rec["used"][calm]) == torch.sign(rec["raw"][calm]))


def test_plain_sgd_is_algorithm_1s_step_on_the_masked_gradient_with_a_floor(world, tmp_path) -> None:
    """``optimizer: sgd``: S <- clamp(S - lr * M * grad), M the current videos' graded mask, at least the floor."""
    probe = StepProbe()
    lr, floor = 5.0, 0.25
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="eq8", mask_target="gradient",
                              mask_source="current", optimizer="sgd", lr=lr, schedule="constant", mask_floor=floor)
    for rec in probe.records:
        h = module.hparams
        s = temporal_saliency(denormalize(rec["before"], IMAGENET_MEAN, IMAGENET_STD), h.window_length, h.window)
        m = torch.clamp(tsgf_mask(s, h.eps, h.eps_mode, "eq8"), min=floor)[:, None, :, None, None]
        assert (m == floor).any() and (m > floor).any()
        torch.testing.assert_close(rec["used"], rec["raw"] * m, rtol=1e-6, atol=0)
        stepped = rec["before"] - lr * rec["raw"] * m
        lo = torch.tensor([-mu / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1, 1)
        hi = torch.tensor([(1 - mu) / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1, 1)
        torch.testing.assert_close(rec["after"], torch.maximum(torch.minimum(stepped, hi), lo), rtol=1e-5, atol=1e-6)
        assert (rec["after"] != rec["before"]).any()


def test_gradient_mask_does_not_stop_adam_momentum(world, tmp_path) -> None:
    """Why ``mask_target: update`` exists: zero gradient, yet key frames move on Adam's first moment."""
    probe = StepProbe(momentum=True)
    _, module = fit_synthesis(world, tmp_path, max_steps=1, callbacks=[probe], mask="binary", mask_target="gradient")
    rec = probe.records[0]
    m = expected_mask(rec["before"], module, "binary")
    key_used, _ = frame_views(rec["used"], m)
    assert torch.all(key_used == 0)
    key_before, _ = frame_views(rec["before"], m)
    key_after, _ = frame_views(rec["after"], m)
    assert (key_after - key_before).abs().max() > 1e-3


def test_update_mask_keeps_key_frames_still_under_momentum(world, tmp_path) -> None:
    probe = StepProbe(momentum=True)
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="binary", mask_target="update")
    for i, rec in enumerate(probe.records):
        m = expected_mask(rec["before"], module, "binary")
        assert 0 < (m == 0).sum() < m.numel()
        key_exp_avg, _ = frame_views(rec["exp_avg"], m)
        assert key_exp_avg.abs().min() > 0, f"step {i}: no momentum on key frames, the test would prove nothing"
        key_before, calm_before = frame_views(rec["before"], m)
        key_after, calm_after = frame_views(rec["after"], m)
        assert torch.equal(key_after, key_before)
        assert (calm_after - calm_before).abs().max() > 1e-3
