"""Multi-formation: several low-resolution clips tiled into one stored video (same storage budget).

With factor ``f``, a stored video ``(C, T, H, W)`` holds ``f * f`` tiles of ``(C, T, H/f, W/f)``, each
a clip of the video's class; a student (and the teacher during synthesis) sees every tile upsampled
back to ``H x W``. IPC counts stored videos, so the budget (pixels per class) is unchanged while the
number of distinct clips per class grows ``f^2``-fold. The idea is IDC's "multi-formation" (Kim et
al., ICML 2022) and RDED's patch mosaics (Sun et al., CVPR 2024), applied to space only: every tile
keeps all ``T`` frames, so motion is not traded away. Tiles are row-major: tile ``k`` of a video sits
at row ``k // f``, column ``k % f``.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def _check(videos: Tensor, factor: int) -> None:
    if factor < 1:
        raise ValueError(f"Expected argument `factor` to be >= 1 but got {factor}")
    H, W = videos.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"Expected frame size {H}x{W} to be divisible by `factor` = {factor}")


def pack_tiles(clips: Tensor, factor: int) -> Tensor:
    """``(N * f^2, C, T, H, W)`` -> ``(N, C, T, H, W)``: each run of ``f^2`` clips, area-downsampled by ``f``, tiled.

    ``factor == 1`` returns the clips unchanged.
    """
    _check(clips, factor)
    if factor == 1:
        return clips
    M, C, T, H, W = clips.shape
    if M % (factor * factor):
        raise ValueError(f"Expected the number of clips ({M}) to be a multiple of factor^2 = {factor * factor}")
    h, w = H // factor, W // factor
    frames = clips.transpose(1, 2).reshape(M * T, C, H, W)
    small = F.interpolate(frames.float(), size=(h, w), mode="area").to(clips.dtype)
    # (N, f, f, T, C, h, w) -> (N, C, T, f, h, f, w) -> (N, C, T, H, W)
    small = small.reshape(M // (factor * factor), factor, factor, T, C, h, w)
    return small.permute(0, 4, 3, 1, 5, 2, 6).reshape(-1, C, T, H, W)


def unpack_tiles(videos: Tensor, factor: int) -> Tensor:
    """``(N, C, T, H, W)`` -> ``(N * f^2, C, T, H, W)``: every tile bilinearly upsampled to ``H x W``.

    Differentiable (synthesis optimises the stored videos through it). ``factor == 1`` is the identity.
    """
    _check(videos, factor)
    if factor == 1:
        return videos
    N, C, T, H, W = videos.shape
    h, w = H // factor, W // factor
    tiles = videos.reshape(N, C, T, factor, h, factor, w).permute(0, 3, 5, 2, 1, 4, 6)  # (N, f, f, T, C, h, w)
    frames = tiles.reshape(N * factor * factor * T, C, h, w)
    up = F.interpolate(frames, size=(H, W), mode="bilinear", align_corners=False)
    return up.reshape(N * factor * factor, T, C, H, W).transpose(1, 2)


def tile_map(per_tile: Tensor, factor: int, height: int, width: int) -> Tensor:
    """Spread per-tile, per-frame values ``(N * f^2, T)`` over the stored videos' pixels: ``(N, 1, T, H, W)``.

    Used to apply a per-clip TSGF mask (one value per tile and frame) to the stored mosaic.
    """
    M, T = per_tile.shape
    h, w = height // factor, width // factor
    grid = per_tile.reshape(M // (factor * factor), factor, factor, T)  # (N, f, f, T)
    full = grid.permute(0, 3, 1, 2).repeat_interleave(h, 2).repeat_interleave(w, 3)  # (N, T, H, W)
    return full.unsqueeze(1)
