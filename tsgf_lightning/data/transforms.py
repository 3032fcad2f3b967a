"""Clip-consistent augmentation with ``torchvision.transforms.v2``.

v2 treats a ``tv_tensors.Video`` ``(..., T, C, H, W)`` as one sample and draws ONE set of random
parameters for all its frames, so every frame of a clip gets the same crop and the same flip (frame-
wise random crops would make static content look like motion). This is the only module that permutes
between the package's ``(C, T, H, W)`` convention and v2's ``(T, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..video import normalize


class ClipTransform(nn.Module):
    """``uint8`` or ``[0, 1]`` float clip ``(C, T, H, W)`` -> normalised ``float32`` clip ``(C, T, size, size)``.

    Args:
        size: output height and width.
        train: random crop (``RandomResizedCrop`` with ``crop_scale``, aspect ratio ``crop_ratio``) and
            optional horizontal flip; otherwise resize the short side to ``size`` and centre-crop.
        crop_scale: area fraction range of the random crop; ``(1, 1)`` with ``crop_ratio=(1, 1)`` on a
            square clip is the identity.
        crop_ratio: aspect-ratio range of the random crop.
        flip: random horizontal flip (p = 0.5). Off for data whose labels are left/right asymmetric
            (the embedded set, Something-Something).
        mean, std: per-channel normalisation in ``[0, 1]`` pixel units.
    """

    def __init__(self, size: int, train: bool, crop_scale: Sequence[float] = (0.5, 1.0),
                 crop_ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
        super().__init__()
        if size < 1:
            raise ValueError(f"Expected argument `size` to be >= 1 but got {size}")
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"Expected argument `crop_scale` to be (lo, hi) with 0 < lo <= hi <= 1 but got "
                             f"{crop_scale}")
        self.mean, self.std = tuple(mean), tuple(std)
        if train:
            ops: list[nn.Module] = [v2.RandomResizedCrop(size, scale=(lo, hi), ratio=tuple(crop_ratio), antialias=True)]
            if flip:
                ops.append(v2.RandomHorizontalFlip())
        else:
            ops = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        self.spatial = v2.Compose(ops)

    def forward(self, clip: Tensor) -> Tensor:
        if clip.dim() != 4:
            raise ValueError(f"Expected a clip (C, T, H, W) but got shape {tuple(clip.shape)}")
        x = clip.float() / 255.0 if clip.dtype == torch.uint8 else clip.float()
        video = tv_tensors.Video(x.permute(1, 0, 2, 3))  # (T, C, H, W): one sample for v2
        x = self.spatial(video).as_subclass(Tensor).permute(1, 0, 2, 3)  # back to (C, T, H, W)
        return normalize(x, self.mean, self.std).contiguous()


def center_crop(clips: Tensor, size: int) -> Tensor:
    """Resize the short side to ``size`` and centre-crop; ``(..., C, T, H, W)`` in, same dtype out.

    Used to bring real clips to the stored resolution of a distilled set (random subsets, real
    initialisation), exactly as the evaluation transform frames them.
    """
    *lead, c, t, h, w = clips.shape
    frames = clips.reshape(-1, c, t, h, w).transpose(1, 2).reshape(-1, c, h, w)  # (N*T, C, H, W)
    frames = v2.CenterCrop(size)(v2.Resize(size, antialias=True)(frames))
    return frames.reshape(-1, t, c, size, size).transpose(1, 2).reshape(*lead, c, t, size, size).contiguous()
