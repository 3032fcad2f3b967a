"""Pictures of videos: frame grids (PNG, TensorBoard), MP4 clips (PyAV), saliency heat-maps, synthesis snapshots."""

from __future__ import annotations

from pathlib import Path

import av
import torch
from torch import Tensor
from torchvision.io import write_png
from torchvision.utils import make_grid

from .tsgf.saliency import EpsMode, key_frames


def frame_grid(videos: Tensor, padding: int = 2) -> Tensor:
    """``[0, 1]`` videos ``(N, C, T, H, W)`` -> ``uint8 (3, H', W')``: one row per video, one column per frame."""
    N, C, T, H, W = videos.shape
    frames = videos.clamp(0, 1).permute(0, 2, 1, 3, 4).reshape(N * T, C, H, W)  # row-major: video, then frame
    grid = make_grid(frames, nrow=T, padding=padding, pad_value=1.0)
    return (grid * 255).round().to(torch.uint8)


def saliency_map(saliency: Tensor, key: Tensor | None = None, cell: int = 12) -> Tensor:
    """Per-frame saliency ``(N, T)`` -> ``uint8 (3, N*cell, T*cell)`` heat-map (each row scaled to [0, 1]).

    Key frames (``key`` True) get a red border so masked frames can be read off at a glance.
    """
    s = saliency.float()
    lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
    s = (s - lo) / (hi - lo).clamp_min(1e-12)
    img = s.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    img = torch.stack([img, img, img])
    if key is not None:
        border = torch.zeros_like(s, dtype=torch.bool).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        kk = key.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        edge = torch.zeros(cell, cell, dtype=torch.bool)
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
        border = kk & edge.repeat(*key.shape)
        img[0][border], img[1][border], img[2][border] = 1.0, 0.0, 0.0
    return (img * 255).round().to(torch.uint8)


def synthesis_pictures(pixels: Tensor, labels: Tensor, saliency: Tensor, eps: float, eps_mode: EpsMode,
                       most: int = 8) -> tuple[Tensor, Tensor]:
    """What SynthesisModule logs: a frame grid of the first video of each class and its tiles' saliency map.

    Args:
        pixels: ``[0, 1]`` stored videos ``(N, C, T, H, W)``, class-major.
        labels: ``(N,)`` their classes.
        saliency: ``(N * f^2, T)`` per-tile saliency (tiles of video ``i`` are rows ``i * f^2 ...``).
        eps, eps_mode: the key-frame threshold (key frames get a red border).
        most: videos shown at most.
    """
    first = labels != torch.roll(labels, 1)
    first[0] = True
    pick = torch.nonzero(first).flatten()[:most]
    s = saliency.reshape(len(pixels), -1, saliency.shape[1])[pick].reshape(-1, saliency.shape[1]).float().cpu()
    return frame_grid(pixels[pick].float().cpu()), saliency_map(s, key_frames(s, eps, eps_mode))


def save_png(image: Tensor, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_png(image.cpu(), str(path))


def save_mp4(video: Tensor, path: str | Path, fps: int = 8) -> None:
    """Encode a ``[0, 1]`` clip ``(C, T, H, W)`` as H.264 MP4 with PyAV (odd sizes are padded to even)."""
    C, T, H, W = video.shape
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)  # (T, H, W, C)
    frames = torch.nn.functional.pad(frames, (0, 0, 0, W % 2, 0, H % 2))  # yuv420p needs even sizes
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W + W % 2, H + H % 2, "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
