"""Saliency-gated VideoMix on constructed videos whose every voxel names its sample."""

from __future__ import annotations

import pytest
import torch

from tsgf_lightning.tsgf.videomix import _sample_symmetric_beta, cutmix_boxes, gated_videomix, mixed_fraction

B, C, T, H, W = 4, 2, 5, 8, 10


def indexed_video() -> torch.Tensor:
    """Sample i is the constant i everywhere."""
    return torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1, 1).expand(B, C, T, H, W).clone()


BOXES = torch.tensor([[1, 4, 2, 7], [0, 8, 0, 10], [3, 3, 0, 10], [5, 8, 6, 10]])
GATE = torch.tensor(
    [
        [True, False, True, True, False],
        [False, True, False, False, False],
        [True, True, True, True, True],
        [False, False, False, False, False],
    ]
)
PARTNER = torch.tensor([2, 3, 0, 1])


def test_only_gated_frames_inside_the_box_change_to_the_partner() -> None:
    video = indexed_video()
    original = video.clone()
    out = gated_videomix(video, PARTNER, BOXES, GATE)
    assert torch.equal(video, original)  # input untouched
    for i in range(B):
        y0, y1, x0, x1 = BOXES[i].tolist()
        for t in range(T):
            for y in range(H):
                for x in range(W):
                    inside = bool(GATE[i, t]) and y0 <= y < y1 and x0 <= x < x1
                    expected = float(PARTNER[i]) if inside else float(i)
                    assert torch.all(out[i, :, t, y, x] == expected), (i, t, y, x)


def test_mixed_fraction_counts_changed_voxels() -> None:
    out = gated_videomix(indexed_video(), PARTNER, BOXES, GATE)
    changed = (out != indexed_video()).float().mean(dim=(1, 2, 3, 4))  # partner != i for every i
    f = mixed_fraction(BOXES, GATE, H, W)
    torch.testing.assert_close(f, changed)
    # By hand: sample 0, box 3x5 of 8x10 on 3 of 5 frames = 15/80 * 3/5; sample 2 has an empty box.
    torch.testing.assert_close(f, torch.tensor([15 / 80 * 3 / 5, 1 / 5, 0.0, 0.0]))


def test_gradients_reach_both_sources() -> None:
    """d sum(out) / d video[j] = 1 where j keeps its own voxel, + 1 per sample that pastes j there."""
    video = torch.randn(B, C, T, H, W, requires_grad=True)
    partner = torch.tensor([2, 2, 0, 1])  # sample 2 is pasted twice, sample 3 never
    gated_videomix(video, partner, BOXES, GATE).sum().backward()
    expected = torch.zeros(B, C, T, H, W)
    for i in range(B):
        y0, y1, x0, x1 = BOXES[i].tolist()
        pasted = torch.zeros(T, H, W)
        pasted[:, y0:y1, x0:x1] = 1.0
        pasted *= GATE[i].float().view(T, 1, 1)
        expected[i] += 1.0 - pasted
        expected[int(partner[i])] += pasted
    assert torch.equal(video.grad, expected)


@pytest.mark.parametrize("alpha", [1.0, 0.4, 2.0])
def test_boxes_in_bounds_and_reproducible(alpha: float) -> None:
    boxes = cutmix_boxes(500, 7, 12, torch.Generator().manual_seed(0), alpha=alpha)
    assert boxes.shape == (500, 4) and boxes.dtype == torch.long
    y0, y1, x0, x1 = boxes.unbind(1)
    assert bool(((0 <= y0) & (y0 <= y1) & (y1 <= 7)).all())
    assert bool(((0 <= x0) & (x0 <= x1) & (x1 <= 12)).all())
    assert (y1 - y0).max() > 0 and (x1 - x0).max() > 0
    assert torch.equal(boxes, cutmix_boxes(500, 7, 12, torch.Generator().manual_seed(0), alpha=alpha))
    assert not torch.equal(boxes, cutmix_boxes(500, 7, 12, torch.Generator().manual_seed(1), alpha=alpha))


def test_boxes_do_not_touch_the_global_rng() -> None:
    state = torch.get_rng_state()
    cutmix_boxes(16, 8, 8, torch.Generator().manual_seed(0), alpha=0.5)
    assert torch.equal(state, torch.get_rng_state())


def test_box_area_never_exceeds_one_minus_lambda_on_average() -> None:
    # Unclipped, E[(1 - lam)] = 1/2 for symmetric Beta; flooring and clipping can only shrink it.
    boxes = cutmix_boxes(4000, 64, 64, torch.Generator().manual_seed(0))
    area = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).float() / 64**2
    assert 0.2 < float(area.mean()) < 0.5


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 5.0])
def test_beta_sampler_moments(alpha: float) -> None:
    lam = _sample_symmetric_beta(20000, alpha, torch.Generator().manual_seed(0))
    assert lam.dtype == torch.float64 and bool(((lam >= 0) & (lam <= 1)).all())
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); the standard error of the mean is < 0.004.
    assert abs(float(lam.mean()) - 0.5) < 0.015
    assert abs(float(lam.var()) - 1 / (4 * (2 * alpha + 1))) < 0.1 / (4 * (2 * alpha + 1))


def test_validation_names_arguments() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="`alpha`"):
        cutmix_boxes(2, 4, 4, g, alpha=0.0)
    with pytest.raises(ValueError, match="`height`"):
        cutmix_boxes(2, 0, 4, g)
    with pytest.raises(ValueError, match="`generator`"):
        cutmix_boxes(2, 4, 4, None)  # type: ignore[arg-type]
    video = indexed_video()
    with pytest.raises(ValueError, match="`partner`"):
        gated_videomix(video, torch.tensor([0, 1, 2, 4]), BOXES, GATE)
    with pytest.raises(ValueError, match="`frame_gate`"):
        gated_videomix(video, PARTNER, BOXES, GATE.float())
    with pytest.raises(ValueError, match="`boxes`"):
        gated_videomix(video, PARTNER, BOXES[:2], GATE)
    with pytest.raises(ValueError, match="`video`"):
        gated_videomix(video[0], PARTNER, BOXES, GATE)
