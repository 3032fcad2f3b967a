"""The student's batch augmentation (TSGF_A): draws, the saliency gate, and the mix, in one function.

Each clip of a batch receives one CutMix box from a random partner
(:func:`~tsgf_lightning.tsgf.videomix.gated_videomix`), pasted into its non-key frames only
(``tsgf``), into every frame (``videomix``), or not at all (``none``). The key frames come from the
temporal saliency of the clip in pixel space: the batch arrives normalised, and normalised frame
differences weight each channel by ``1 / std``, which can make another frame the most-changing one.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from ..video import denormalize
from .saliency import EpsMode, Window, key_frames, temporal_saliency
from .videomix import cutmix_boxes, gated_videomix, mixed_fraction

#: The student's ``mix``: saliency-gated VideoMix (TSGF_A), VideoMix on every frame, or no mixing.
MixMode = Literal["tsgf", "videomix", "none"]


def student_mix(video: Tensor, mode: MixMode, generator: torch.Generator, mean, std, alpha: float = 1.0,
                window_length: int = 3, window: Window = "hann", eps: float = 0.5,
                eps_mode: EpsMode = "quantile") -> tuple[Tensor, Tensor, Tensor]:
    """Mix a batch of normalised clips ``(B, C, T, H, W)`` (``mean``/``std``: its normalisation).

    Draws, in order, from ``generator``: the partner permutation, then the boxes. The saliency is
    taken on the clip as augmented so far (the DataModule's crop/flip), with ``window_length``,
    ``window``, ``eps`` and ``eps_mode`` as in synthesis.

    Returns:
        the mixed batch, ``partner`` indices ``(B,)``, and the fraction of each clip's voxels taken
        from its partner ``(B,)``.
    """
    B, C, T, H, W = video.shape
    if mode == "none" or B < 2:
        return video, torch.arange(B, device=video.device), torch.zeros(B, device=video.device)
    partner = torch.randperm(B, generator=generator).to(video.device)
    boxes = cutmix_boxes(B, H, W, generator, alpha).to(video.device)
    if mode == "tsgf":
        with torch.no_grad():
            s = temporal_saliency(denormalize(video, mean, std), window_length, window)
            gate = ~key_frames(s, eps, eps_mode)
    else:
        gate = torch.ones(B, T, dtype=torch.bool, device=video.device)
    return gated_videomix(video, partner, boxes, gate), partner, mixed_fraction(boxes, gate, H, W).to(video)


def mixed_cross_entropy(logits: Tensor, labels: Tensor, partner: Tensor, fraction: Tensor,
                        label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of mixed clips: each clip's loss on its own label and its partner's, weighted by voxel share.

    ``(1 - fraction_i) * CE(logits_i, y_i) + fraction_i * CE(logits_i, y_partner_i)``, averaged over
    the batch (the labels of :func:`student_mix`'s output; unmixed clips have ``fraction`` 0).
    """
    own = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    other = F.cross_entropy(logits, labels[partner], reduction="none", label_smoothing=label_smoothing)
    return ((1 - fraction) * own + fraction * other).mean()
