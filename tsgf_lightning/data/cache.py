"""Decode a split once with PyAV into a ``uint8`` tensor file, keyed by everything that shapes it.

The key hashes the source's identity (kind, root, split id, class subset), the split, the list of
files (path, label, size, mtime in ns), the clip geometry (frames, resize, sampling, gap, clip
positions) and a format version, so a changed dataset or setting never reads a stale cache. Files
are written to a temporary name and renamed, so an interrupted decode leaves no half-written cache
behind, and loaded with ``mmap=True`` so DDP ranks and DataLoader workers share one copy in the
page cache.

Corrupt or unreadable videos are skipped with a warning that names each one, and counted; more than
``max_bad_fraction`` of a split failing is an error (nothing is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .decode import Sampling, VideoDecodeError, decode_clips
from .sources import VideoItem

CACHE_VERSION = 2  # v2: exact-rational frame indices (decode.sample_indices)


@dataclass
class DecodedSplit:
    """A decoded split. ``clips`` is ``uint8 (N, K, C, T, H, W)``: K clips per video."""

    clips: Tensor
    labels: Tensor
    paths: list[str]
    groups: list[str]
    skipped: list[str]

    def to_dict(self) -> dict:
        return {"clips": self.clips, "labels": self.labels, "paths": self.paths, "groups": self.groups,
                "skipped": self.skipped}


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from every video of a split."""

    frames: int
    size_hw: tuple[int, int]
    sampling: Sampling = "uniform"
    gap: int = 4
    positions: tuple[float, ...] = (0.5,)


def cache_file(cache_dir: str, source_key: dict, split: str, items: Sequence[VideoItem], spec: ClipSpec) -> Path:
    """Where the decoded split lives; the name carries the split, geometry and a content hash."""
    files = hashlib.sha1()
    for item in items:
        try:
            st = os.stat(item.path)
            # Nanosecond mtime: a file rewritten within the same second still changes the key.
            files.update(f"{item.path}|{item.label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            files.update(f"{item.path}|{item.label}|missing\n".encode())
    key = {"version": CACHE_VERSION, "source": source_key, "split": split, "files": files.hexdigest(),
           "frames": spec.frames, "size_hw": list(spec.size_hw), "sampling": spec.sampling,
           "gap": spec.gap, "positions": list(spec.positions)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    kind = str(source_key.get("kind", "videos")).lower()
    h, w = spec.size_hw
    name = f"{kind}-{split}-{spec.frames}x{h}x{w}-k{len(spec.positions)}-{digest}.pt"
    return Path(cache_dir) / name


def _single_thread() -> None:
    torch.set_num_threads(1)


def _decode_one(args: tuple[str, ClipSpec]) -> Tensor | str:
    path, spec = args
    try:
        return decode_clips(path, spec.frames, spec.size_hw, spec.sampling, spec.gap, spec.positions)
    except VideoDecodeError as err:
        return str(err)


def decode_split(items: Sequence[VideoItem], spec: ClipSpec, workers: int = 2,
                 max_bad_fraction: float = 0.05, desc: str = "decoding") -> DecodedSplit:
    """Decode every item (in order, ``workers`` processes, with a progress bar).

    Raises:
        RuntimeError: more than ``max_bad_fraction`` of the items (or all of them) failed; the
            message names the failures.
    """
    jobs = [(item.path, spec) for item in items]
    if workers > 1 and len(jobs) > 1:
        # fork, like DataLoader workers, and like them one intra-op thread each (OpenMP after fork).
        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_single_thread) as pool:
            results = list(tqdm(pool.map(_decode_one, jobs, chunksize=4), total=len(jobs), desc=desc,
                                unit="video"))
    else:
        results = [_decode_one(job) for job in tqdm(jobs, desc=desc, unit="video")]

    kept_items, clips, skipped = [], [], []
    for item, result in zip(items, results):
        if isinstance(result, str):
            skipped.append(item.path)
            warnings.warn(f"skipping unreadable video {result}", stacklevel=2)
        else:
            kept_items.append(item)
            clips.append(result)
    if skipped and (not clips or len(skipped) > max_bad_fraction * len(items)):
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        raise RuntimeError(
            f"{len(skipped)} of {len(items)} videos could not be decoded ({desc}), more than "
            f"max_bad_fraction={max_bad_fraction}: {shown}")
    if skipped:
        warnings.warn(f"{desc}: skipped {len(skipped)} of {len(items)} unreadable videos", stacklevel=2)
    return DecodedSplit(
        clips=torch.stack(clips),
        labels=torch.tensor([item.label for item in kept_items], dtype=torch.int64),
        paths=[item.path for item in kept_items],
        groups=[item.group for item in kept_items],
        skipped=skipped,
    )


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename over ``path`` (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_or_decode(cache_dir: str, source_key: dict, split: str, items: Sequence[VideoItem], spec: ClipSpec,
                   workers: int = 2, max_bad_fraction: float = 0.05) -> DecodedSplit:
    """Return the decoded split, decoding and caching it on first use."""
    path = cache_file(cache_dir, source_key, split, items, spec)
    if path.exists():
        data = torch.load(path, mmap=True, weights_only=True)
        return DecodedSplit(**data)
    decoded = decode_split(items, spec, workers, max_bad_fraction, desc=f"decoding {split} ({len(items)} videos)")
    save_atomic(decoded.to_dict(), path)
    return decoded


def cached_split_exists(cache_dir: str, source_key: dict, split: str, items: Sequence[VideoItem],
                        spec: ClipSpec) -> bool:
    return cache_file(cache_dir, source_key, split, items, spec).exists()
