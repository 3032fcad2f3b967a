"""VideoMix (Yun et al., 2020) gated by temporal saliency (TSGF_A).

VideoMix pastes one CutMix box from a partner clip into the same spatial position of every frame.
TSGF_A pastes it only into the non-key frames (``s_i <= eps``, see
:func:`~tsgf_lightning.tsgf.saliency.key_frames`), so the frames that carry the motion stay intact.

Randomness comes only from an explicit ``torch.Generator``: ``torch.distributions.Beta`` and
``torch._standard_gamma`` ignore generators, so Beta samples are built here from generator-drawn
normals and uniforms (Marsaglia-Tsang gammas).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cutmix_boxes(batch: int, height: int, width: int, generator: torch.Generator, alpha: float = 1.0) -> Tensor:
    """One CutMix box per sample, as in CutMix (Yun et al., 2019).

    ``lam ~ Beta(alpha, alpha)``; the box has side ``floor(H * sqrt(1 - lam))`` by
    ``floor(W * sqrt(1 - lam))`` and a centre drawn uniformly over the pixels, and is then clipped
    to the frame. Clipping (and the floor) make the realised area often smaller than ``1 - lam``
    of the frame: use :func:`mixed_fraction` for the area actually mixed, never ``lam``.

    Draw order (for reproducibility): Beta sample(s), then the centres' rows, then their columns;
    all on ``generator.device``.

    Args:
        batch: number of boxes ``B``, ``>= 1``.
        height: frame height ``H``, ``>= 1``.
        width: frame width ``W``, ``>= 1``.
        generator: the only source of randomness.
        alpha: Beta parameter, ``> 0`` (1.0 = uniform ``lam``, CutMix's default).

    Returns:
        ``(B, 4)`` long ``[y0, y1, x0, x1]``, half-open: rows ``y0 <= y < y1``, columns
        ``x0 <= x < x1``, with ``0 <= y0 <= y1 <= H`` and ``0 <= x0 <= x1 <= W``.
    """
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be an integer >= 1 but got {value}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"Expected argument `generator` to be a torch.Generator but got {generator!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha < math.inf):
        raise ValueError(f"Expected argument `alpha` to be a finite number > 0 but got {alpha}")
    device = generator.device
    lam = _sample_symmetric_beta(batch, float(alpha), generator)
    ratio = torch.sqrt(1.0 - lam)
    cut_h = torch.floor(height * ratio).long()
    cut_w = torch.floor(width * ratio).long()
    cy = torch.randint(0, height, (batch,), generator=generator, device=device)
    cx = torch.randint(0, width, (batch,), generator=generator, device=device)
    y0 = cy - cut_h // 2
    x0 = cx - cut_w // 2
    boxes = torch.stack([y0, y0 + cut_h, x0, x0 + cut_w], dim=1)
    limits = torch.tensor([height, height, width, width], device=device)
    return torch.minimum(boxes.clamp_min(0), limits)


def gated_videomix(video: Tensor, partner: Tensor, boxes: Tensor, frame_gate: Tensor) -> Tensor:
    """Paste each sample's partner into its box, on the gated frames only.

    ``out[i, :, t, y0:y1, x0:x1] = video[partner[i], :, t, y0:y1, x0:x1]`` for every ``t`` with
    ``frame_gate[i, t]``; every other voxel equals ``video[i]``. The input is not modified.

    Args:
        video: ``(B, C, T, H, W)``.
        partner: ``(B,)`` long, indices into the batch (e.g. a permutation).
        boxes: ``(B, 4)`` ``[y0, y1, x0, x1]`` from :func:`cutmix_boxes`.
        frame_gate: ``(B, T)`` bool, True where the box is pasted (TSGF_A: ``~key_frames``).

    Returns:
        ``(B, C, T, H, W)``, a new tensor.
    """
    if video.dim() != 5:
        raise ValueError(f"Expected argument `video` to be (B, C, T, H, W) but got shape {tuple(video.shape)}")
    B, C, T, H, W = video.shape
    _check_boxes_gate(boxes, frame_gate, B, T)
    if partner.shape != (B,) or partner.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"Expected argument `partner` to be an integer tensor of shape ({B},) "
            f"but got {partner.dtype} {tuple(partner.shape)}"
        )
    if B and (int(partner.min()) < 0 or int(partner.max()) >= B):
        raise ValueError(f"Expected argument `partner` to hold indices in [0, {B}) but got {partner.tolist()}")
    boxes = boxes.to(video.device)
    ys = torch.arange(H, device=video.device)
    xs = torch.arange(W, device=video.device)
    in_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 1:2])  # (B, H)
    in_x = (xs >= boxes[:, 2:3]) & (xs < boxes[:, 3:4])  # (B, W)
    box = in_y[:, :, None] & in_x[:, None, :]  # (B, H, W)
    mask = frame_gate.to(video.device)[:, :, None, None] & box[:, None]  # (B, T, H, W)
    return torch.where(mask.unsqueeze(1), video[partner.to(video.device)], video)


def mixed_fraction(boxes: Tensor, frame_gate: Tensor, height: int, width: int) -> Tensor:
    """Fraction of each clip's voxels taken from the partner by :func:`gated_videomix`.

    ``f = (box area / (H * W)) * (gated frames / T)``; for hard-label mixing,
    ``label = (1 - f) * y_i + f * y_partner``.

    Args:
        boxes: ``(B, 4)`` ``[y0, y1, x0, x1]``.
        frame_gate: ``(B, T)`` bool.
        height: ``H``.
        width: ``W``.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``, on ``frame_gate``'s device.
    """
    B, T = frame_gate.shape if frame_gate.dim() == 2 else (-1, -1)
    _check_boxes_gate(boxes, frame_gate, B, T)
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be an integer >= 1 but got {value}")
    boxes = boxes.to(frame_gate.device)
    area = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).float() / (height * width)
    return area * frame_gate.float().mean(dim=1)


def _check_boxes_gate(boxes: Tensor, frame_gate: Tensor, B: int, T: int) -> None:
    if frame_gate.dim() != 2 or frame_gate.shape != (B, T) or frame_gate.dtype != torch.bool:
        raise ValueError(
            f"Expected argument `frame_gate` to be a bool tensor of shape ({B}, {T}) "
            f"but got {frame_gate.dtype} {tuple(frame_gate.shape)}"
        )
    if boxes.shape != (B, 4) or boxes.is_floating_point():
        raise ValueError(
            f"Expected argument `boxes` to be an integer tensor of shape ({B}, 4) "
            f"but got {boxes.dtype} {tuple(boxes.shape)}"
        )


def _sample_symmetric_beta(n: int, alpha: float, generator: torch.Generator) -> Tensor:
    """``(n,)`` float64 samples of ``Beta(alpha, alpha)`` from ``generator`` alone.

    ``alpha == 1`` is ``Uniform(0, 1)``. Otherwise ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha)``,
    computed as ``sigmoid(log X - log Y)`` so that small ``alpha`` (tiny gammas) cannot give 0/0.
    """
    device = generator.device
    if alpha == 1.0:
        return torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    log_x = _log_standard_gamma(n, alpha, generator)
    log_y = _log_standard_gamma(n, alpha, generator)
    return torch.sigmoid(log_x - log_y)


def _log_standard_gamma(n: int, alpha: float, generator: torch.Generator) -> Tensor:
    """``(n,)`` float64 samples of ``log Gamma(alpha, 1)`` by Marsaglia & Tsang (2000).

    For ``a >= 1``: ``d = a - 1/3``, ``c = 1 / sqrt(9 d)``; draw ``x ~ N(0, 1)``, ``u ~ U(0, 1)``,
    ``v = (1 + c x)^3``; accept ``d v`` if ``v > 0`` and ``log u < x^2 / 2 + d - d v + d log v``
    (acceptance > 95%; rejected entries are redrawn). For ``alpha < 1`` sample ``Gamma(alpha + 1)``
    and multiply by ``u^(1 / alpha)``, i.e. add ``log(u) / alpha`` in log space.
    """
    device = generator.device
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        m = pending.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        log_v = torch.log(v.clamp_min(torch.finfo(torch.float64).tiny))
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * log_v)
        out[pending[ok]] = math.log(d) + log_v[ok]
        pending = pending[~ok]
    if alpha < 1.0:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        out = out + torch.log(u) / alpha
    return out
