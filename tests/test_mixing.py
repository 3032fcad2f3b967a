"""The student's mix (``student_mix``): one box from a partner, pasted into non-key frames, gated in pixel space.

What was mixed is inferred from the pixels alone (which voxels changed, whose values they took),
independently of the mixing code; clips are constructed so that the key frames are known exactly.
"""

from __future__ import annotations

import pytest
import torch

from tsgf_lightning.tsgf import key_frames, temporal_saliency
from tsgf_lightning.tsgf.mixing import student_mix
from tsgf_lightning.video import normalize

B, C, T, H, W = 3, 3, 8, 12, 12
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
#: Clip b is flat grey, stepping from LOW[b] to HIGH[b] between frames JUMP[b] - 1 and JUMP[b]. With no
#: smoothing (window 1), Eq. 6 gives d = (HIGH - LOW) / 2 on exactly those two frames and 0 elsewhere:
#: with an absolute eps of 0.1 they are the key frames. All frame values differ between clips.
LOW, HIGH, JUMP = (0.05, 0.12, 0.21), (0.45, 0.62, 0.66), (3, 5, 2)
KEY = [{j - 1, j} for j in JUMP]
SALIENCY = dict(window_length=1, window="uniform", eps=0.1, eps_mode="absolute")


def stepped_clips() -> torch.Tensor:
    """``(B, C, T, H, W)`` normalised with MEAN/STD (student_mix sees network inputs)."""
    t = torch.arange(T)
    levels = torch.stack([torch.where(t < j, lo, hi) for lo, hi, j in zip(LOW, HIGH, JUMP)])  # (B, T)
    pixels = levels[:, None, :, None, None].expand(B, C, T, H, W).clone()
    return normalize(pixels, MEAN, STD)


def changed_box(out: torch.Tensor, video: torch.Tensor, i: int) -> list[torch.Tensor]:
    """Per frame, the ``(H, W)`` bool map of pixels of clip ``i`` that mixing changed (any channel)."""
    return [(out[i, :, t] != video[i, :, t]).any(0) for t in range(T)]


def is_rectangle(region: torch.Tensor) -> bool:
    rows, cols = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
    full = torch.zeros_like(region)
    full[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return torch.equal(region, full)


def test_tsgf_mix_pastes_one_box_into_non_key_frames_only() -> None:
    video = stepped_clips()
    out, partner, frac = student_mix(video, "tsgf", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    assert out.shape == video.shape and torch.equal(video, stepped_clips())  # input untouched
    mixed = 0
    for i in range(B):
        regions = changed_box(out, video, i)
        for t in KEY[i]:
            assert not regions[t].any(), f"clip {i}: key frame {t} changed"
        calm = [t for t in range(T) if t not in KEY[i]]
        box = regions[calm[0]]
        if partner[i] == i or not box.any():
            assert frac[i] == 0 or partner[i] == i
            continue
        mixed += 1
        assert is_rectangle(box)
        for t in calm:  # the same box in every non-key frame, holding the partner's pixels
            assert torch.equal(regions[t], box)
            assert torch.equal(out[i, :, t][:, box], video[partner[i], :, t][:, box])
            assert torch.equal(out[i, :, t][:, ~box], video[i, :, t][:, ~box])
        expected = box.sum() * len(calm) / (H * W * T)
        assert frac[i].item() == pytest.approx(expected.item())
    assert mixed >= 2  # the draw mixed at least two clips: the checks above were exercised


def test_videomix_changes_every_frame_inside_the_same_box() -> None:
    video = stepped_clips()
    tsgf, partner_t, _ = student_mix(video, "tsgf", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    out, partner, frac = student_mix(video, "videomix", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    assert torch.equal(partner, partner_t)
    mixed = 0
    for i in range(B):
        regions = changed_box(out, video, i)
        if partner[i] == i or not regions[0].any():
            continue
        mixed += 1
        for t in range(T):  # key frames included
            assert torch.equal(regions[t], regions[0])
        assert frac[i].item() == pytest.approx(regions[0].sum().item() / (H * W))
        # With the same draws, TSGF_A is VideoMix with the key frames restored.
        for t in range(T):
            expected = video[i, :, t] if t in KEY[i] else out[i, :, t]
            assert torch.equal(tsgf[i, :, t], expected)
    assert mixed >= 2


def test_no_mix_leaves_the_batch_alone() -> None:
    video = stepped_clips()
    out, partner, frac = student_mix(video, "none", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    assert torch.equal(out, video) and torch.equal(partner, torch.arange(B)) and torch.all(frac == 0)


# ================================================================================ pixel space, not inputs
#: Two events per clip: channel 0 steps up by 0.4 between frames 1 and 2, channel 2 by 0.2 between frames 5
#: and 6. In pixels the first is the larger change; normalised with a channel-2 std ten times smaller, the
#: second is. The 0.75 quantile of the saliency (window 1) then lies between the two events either way.
SKEWED_MEAN, SKEWED_STD = (0.4, 0.5, 0.6), (0.5, 0.5, 0.05)
PIXEL_KEY, INPUT_KEY = {1, 2}, {5, 6}
QUANTILE = dict(window_length=1, window="uniform", eps=0.75, eps_mode="quantile")


def two_event_pixels() -> torch.Tensor:
    """``(B, C, T, H, W)`` pixels in [0, 1]: a grey level per clip (so partners differ) plus the two events."""
    base = torch.tensor([0.10, 0.20, 0.30])[:, None, None, None, None].expand(B, C, T, H, W).clone()
    base[:, 0, 2:] += 0.4
    base[:, 2, 6:] += 0.2
    return base


def test_the_gate_uses_pixel_space_saliency_where_normalised_clips_would_pick_other_key_frames() -> None:
    pixels = two_event_pixels()
    video = normalize(pixels, SKEWED_MEAN, SKEWED_STD)
    # The premise: the two spaces disagree on every clip's key frames.
    in_pixels = key_frames(temporal_saliency(pixels, 1, "uniform"), 0.75, "quantile")
    in_inputs = key_frames(temporal_saliency(video, 1, "uniform"), 0.75, "quantile")
    for i in range(B):
        assert set(torch.nonzero(in_pixels[i]).flatten().tolist()) == PIXEL_KEY
        assert set(torch.nonzero(in_inputs[i]).flatten().tolist()) == INPUT_KEY
    out, partner, _ = student_mix(video, "tsgf", torch.Generator().manual_seed(3), SKEWED_MEAN, SKEWED_STD,
                                  **QUANTILE)
    mixed = 0
    for i in range(B):
        regions = changed_box(out, video, i)
        if partner[i] == i or not regions[0].any():
            continue
        mixed += 1
        assert not any(regions[t].any() for t in PIXEL_KEY), f"clip {i}: a pixel-space key frame was mixed"
        assert all(torch.equal(regions[t], regions[0]) for t in INPUT_KEY), f"clip {i}: calm frames left unmixed"
    assert mixed >= 2
