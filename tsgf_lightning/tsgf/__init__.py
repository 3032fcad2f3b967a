"""Pure tensor functions of TSGF: saliency and mask (Eq. 6-8), BN matching (Eq. 5), gated VideoMix and the
student's mix, KD loss, per-step seeds."""

from tsgf_lightning.tsgf.bn_stats import BNStatistics
from tsgf_lightning.tsgf.losses import soft_label_kd
from tsgf_lightning.tsgf.mixing import mixed_cross_entropy, student_mix
from tsgf_lightning.tsgf.saliency import (
    frame_differences,
    key_frames,
    saliency_threshold,
    smooth_saliency,
    temporal_saliency,
    tsgf_mask,
    window_weights,
)
from tsgf_lightning.tsgf.seeds import step_seed
from tsgf_lightning.tsgf.videomix import cutmix_boxes, gated_videomix, mixed_fraction

__all__ = [
    "BNStatistics",
    "cutmix_boxes",
    "frame_differences",
    "gated_videomix",
    "key_frames",
    "mixed_cross_entropy",
    "mixed_fraction",
    "saliency_threshold",
    "smooth_saliency",
    "soft_label_kd",
    "step_seed",
    "student_mix",
    "temporal_saliency",
    "tsgf_mask",
    "window_weights",
]
