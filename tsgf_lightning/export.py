"""Write a distilled set: ``distilled.pt`` (atomically), a frame grid PNG per class, an MP4 per video.

Also ``python -m tsgf_lightning.export SYNTHESIS.ckpt --output-dir DIR`` exports from any synthesis
checkpoint (they hold the whole set, gathered from every rank).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import Tensor

from .data.cache import save_atomic
from .data.distilled import FORMAT_VERSION
from .video import denormalize
from .visualize import frame_grid, save_mp4, save_png

#: What a synthesis checkpoint's ``tsgf`` record carries into ``distilled.pt`` besides the set itself.
SYNTHESIS_EXTRAS = ("init_paths", "teacher_arch", "saturated_fraction", "init_saturated_fraction")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plain_types(value):
    """``value`` as JSON-like plain types, anything else as ``str``: checkpoints and ``distilled.pt`` load
    with ``weights_only=True``."""
    if isinstance(value, dict):
        return {str(k): plain_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_types(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def export_distilled(out_dir: str | Path, videos: Tensor, labels: Tensor, class_names: list[str], ipc: int,
                     mean: list[float], std: list[float], method: str, teacher_sha256: str = "",
                     config: dict | None = None, extra: dict | None = None, media: bool = True,
                     factor: int = 1) -> Path:
    """Write ``out_dir/distilled.pt`` (+ ``grids/``, ``videos/`` when ``media``) and return its path.

    Args:
        videos: ``(N, C, T, H, W)`` in ``[0, 1]`` pixel space (clamped and stored as float16).
        labels: ``(N,)`` int64.
        extra: more plain-typed entries for the file (e.g. the real videos used for initialisation).
        factor: multi-formation factor: each video holds ``factor x factor`` tiles (one clip each).
    """
    out = Path(out_dir)
    pixels = videos.detach().float().cpu().clamp(0, 1)
    labels = labels.detach().cpu().to(torch.int64)
    N, C, T, H, W = pixels.shape
    data = {
        "videos": pixels.to(torch.float16), "labels": labels, "class_names": list(class_names), "ipc": int(ipc),
        "frames": int(T), "size": int(H), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "method": method, "teacher_sha256": teacher_sha256, "config": config or {},
        "factor": int(factor), "format_version": FORMAT_VERSION, **(extra or {}),
    }
    if media:
        for c, name in enumerate(class_names):
            members = torch.nonzero(labels == c).flatten()
            if len(members) == 0:
                continue
            save_png(frame_grid(pixels[members]), out / "grids" / f"{c:03d}_{_slug(name)}.png")
            for j, i in enumerate(members.tolist()):
                save_mp4(pixels[i], out / "videos" / f"{c:03d}_{_slug(name)}_{j}.mp4")
    path = out / "distilled.pt"
    save_atomic(data, path)  # last, so an existing distilled.pt means a complete export
    return path


def synthesis_record(spec, ipc: int, factor: int, teacher_record: dict, init_paths: list[str],
                     saturated_fraction: float | None, init_saturated_fraction: float | None, config: dict) -> dict:
    """The ``tsgf`` record of a synthesis checkpoint: what :func:`export_synthesis` needs besides the videos.

    Args:
        spec: the data's :class:`~tsgf_lightning.data.spec.DataSpec`.
        teacher_record: :func:`~tsgf_lightning.modules.frozen.load_teacher`'s record (``sha256``, ``arch``).
        config: the module's hyper-parameters (``mask: none`` names the method ``sre2l``).
    """
    return {"stage": "synthesis", "num_classes": spec.num_classes, "class_names": list(spec.class_names),
            "ipc": int(ipc), "factor": int(factor), "mean": list(spec.mean), "std": list(spec.std),
            "method": "tsgf" if config.get("mask") != "none" else "sre2l",
            "teacher_sha256": teacher_record["sha256"], "teacher_arch": teacher_record["arch"],
            "init_paths": list(init_paths), "saturated_fraction": saturated_fraction,
            "init_saturated_fraction": init_saturated_fraction, "config": plain_types(config)}


def export_synthesis(out_dir: str | Path, videos: Tensor, labels: Tensor, record: dict, steps: int,
                     media: bool = True) -> Path:
    """Export ``[0, 1]`` synthetic videos as described by a synthesis record (the module's, or a checkpoint's)."""
    return export_distilled(out_dir, videos, labels, record["class_names"], record["ipc"], record["mean"],
                            record["std"], method=record.get("method", "tsgf"),
                            teacher_sha256=record.get("teacher_sha256", ""), config=record.get("config", {}),
                            extra={**{k: record[k] for k in SYNTHESIS_EXTRAS if k in record}, "steps": int(steps)},
                            media=media, factor=int(record.get("factor", 1)))


def export_from_checkpoint(ckpt_path: str, out_dir: str, media: bool = True) -> Path:
    """Export the set held by a SynthesisModule checkpoint."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    record = ckpt.get("tsgf", {}) if isinstance(ckpt, dict) else {}
    if record.get("stage") != "synthesis":
        raise ValueError(f"{ckpt_path} is not a SynthesisModule checkpoint (stage {record.get('stage')!r})")
    videos = denormalize(ckpt["state_dict"]["videos"].float(), record["mean"], record["std"])
    return export_synthesis(out_dir, videos, ckpt["state_dict"]["labels"], record, int(ckpt.get("global_step", 0)),
                            media=media)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a SynthesisModule checkpoint (.ckpt)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-media", action="store_true", help="write distilled.pt only")
    args = parser.parse_args(argv)
    print(export_from_checkpoint(args.checkpoint, args.output_dir, media=not args.no_media))


if __name__ == "__main__":
    main()
