"""Input validation shared by the networks: a clear error instead of a cryptic conv/pool failure."""

from __future__ import annotations

from torch import Tensor


def check_video_batch(x: Tensor, in_channels: int, min_frames: int, min_size: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a float batch ``(B, in_channels, T, H, W)`` large enough.

    Args:
        x: the network input.
        in_channels: expected C.
        min_frames: smallest T the network's pooling stack accepts.
        min_size: smallest H and W the network's pooling stack accepts.
        model: the network's name, for the message.
    """
    if x.dim() != 5:
        raise ValueError(
            f"Expected argument `x` of {model} to be a batch (B, C, T, H, W) but got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"Expected argument `x` of {model} to be floating point (normalised) but got {x.dtype}")
    _, C, T, H, W = x.shape
    if C != in_channels:
        raise ValueError(
            f"Expected argument `x` of {model} to have C={in_channels} channels but got shape {tuple(x.shape)}"
        )
    if T < min_frames or H < min_size or W < min_size:
        raise ValueError(
            f"Expected argument `x` of {model} to have at least T={min_frames} frames and H, W >= {min_size} "
            f"(the minimum size its pooling stack accepts) but got (T, H, W) = ({T}, {H}, {W})"
        )
