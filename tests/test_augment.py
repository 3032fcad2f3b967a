"""Clip-consistent crop and flip of synthetic videos (``tsgf/augment.py``) against a per-video crop and resize."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from tsgf_lightning.tsgf.augment import apply_crop_flip, crop_flip_thetas


def crop_theta(box: tuple[int, int, int, int], H: int, W: int, flip: bool) -> torch.Tensor:
    """``affine_grid`` matrix of the pixel box ``[y0, y1) x [x0, x1)`` resized to the whole frame."""
    y0, y1, x0, x1 = box
    w, h = (x1 - x0) / W, (y1 - y0) / H  # half-sizes in normalised units (the frame spans [-1, 1])
    cx, cy = (x0 + x1) / W - 1, (y0 + y1) / H - 1
    return torch.tensor([[-w if flip else w, 0.0, cx], [0.0, h, cy]])


def naive_crop_flip(video: torch.Tensor, box, flip: bool) -> torch.Tensor:
    """One clip ``(C, T, H, W)``: the same box cut out of every frame, resized back, optionally mirrored."""
    C, T, H, W = video.shape
    y0, y1, x0, x1 = box
    frames = video.permute(1, 0, 2, 3)[:, :, y0:y1, x0:x1]  # (T, C, h, w): frames as a batch
    out = F.interpolate(frames, size=(H, W), mode="bilinear", align_corners=False).permute(1, 0, 2, 3)
    return out.flip(-1) if flip else out


def inside(box, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows/columns whose bilinear taps all lie inside the box (interpolate clamps at the box's edge,
    grid_sample reads the pixels just outside it: only those border rows/columns may differ)."""
    y0, y1, x0, x1 = box
    ys = (torch.arange(H) + 0.5) * (y1 - y0) / H - 0.5
    xs = (torch.arange(W) + 0.5) * (x1 - x0) / W - 0.5
    return (ys >= 0) & (ys <= y1 - y0 - 1), (xs >= 0) & (xs <= x1 - x0 - 1)


def test_apply_crop_flip_matches_a_per_video_crop_and_resize() -> None:
    N, C, T, H, W = 3, 2, 4, 16, 20
    videos = torch.randn(N, C, T, H, W, generator=torch.Generator().manual_seed(0))
    boxes = [(2, 14, 3, 19), (0, 16, 0, 20), (5, 13, 4, 12)]
    flips = [False, True, True]
    theta = torch.stack([crop_theta(b, H, W, f) for b, f in zip(boxes, flips)])
    out = apply_crop_flip(videos, theta)
    assert out.shape == videos.shape
    for i, (box, flip) in enumerate(zip(boxes, flips)):
        ref = naive_crop_flip(videos[i], box, flip)
        rows, cols = inside(box, H, W)
        if flip:
            cols = cols.flip(0)
        torch.testing.assert_close(out[i][:, :, rows][:, :, :, cols], ref[:, :, rows][:, :, :, cols],
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], videos[1].flip(-1), atol=1e-5, rtol=1e-5)  # whole frame, mirrored


def test_apply_crop_flip_carries_gradients_to_the_videos() -> None:
    videos = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    theta = torch.stack([crop_theta((1, 7, 2, 8), 8, 8, False), crop_theta((0, 8, 0, 8), 8, 8, True)])
    apply_crop_flip(videos, theta).sum().backward()
    assert videos.grad[0].abs().sum() > 0 and videos.grad[1].abs().sum() > 0


def test_crop_flip_thetas_stay_inside_the_frame_and_draw_both_flips() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = crop_flip_thetas(500, gen, (0.25, 1.0), flip=True)
    sx, cx, h, cy = theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2]
    w = sx.abs()
    assert torch.all(cx.abs() + w <= 1 + 1e-6) and torch.all(cy.abs() + h <= 1 + 1e-6)
    assert torch.all(w * h <= 1.0 + 1e-6) and torch.all(w * h >= 0.25 - 1e-6)  # area fraction within `scale`
    assert (sx < 0).any() and (sx > 0).any()
    assert torch.all(theta[:, 0, 1] == 0) and torch.all(theta[:, 1, 0] == 0)
    assert torch.all(crop_flip_thetas(50, gen, (0.5, 1.0), flip=False)[:, 0, 0] > 0)
    again = crop_flip_thetas(500, torch.Generator().manual_seed(0), (0.25, 1.0), flip=True)
    assert torch.equal(theta, again)
