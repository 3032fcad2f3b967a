"""The package's video convention and pixel-space helpers.

Clips are ``(C, T, H, W)`` and batches ``(B, C, T, H, W)``. Stored clips are ``uint8``; networks
see ``float32`` normalised per channel with ``mean``/``std`` given in ``[0, 1]`` pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: ImageNet statistics, the normalisation of every reference implementation (VDSD, Video-DC).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _channel_view(values: Sequence[float], like: Tensor) -> Tensor:
    """Shape ``values`` (C,) so it broadcasts over the channel axis of a clip or a batch."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    # Channel axis is 0 for a clip (C, T, H, W) and 1 for a batch (B, C, T, H, W).
    return v.view(-1, 1, 1, 1) if like.dim() == 4 else v.view(1, -1, 1, 1, 1)


def normalize(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Map ``[0, 1]`` pixels (clip or batch) to network inputs: ``(x - mean) / std`` per channel."""
    return (pixels - _channel_view(mean, pixels)) / _channel_view(std, pixels)


def denormalize(inputs: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize`: network inputs back to ``[0, 1]`` pixel units (not clamped)."""
    return inputs * _channel_view(std, inputs) + _channel_view(mean, inputs)


def pixel_bounds(mean: Sequence[float], std: Sequence[float], like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel lower/upper bounds of valid normalised inputs (pixels 0 and 1), shaped like a batch."""
    lo = normalize(torch.zeros(1, len(mean), 1, 1, 1, dtype=like.dtype, device=like.device), mean, std)
    hi = normalize(torch.ones(1, len(mean), 1, 1, 1, dtype=like.dtype, device=like.device), mean, std)
    return lo, hi


def at_pixel_bounds(inputs: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Which elements of normalised inputs ``(B, C, T, H, W)`` sit at (or beyond) pixel 0 or 1 of their channel.

    Compared in input space against :func:`pixel_bounds`, the very values a clamp writes, so a clamped
    element counts exactly; no tolerance, so a pixel merely near a bound does not.
    """
    lo, hi = pixel_bounds(mean, std, inputs)
    return (inputs <= lo) | (inputs >= hi)
