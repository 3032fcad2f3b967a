"""Differentiable clip-consistent crop and flip of synthetic videos (SRe2L's per-iteration augmentation).

One affine transform per video, shared by all its frames, so motion is cropped and flipped with the
scene instead of jittering from frame to frame; gradients reach the pixels through ``grid_sample``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F


def crop_flip_thetas(n: int, generator: torch.Generator, scale: tuple[float, float], flip: bool) -> Tensor:
    """Affine matrices ``(n, 2, 3)`` of a random resized crop (area ``scale``, aspect 3/4..4/3) and optional flip.

    In ``affine_grid``'s normalised coordinates: the crop has half-sizes ``(w, h)`` (1 = whole frame),
    centre ``(cx, cy)`` inside the frame; a flip negates the x scale.
    """
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -w, w) if flip else w
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    return theta


def apply_crop_flip(videos: Tensor, theta: Tensor) -> Tensor:
    """Differentiably crop/flip ``(N, C, T, H, W)`` with one ``theta`` per video (the same for all frames)."""
    N, C, T, H, W = videos.shape
    grid = F.affine_grid(theta.to(videos), [N, C * T, H, W], align_corners=False)
    out = F.grid_sample(videos.reshape(N, C * T, H, W), grid, mode="bilinear", padding_mode="reflection",
                        align_corners=False)
    return out.reshape(N, C, T, H, W)
