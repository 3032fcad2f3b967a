"""The C3D-style conv/pool stack shared by :class:`MiniC3D` and :class:`ConvNet3D`, and its size arithmetic.

Three blocks ``Conv3d(k=(3,7,7), stride=(1,2,2), pad=(1,3,3)) -> [BatchNorm3d] -> ReLU -> MaxPool3d``
with max-pool kernels (= strides) ``(1,2,2)``, ``(2,2,2)``, ``(2,2,2)``.

Every layer maps a length ``n`` along one axis to ``floor((n + 2p - k) / s) + 1``. Along H (or W):

- conv ``k=7, s=2, p=3``: ``n -> ceil(n / 2)``; pool ``k=s=2``: ``n -> floor(n / 2)``;
- so ``H -> ceil(H/2) -> floor -> ceil -> floor -> ceil -> floor``, e.g.
  ``48 -> 24 -> 12 -> 6 -> 3 -> 2 -> 1`` and ``112 -> 56 -> 28 -> 14 -> 7 -> 4 -> 2``;
- the smallest H that survives is 43 (``43 -> 22 -> 11 -> 6 -> 3 -> 2 -> 1``; 42 ends at 0).

Along T the convs keep the length (``k=3, s=1, p=1``) and only the last two pools halve it:
``T -> floor(floor(T/2)/2)``, so ``T >= 4`` (8 frames end at 2, 16 frames at 4).

The conv layers keep their bias although BatchNorm follows (as the reference code does); it is
redundant under BN but costs 320 parameters and keeps the ``norm="none"`` stack identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from torch import nn

#: Kernel, stride and padding of every conv of the stack.
CONV_KERNEL: tuple[int, int, int] = (3, 7, 7)
CONV_STRIDE: tuple[int, int, int] = (1, 2, 2)
CONV_PADDING: tuple[int, int, int] = (1, 3, 3)
#: Max-pool kernel (= stride) after each conv.
POOLS: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2))


def check_channels(channels: Sequence[int], in_channels: int) -> tuple[int, int, int]:
    """Validate the stack's widths and return them as a tuple of three positive ints."""
    channels = tuple(channels)
    if len(channels) != 3 or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ValueError(f"Expected argument `channels` to be three positive ints but got {channels}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"Expected argument `in_channels` to be a positive int but got {in_channels}")
    return channels


def conv_pool_stack(
    channels: tuple[int, int, int], in_channels: int = 3, norm: Literal["batch", "none"] = "batch"
) -> nn.Sequential:
    """Build the three conv blocks; ``(B, in_channels, T, H, W) -> (B, channels[-1], T', H', W')``.

    Args:
        channels: output widths of the three convs (``c1, c2, c3``).
        in_channels: input channels (3 for RGB).
        norm: ``"batch"`` puts a BatchNorm3d after every conv (the layers TSGF's BN-statistics
            loss matches), ``"none"`` leaves it out (VDSD's ConvNet3D).
    """
    if norm not in ("batch", "none"):
        raise ValueError(f"Expected argument `norm` to be 'batch' or 'none' but got {norm!r}")
    layers: list[nn.Module] = []
    c_in = in_channels
    for c_out, pool in zip(channels, POOLS):
        layers.append(nn.Conv3d(c_in, c_out, CONV_KERNEL, stride=CONV_STRIDE, padding=CONV_PADDING))
        if norm == "batch":
            layers.append(nn.BatchNorm3d(c_out))
        # Not in-place: hooks that read a BN layer's output (BN-statistics matching) must see it intact.
        layers.append(nn.ReLU())
        layers.append(nn.MaxPool3d(kernel_size=pool, stride=pool))
        c_in = c_out
    return nn.Sequential(*layers)


def _as_triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, Sequence) else (value, value, value)  # type: ignore[return-value]


def output_length(n: int, layers: Iterable[nn.Module], axis: int) -> int:
    """Length along ``axis`` (0 = T, 1 = H, 2 = W) after the Conv3d/MaxPool3d/AvgPool3d layers.

    Applies ``floor((n + 2p - d(k - 1) - 1) / s) + 1`` layer by layer (the formula of the torch docs,
    no ``ceil_mode``); returns a value ``<= 0`` once the input is too short for some layer.
    """
    for layer in layers:
        if isinstance(layer, (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d)):
            if getattr(layer, "ceil_mode", False):
                raise NotImplementedError("ceil_mode pooling is not covered by this arithmetic")
            k = _as_triple(layer.kernel_size)[axis]
            s = _as_triple(layer.stride)[axis]
            p = _as_triple(layer.padding)[axis]
            d = _as_triple(getattr(layer, "dilation", 1))[axis]
            if n + 2 * p < d * (k - 1) + 1:
                return 0
            n = (n + 2 * p - d * (k - 1) - 1) // s + 1
    return n


def minimum_length(layers: Sequence[nn.Module], axis: int, limit: int = 4096) -> int:
    """Smallest input length along ``axis`` for which every layer of ``layers`` has output ``>= 1``.

    Each layer's output length is non-decreasing in its input length, so a scan upwards finds it.
    """
    for n in range(1, limit + 1):
        if output_length(n, layers, axis) >= 1:
            return n
    raise ValueError(f"No input length up to {limit} survives the layers along axis {axis}")
