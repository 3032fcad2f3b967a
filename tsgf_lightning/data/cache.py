"""Decode a part (``fit`` / ``val`` / ``test``) once with PyAV into a ``uint8`` file keyed by all that shapes it.

The key hashes the source's identity (kind, root, fold, class subset), the part, the list of
files (path, label, size and SHA-256 of the contents, :mod:`.digests`: a copy of the dataset with new
mtimes keeps its caches, a rewritten video does not), the clip geometry (frames, resize, sampling, gap, clip
positions) and a format version, so a changed dataset or setting never reads a stale cache. Files
are written to a temporary name and renamed, so an interrupted decode leaves no half-written cache
behind, and loaded with ``mmap=True`` so DDP ranks and DataLoader workers share one copy in the
page cache.

The rename also publishes the file's integrity record: its size and CRC-32 are part of its name
(``{key}.{size}.crc32-{crc}.pt``), so no cache exists without its record and the two cannot
disagree after a crash. Every load streams the file through the checksum before mapping it
(:data:`~.integrity.CHECK_CHUNK` bytes at a time, so only the page cache holds it); a file that is
truncated, changed on disk, unreadable or without a record is named in a warning, removed and
decoded again. Before decoding, the cache directory must be writable, and temporaries of killed
saves in it are removed.

Corrupt or unreadable videos are skipped with a warning that names each one, and counted; more than
``max_bad_fraction`` of a part failing is an error (nothing is written). The skipped files are
stored with the part and reported again on every load.
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

from ..atomic import temp_sibling, write_atomic
from .decode import Sampling, VideoDecodeError, decode_clips
from .digests import content_digests
from .integrity import (
    cache_problem,
    file_crc32,
    has_record,
    recorded_name,
    remove_stale_temps,
    require_writable,
    stored_caches,
)
from .sources import VideoItem
from .sources.base import preview

CACHE_VERSION = 3  # v2: exact-rational frame indices (decode.sample_indices); v3: content digests, not mtimes


@dataclass
class DecodedPart:
    """A decoded part. ``clips`` is ``uint8 (N, K, C, T, H, W)``: K clips per video."""

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
    """How clips are cut from every video of a part."""

    frames: int
    size_hw: tuple[int, int]
    sampling: Sampling = "uniform"
    gap: int = 4
    positions: tuple[float, ...] = (0.5,)


def cache_file(cache_dir: str, source_key: dict, part: str, items: Sequence[VideoItem], spec: ClipSpec) -> Path:
    """The key of the decoded part: part, geometry and a content hash in the name.

    The file stored for it adds its integrity record to the name (:func:`~.integrity.recorded_name`).
    """
    files = hashlib.sha1()
    for item, digest in zip(items, content_digests([item.path for item in items])):
        files.update(f"{item.path}|{item.label}|{digest or 'missing'}\n".encode())
    key = {"version": CACHE_VERSION, "source": source_key, "part": part, "files": files.hexdigest(),
           "frames": spec.frames, "size_hw": list(spec.size_hw), "sampling": spec.sampling,
           "gap": spec.gap, "positions": list(spec.positions)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    kind = str(source_key.get("kind", "videos")).lower()
    h, w = spec.size_hw
    name = f"{kind}-{part}-{spec.frames}x{h}x{w}-k{len(spec.positions)}-{digest}.pt"
    return Path(cache_dir) / name


def _single_thread() -> None:
    torch.set_num_threads(1)


def _decode_one(args: tuple[str, ClipSpec]) -> Tensor | str:
    path, spec = args
    try:
        return decode_clips(path, spec.frames, spec.size_hw, spec.sampling, spec.gap, spec.positions)
    except VideoDecodeError as err:
        return str(err)


def decode_part(items: Sequence[VideoItem], spec: ClipSpec, workers: int = 2,
                 max_bad_fraction: float = 0.05, desc: str = "decoding") -> DecodedPart:
    """Decode every item (in order, ``workers`` processes, with a progress bar).

    Unreadable items are warned about one by one, with the decoder's reason, and listed in ``skipped``.

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
    return DecodedPart(
        clips=torch.stack(clips),
        labels=torch.tensor([item.label for item in kept_items], dtype=torch.int64),
        paths=[item.path for item in kept_items],
        groups=[item.group for item in kept_items],
        skipped=skipped,
    )


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename over ``path`` (readers never see half a file)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _save_cache(obj: dict, path: Path) -> Path:
    """Save to a temporary, checksum what landed, and rename it to its recorded name."""
    tmp = temp_sibling(path)
    try:
        torch.save(obj, tmp)
        final = recorded_name(path, tmp.stat().st_size, file_crc32(tmp))
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def _load_verified(path: Path) -> tuple[DecodedPart | None, str | None]:
    problem = cache_problem(path)
    if problem is not None:
        return None, problem
    try:
        return DecodedPart(**torch.load(path, mmap=True, weights_only=True)), None
    except Exception as err:  # a checksum-clean file that torch cannot read: any error means decode again
        return None, f"it cannot be loaded: {type(err).__name__}: {err}"


def report_skipped(data: DecodedPart, part: str, total: int) -> None:
    """Warn that the part leaves out unreadable videos: on every load, so no run forgets them."""
    if data.skipped:
        warnings.warn(f"part {part!r}: skipped {len(data.skipped)} of {total} unreadable videos, left out of "
                      f"this run: {preview(data.skipped)}", stacklevel=3)


def load_or_decode(cache_dir: str, source_key: dict, part: str, items: Sequence[VideoItem], spec: ClipSpec,
                   workers: int = 2, max_bad_fraction: float = 0.05) -> DecodedPart:
    """Return the decoded part: a verified cache, or a decode (cached) on first use or when the cache is bad.

    Raises:
        OSError: the part must be decoded and ``cache_dir`` is not writable (before any decoding).
        RuntimeError: too many unreadable videos (:func:`decode_part`).
    """
    path = cache_file(cache_dir, source_key, part, items, spec)
    remove_stale_temps(path.parent)
    for stored in stored_caches(path):
        data, problem = _load_verified(stored)
        if data is not None:
            report_skipped(data, part, len(items))
            return data
        warnings.warn(f"decode cache {stored} is bad: {problem}. Removing it and decoding part {part!r} again.",
                      stacklevel=2)
        try:
            stored.unlink()
        except OSError:
            pass
    require_writable(path)
    decoded = decode_part(items, spec, workers, max_bad_fraction, desc=f"decoding {part} ({len(items)} videos)")
    _save_cache(decoded.to_dict(), path)
    report_skipped(decoded, part, len(items))
    return decoded


def cached_part_exists(cache_dir: str, source_key: dict, part: str, items: Sequence[VideoItem],
                        spec: ClipSpec) -> bool:
    """Whether a recorded cache of the part is stored (not verified: :func:`load_or_decode` does that)."""
    path = cache_file(cache_dir, source_key, part, items, spec)
    return any(has_record(p) for p in stored_caches(path))
