"""VDSD's static/dynamic disentanglement (Wang et al. 2024): assembling videos from two memories.

Stage 1 distils one static frame per synthetic video (an image method on frames) and freezes it.
Stage 2 learns a dynamic memory ``(M, 1, T, H, W)`` and a hallucinator, a single ``Conv3d`` from 4
channels to 3 with kernel 3, that turns ``[static frame repeated T times ; dynamic map]`` into a
video::

    video_i = hallucinator(concat_channels(repeat_T(static[s_i]), dynamic[d_i]))

where each synthetic video pairs one static entry ``s_i`` and one dynamic entry ``d_i``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Hallucinator(nn.Module):
    """``Conv3d(in_channels + 1 -> in_channels, kernel 3, padding 1)``: static RGB + one dynamic channel -> a video."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(in_channels + 1, in_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def pair_memories(num_classes: int, static_per_class: int, dynamic_per_class: int) -> tuple[Tensor, Tensor]:
    """Which static and which dynamic entry each synthetic video uses: every pairing within a class.

    Entries are class-major (``static[c * static_per_class + j]``). Each class gets
    ``static_per_class * dynamic_per_class`` videos, in (static, dynamic) order.

    Returns:
        ``(static_index, dynamic_index)``, each ``(num_classes * static_per_class * dynamic_per_class,)``.
    """
    c = torch.arange(num_classes).repeat_interleave(static_per_class * dynamic_per_class)
    j = torch.arange(static_per_class).repeat_interleave(dynamic_per_class).repeat(num_classes)
    k = torch.arange(dynamic_per_class).repeat(num_classes * static_per_class)
    return c * static_per_class + j, c * dynamic_per_class + k


def assemble_videos(static: Tensor, dynamic: Tensor, static_index: Tensor, dynamic_index: Tensor,
                    hallucinator: nn.Module) -> Tensor:
    """Videos ``(N, C, T, H, W)`` from static frames ``(S, C, H, W)`` and dynamic maps ``(D, 1, T, H, W)``.

    Raises:
        ValueError: the memories' spatial sizes differ, or an index points past its memory.
    """
    if static.shape[-2:] != dynamic.shape[-2:] or dynamic.shape[1] != 1:
        raise ValueError(f"Expected static frames (S, C, H, W) and dynamic maps (D, 1, T, H, W) of one size but got "
                         f"{tuple(static.shape)} and {tuple(dynamic.shape)}")
    if int(static_index.max()) >= len(static) or int(dynamic_index.max()) >= len(dynamic):
        raise ValueError(f"indices point past the memories ({len(static)} static, {len(dynamic)} dynamic entries)")
    T = dynamic.shape[2]
    frames = static[static_index].unsqueeze(2).expand(-1, -1, T, -1, -1)
    return hallucinator(torch.cat([frames, dynamic[dynamic_index]], dim=1))
