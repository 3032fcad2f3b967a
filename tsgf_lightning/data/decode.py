"""Frame-index sampling and PyAV decoding of one video file into fixed clips.

A clip is ``T`` frames chosen from a video of ``n`` frames by one of two rules:

- ``uniform`` (default): the video is cut into ``T`` equal segments and one frame is taken from
  each, at relative position ``offset`` inside its segment: ``i_t = floor((t + offset) * n / T)``
  for ``offset < 1``, and the segment's last frame ``i_t = ceil((t + 1) * n / T) - 1`` for
  ``offset = 1``. The whole video is covered whatever its length.
- ``fixed_gap`` (VDSD's rule): ``T`` frames ``gap`` apart starting at ``start``; a video shorter than
  the span ``(T - 1) * gap + 1`` uses ``gap = max(1, n // T)`` instead. ``start`` is
  ``position * (n - span)`` rounded to the nearest integer, halves up (0 when the span exceeds ``n``).

Indices are computed in exact rational arithmetic, reading ``position`` as the nearest fraction with
a denominator of at most 10^6: float rounding would otherwise move a frame whose exact index is a
whole number (``position = 1/6``, ``n = 54``, ``T = 3``: ``(2 + 1/6) * 54 / 3 = 39``, but
``floor(38.99...) = 38`` in floats), and the DataModule's positions ``(i + 0.5) / k`` hit such cases.

Videos shorter than ``T`` frames are not dropped: both rules then repeat frames (each index is
clamped to ``n - 1``), so a 5-frame video gives an 8-frame clip with some frames shown twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import torch
from torch import Tensor

Sampling = Literal["uniform", "fixed_gap"]


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from every video of a part."""

    frames: int
    size_hw: tuple[int, int]
    sampling: Sampling = "uniform"
    gap: int = 4
    positions: tuple[float, ...] = (0.5,)


def sample_indices(num_frames: int, frames: int, sampling: Sampling = "uniform", gap: int = 4,
                   position: float = 0.5) -> Tensor:
    """Frame indices of one clip.

    Args:
        num_frames: frames in the video (``n`` >= 1).
        frames: frames in the clip (``T`` >= 1).
        sampling: ``uniform`` or ``fixed_gap`` (module docstring).
        gap: frame gap of ``fixed_gap``.
        position: in ``[0, 1]``; ``uniform``: offset inside each segment (0.5 = segment centres,
            1 = segment ends); ``fixed_gap``: where the span starts, from the first (0) to the last
            possible start (1).

    Returns:
        ``(T,)`` int64 indices in ``[0, n)``, non-decreasing.
    """
    if num_frames < 1:
        raise ValueError(f"Expected argument `num_frames` to be >= 1 but got {num_frames}")
    if frames < 1:
        raise ValueError(f"Expected argument `frames` to be >= 1 but got {frames}")
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"Expected argument `position` to be in [0, 1] but got {position}")
    n, T = num_frames, frames
    p = Fraction(position).limit_denominator(10**6)
    num, den = p.numerator, p.denominator
    if sampling == "uniform":
        if p < 1:  # floor((t + num/den) * n / T) in integers
            idx = [((t * den + num) * n) // (T * den) for t in range(T)]
        else:  # the last frame of each segment: ceil((t + 1) n / T) - 1 = ((t + 1) n - 1) // T
            idx = [((t + 1) * n - 1) // T for t in range(T)]
    elif sampling == "fixed_gap":
        if gap < 1:
            raise ValueError(f"Expected argument `gap` to be >= 1 but got {gap}")
        if (T - 1) * gap + 1 > n:
            gap = max(1, n // T)
        span = (T - 1) * gap + 1
        # floor(p * L + 1/2), L = last possible start.
        start = (2 * num * max(n - span, 0) + den) // (2 * den)
        idx = [start + t * gap for t in range(T)]
    else:
        raise ValueError(f"Expected argument `sampling` to be 'uniform' or 'fixed_gap' but got {sampling!r}")
    # Videos shorter than the clip repeat frames: every index is clamped to the last frame.
    return torch.tensor([min(i, n - 1) for i in idx], dtype=torch.int64)


def _count_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frames in the stream: the header's count when it has one, else one demux pass (no decoding)."""
    if stream.frames > 0:
        return int(stream.frames)
    n = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return n


def decode_clips(path: str, frames: int, size_hw: tuple[int, int] | None = None,
                 sampling: Sampling = "uniform", gap: int = 4,
                 positions: Sequence[float] = (0.5,)) -> Tensor:
    """Decode ``len(positions)`` clips of one video in a single pass.

    Only the frames the clips need are converted to RGB (and resized by swscale's area filter,
    which averages rather than aliases when shrinking); the others are decoded and dropped, so
    memory does not grow with the video's length.

    Args:
        path: video file.
        frames: frames per clip ``T``.
        size_hw: ``(H, W)`` the frames are resized to; None keeps the video's size.
        sampling, gap: see :func:`sample_indices`.
        positions: one clip per position (see :func:`sample_indices`).

    Returns:
        ``uint8`` tensor ``(K, C, T, H, W)`` with ``K = len(positions)`` and ``C = 3`` (RGB).

    Raises:
        VideoDecodeError: the file cannot be opened, has no video stream, or yields no frame.
    """
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            expected = _count_frames(container, stream)
            got = _decode_selected(container, stream, expected, frames, size_hw, sampling, gap, positions)
            if got is None:
                # The header over-counted: decode again with the real frame count.
                container.seek(0)
                actual = sum(1 for _ in container.decode(stream))
                if actual == 0:
                    raise VideoDecodeError(f"{path}: no decodable frame")
                container.seek(0)
                got = _decode_selected(container, stream, actual, frames, size_hw, sampling, gap, positions)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise VideoDecodeError(f"{path}: {type(err).__name__}: {err}") from err
    if got is None:
        raise VideoDecodeError(f"{path}: frame count changed between two decoding passes")
    return got


def _decode_selected(container, stream, num_frames: int, frames: int, size_hw, sampling, gap,
                     positions) -> Tensor | None:
    """One decoding pass that keeps the frames the clips need; None if the video ended early."""
    if num_frames < 1:
        raise VideoDecodeError(f"{container.name}: no frames")
    clip_idx = torch.stack([sample_indices(num_frames, frames, sampling, gap, p) for p in positions])
    wanted = set(clip_idx.flatten().tolist())
    kept: dict[int, Tensor] = {}
    last = max(wanted)
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            if size_hw is not None:
                frame = frame.reformat(width=size_hw[1], height=size_hw[0], format="rgb24",
                                       interpolation="AREA")
            kept[i] = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # (H, W, C)
        if i >= last:
            break
    if len(kept) < len(wanted):
        return None
    # (K, T) indices -> (K, T, H, W, C) -> (K, C, T, H, W).
    clips = torch.stack([torch.stack([kept[i] for i in row.tolist()]) for row in clip_idx])
    return clips.permute(0, 4, 1, 2, 3).contiguous()
