"""Temporal saliency and the TSGF mask (Eq. 6-8 of the paper).

A batch of videos ``(B, C, T, H, W)`` becomes one saliency score per frame ``(B, T)``:

1. inter-frame difference (Eq. 6), ``d_i = (|f_{i+1} - f_i| + |f_i - f_{i-1}|) / 2``;
2. causal smoothing (Eq. 7), ``s_i = a_0 d_i + a_1 d_{i-1} + ... + a_k d_{i-k}``;
3. the mask (Eq. 8), ``M = max(eps - s, 0) / (max(s) - min(s))`` per video, multiplied into each
   frame's gradient (TSGF_O); frames with ``s > eps`` are key frames (TSGF_A leaves them alone).

The paper gives neither the reduction of ``|.|``, the window, nor ``eps``; the choices made here
are arguments, and each is stated where it is made.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Window = Literal["uniform", "hann", "exponential", "linear"]
EpsMode = Literal["absolute", "quantile"]
MaskShape = Literal["eq8", "binary"]

_WINDOWS = ("uniform", "hann", "exponential", "linear")
_EPS_MODES = ("absolute", "quantile")
_SHAPES = ("eq8", "binary")

#: A video is "flat" (no key frames) when ``max(s) - min(s) <= _FLAT_ATOL + _FLAT_RTOL * max|s|``.
#: The relative part (about 8 float32 ulps) treats a range that is rounding noise of a constant
#: saliency as no range at all: dividing by it would turn noise into a full-scale mask.
_FLAT_ATOL = 1e-12
_FLAT_RTOL = 1e-6


def frame_differences(video: Tensor) -> Tensor:
    """Inter-frame difference of every frame (Eq. 6).

    ``|f_a - f_b|`` is the MEAN absolute difference over ``C, H, W`` (the paper does not say mean or
    sum; the mean keeps the score independent of resolution). Interior frames average their two
    differences; the first and last frames use the one difference they have (not halved). A clip of
    one frame has no motion: ``d = 0``.

    Integer (``uint8``) videos are promoted to ``float32`` first so differences do not wrap. The ops
    are out of place, so a video that requires grad works (callers use this under ``no_grad``).

    Args:
        video: ``(B, C, T, H, W)``.

    Returns:
        ``d``, ``(B, T)``, non-negative, in the video's pixel units.
    """
    if video.dim() != 5:
        raise ValueError(f"Expected argument `video` to be (B, C, T, H, W) but got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        video = video.float()
    B, C, T, H, W = video.shape
    if T == 1:
        return video.new_zeros(B, T)
    # diff[:, i] = |f_{i+1} - f_i| for i = 0..T-2, shape (B, T-1).
    diff = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(1, 3, 4))
    interior = (diff[:, 1:] + diff[:, :-1]) / 2  # frames 1..T-2
    return torch.cat([diff[:, :1], interior, diff[:, -1:]], dim=1)


def window_weights(length: int, window: Window = "hann", decay: float = 0.5) -> Tensor:
    """Smoothing weights ``a_0 .. a_k`` of Eq. 7, ``k = length - 1``, normalised to sum 1.

    ``a_0`` weighs the current frame and ``a_j`` the frame ``j`` steps in the past. Before
    normalisation, for ``j = 0 .. length - 1`` and ``L = length``:

    - ``uniform``: ``a_j = 1`` (moving average).
    - ``hann``: ``a_j = (1 + cos(pi * j / L)) / 2``, the right half of the symmetric Hann window of
      length ``2L + 1`` without its trailing zero (``torch.hann_window(2L + 1, periodic=False)[L:2L]``):
      peak at the current frame, decaying into the past, and no tap wasted on a zero weight
      (the window of length ``2L - 1`` would end on one). ``L = 3`` gives ``[1, 0.75, 0.25] / 2``.
    - ``exponential``: ``a_j = decay ** j`` with ``decay`` in ``(0, 1]``.
    - ``linear``: ``a_j = (L - j) / L``, a triangle falling to ``1/L`` at the oldest frame.

    Args:
        length: number of taps, ``>= 1``; ``1`` means no smoothing (``s = d``).
        window: the window's name.
        decay: the ratio of the ``exponential`` window; ignored by the others.

    Returns:
        ``(length,)`` ``float32`` weights, non-negative, ``a_0 > 0``, summing to 1.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"Expected argument `length` to be an integer >= 1 but got {length}")
    if window not in _WINDOWS:
        raise ValueError(f"Expected argument `window` to be one of {_WINDOWS} but got {window!r}")
    j = torch.arange(length, dtype=torch.float64)
    if window == "uniform":
        a = torch.ones_like(j)
    elif window == "hann":
        a = 0.5 * (1.0 + torch.cos(math.pi * j / length))
    elif window == "exponential":
        if not (0.0 < decay <= 1.0):
            raise ValueError(f"Expected argument `decay` to be in (0, 1] but got {decay}")
        a = decay**j
    else:  # linear
        a = (length - j) / length
    return (a / a.sum()).float()


def smooth_saliency(d: Tensor, weights: Tensor) -> Tensor:
    """Causal smoothing of the frame differences (Eq. 7): ``s_i = sum_j a_j d_{i-j}``.

    Near the start of the clip, where ``i - j < 0``, the missing terms are dropped and the weights
    renormalised over the terms that exist: ``s_i = sum_{j <= i} a_j d_{i-j} / sum_{j <= i} a_j``.
    A constant ``d`` therefore gives a constant ``s``, and the first frames are not penalised for
    having no past. As a consequence the result does not depend on the weights' overall scale.

    Implemented as a ``conv1d`` over the left-zero-padded ``d`` (and over ones, for the normaliser).

    Args:
        d: ``(B, T)`` frame differences.
        weights: ``(K,)`` non-negative weights with ``weights[0] > 0`` (see :func:`window_weights`).

    Returns:
        ``s``, ``(B, T)``.
    """
    if d.dim() != 2:
        raise ValueError(f"Expected argument `d` to be (B, T) but got shape {tuple(d.shape)}")
    if weights.dim() != 1 or weights.numel() < 1:
        raise ValueError(
            f"Expected argument `weights` to be a non-empty 1-D tensor but got shape {tuple(weights.shape)}"
        )
    if bool((weights < 0).any()) or not bool(weights[0] > 0):
        raise ValueError(
            f"Expected argument `weights` to be non-negative with weights[0] > 0 but got {weights.tolist()}"
        )
    if not d.is_floating_point():
        d = d.float()
    B, T = d.shape
    K = weights.numel()
    # conv1d is a cross-correlation, out[i] = sum_m w[m] x[i + m]; with K - 1 zeros on the left,
    # x[i + m] = d[i + m - (K - 1)], so w[m] = a[K - 1 - m]: the flipped weights.
    kernel = weights.to(dtype=d.dtype, device=d.device).flip(0).view(1, 1, K)
    num = F.conv1d(F.pad(d.unsqueeze(1), (K - 1, 0)), kernel).squeeze(1)
    ones = d.new_ones(1, 1, T)
    den = F.conv1d(F.pad(ones, (K - 1, 0)), kernel).view(1, T)  # sum of the weights that exist
    return num / den


def temporal_saliency(
    video: Tensor, window_length: int = 3, window: Window = "hann", decay: float = 0.5
) -> Tensor:
    """Temporal saliency ``s`` of every frame: Eq. 6 then Eq. 7.

    Args:
        video: ``(B, C, T, H, W)``.
        window_length: taps of the smoothing window (``k + 1`` in Eq. 7); 1 = no smoothing.
        window: see :func:`window_weights`.
        decay: ratio of the ``exponential`` window.

    Returns:
        ``(B, T)``.
    """
    return smooth_saliency(frame_differences(video), window_weights(window_length, window, decay))


def saliency_threshold(s: Tensor, eps: float, eps_mode: EpsMode) -> Tensor:
    """The saliency bound ``eps`` of Eq. 8, per video.

    Args:
        s: ``(B, T)`` saliency.
        eps: ``absolute``: the threshold itself, in the units of ``s``; ``quantile``: a level in
            ``[0, 1]``, the threshold being the per-video ``eps``-quantile of ``s`` (linear
            interpolation, ``torch.quantile``'s default; 0.5 is the median).
        eps_mode: how ``eps`` is read.

    Returns:
        ``(B, 1)``, broadcastable against ``s``.
    """
    _check_saliency(s)
    if eps_mode not in _EPS_MODES:
        raise ValueError(f"Expected argument `eps_mode` to be one of {_EPS_MODES} but got {eps_mode!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"Expected argument `eps` to be a finite number but got {eps}")
    if eps_mode == "absolute":
        return s.new_full((s.shape[0], 1), float(eps))
    if not (0.0 <= eps <= 1.0):
        raise ValueError(f"Expected argument `eps` to be in [0, 1] when `eps_mode` is 'quantile' but got {eps}")
    return torch.quantile(s, float(eps), dim=1, keepdim=True)


def tsgf_mask(
    s: Tensor,
    eps: float,
    eps_mode: EpsMode = "quantile",
    shape: MaskShape = "eq8",
    signed: bool = False,
    floor: float = 0.0,
) -> Tensor:
    """Per-frame gradient mask of TSGF_O (Eq. 8).

    - ``eq8``: ``M = max(eps - s, 0) / (max(s) - min(s))`` per video. Key frames (``s > eps``) get 0;
      the calmer a frame, the larger its factor. With a quantile ``eps`` (so ``eps <= max(s)``),
      ``M`` lies in ``[0, 1]``; an absolute ``eps`` above ``max(s)`` can give factors above 1 (not
      clipped, as in the paper). Note that frames with ``s == eps`` also get 0, so ``eps`` at the
      minimum of ``s`` zeroes the whole video.
    - ``binary``: ``M = 1`` where ``s <= eps`` else 0: key frames frozen, calm frames at full step.
    - ``signed=True`` (``eq8`` only): ``M = (eps - s) / (max(s) - min(s))`` without the clamp, the
      paper's Appendix-E ablation where key frames' gradients flip sign (it hurts: 39.2 -> 19.0).
    - ``floor``: ``max(M, floor)``: key frames move at ``floor`` of the step instead of not at all
      (a choice the paper leaves open; 0 is the paper).

    Flat saliency: where ``max(s) - min(s) <= 1e-12 + 1e-6 * max|s|`` (an absolute floor plus a
    relative part that absorbs float32 rounding of a constant ``s``) the video has no key frames and
    its mask is all ones, whatever ``shape``.

    Args:
        s: ``(B, T)`` saliency.
        eps: threshold, read according to ``eps_mode`` (see :func:`saliency_threshold`).
        eps_mode: ``absolute`` or ``quantile``.
        shape: ``eq8`` or ``binary``.
        signed: let the mask go negative (``eq8`` only).
        floor: the least factor of any frame, in ``[0, 1)`` (not with ``signed``).

    Returns:
        ``(B, T)`` mask in the dtype of ``s``.
    """
    if shape not in _SHAPES:
        raise ValueError(f"Expected argument `shape` to be one of {_SHAPES} but got {shape!r}")
    if not isinstance(signed, bool):
        raise ValueError(f"Expected argument `signed` to be a bool but got {signed!r}")
    if signed and shape != "eq8":
        raise ValueError(f"Expected argument `signed` to be False when `shape` is {shape!r} but got {signed}")
    check_floor(floor, signed)
    threshold = saliency_threshold(s, eps, eps_mode)  # (B, 1); also validates s
    if shape == "binary":
        mask = (s <= threshold).to(s.dtype)
    else:
        span = s.amax(dim=1, keepdim=True) - s.amin(dim=1, keepdim=True)  # (B, 1)
        margin = threshold - s
        if not signed:
            margin = margin.clamp_min(0)
        # Flat videos are replaced below; keep the division finite for them meanwhile.
        mask = margin / torch.where(span > 0, span, torch.ones_like(span))
    if floor:
        mask = mask.clamp_min(floor)
    return torch.where(_flat(s), torch.ones_like(mask), mask)


def check_floor(floor: float, signed: bool = False) -> None:
    """Refuse a mask floor outside ``[0, 1)`` or one combined with a signed mask (which has no floor)."""
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"Expected argument `mask_floor` to be in [0, 1) but got {floor}")
    if floor and signed:
        raise ValueError("Expected `mask_floor` 0 with a signed mask (its key frames' factors are negative)")


def key_frames(s: Tensor, eps: float, eps_mode: EpsMode = "quantile") -> Tensor:
    """Key frames, ``s > eps``: the frames TSGF_A leaves alone and the ``binary`` mask freezes.

    A flat video (see :func:`tsgf_mask`) has no key frames, so ``key_frames`` is always the
    complement of ``tsgf_mask(..., shape="binary")``.

    Args:
        s: ``(B, T)`` saliency.
        eps: threshold, read according to ``eps_mode``.
        eps_mode: ``absolute`` or ``quantile``.

    Returns:
        ``(B, T)`` bool.
    """
    threshold = saliency_threshold(s, eps, eps_mode)
    return (s > threshold) & ~_flat(s)


def _flat(s: Tensor) -> Tensor:
    """``(B, 1)`` bool: videos whose saliency range is indistinguishable from zero."""
    span = s.amax(dim=1, keepdim=True) - s.amin(dim=1, keepdim=True)
    scale = s.abs().amax(dim=1, keepdim=True)
    return span <= _FLAT_ATOL + _FLAT_RTOL * scale


def _check_saliency(s: Tensor) -> None:
    if s.dim() != 2 or s.shape[1] < 1:
        raise ValueError(f"Expected argument `s` to be (B, T) with T >= 1 but got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        raise ValueError(f"Expected argument `s` to be a floating-point tensor but got {s.dtype}")
