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

Decoding writes each video's clips straight into a file of rows beside the cache and journals each
finished video (:mod:`.decoding`, :mod:`.partial`), so its memory does not grow with the part (a
Kinetics-400 ``fit`` part is ~94 GB) and a killed decode, run again with the same inputs,
continues where it stopped and publishes the same bytes. Several processes or machines sharing
``cache_dir`` may decode disjoint shards of one part (:func:`decode_shard`, ``tsgf decode``).

Corrupt or unreadable videos are skipped with a warning that names each one, and counted; more than
``max_bad_fraction`` of a part failing is an error (nothing is written). The skipped files are
stored with the part and reported again on every load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import temp_sibling, write_atomic
from .decode import ClipSpec
from .decoding import decode_rows, default_workers, row_shape, shard_rows
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
from .partial import (
    compact,
    compacted_through,
    lock_file,
    no_writers,
    read_journals,
    remove_partial,
    rows_file,
    take_lock,
    writers_file,
    writing,
)
from .sources import VideoItem
from .sources.base import preview

__all__ = ["ClipSpec", "DecodedPart", "cache_file", "cached_part_exists", "decode_part", "decode_shard",
           "load_or_decode"]

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


def _publish(key: Path, items: Sequence[VideoItem], spec: ClipSpec, max_bad_fraction: float, desc: str) -> Path | None:
    """Compact and save the part once every row is done; None while rows are missing or another process publishes.

    Raises:
        RuntimeError: too many unreadable videos (the partial is removed: decoding again gives the same).
    """
    n = len(items)
    if compacted_through(key) is None and len(read_journals(key, n)) < n:
        return None
    with no_writers(key) as alone:  # no process of this machine is writing rows, nor can start to
        return _publish_alone(key, items, spec, max_bad_fraction, desc) if alone and take_lock(key) else None


def _publish_alone(key: Path, items: Sequence[VideoItem], spec: ClipSpec, max_bad_fraction: float,
                   desc: str) -> Path | None:
    """:func:`_publish` holding both locks: the rows are complete and nobody writes them."""
    shape, n = row_shape(spec), len(items)
    try:
        records = read_journals(key, n)
        done = _published(key)
        if done is not None or (len(records) < n and compacted_through(key) is None):
            writers_file(key).unlink(missing_ok=True)  # made again by our lock
            return done  # another process published (and removed the partial) since we looked
        if len(records) < n:  # journals lost after compaction began: the rows cannot be placed again
            remove_partial(key)
            raise RuntimeError(f"the journals of the partial decode of {key} were damaged during compaction; it "
                               "was removed, decode the part again")
        skipped = [items[i].path for i in range(n) if records[i][1] is not None]
        for i in range(n):
            if records[i][1] is not None:
                warnings.warn(f"skipping unreadable video {records[i][1]}", stacklevel=5)
        kept = [i for i in range(n) if records[i][1] is None]
        if skipped and (not kept or len(skipped) > max_bad_fraction * n):
            remove_partial(key)
            raise RuntimeError(
                f"{len(skipped)} of {n} videos could not be decoded ({desc}), more than "
                f"max_bad_fraction={max_bad_fraction}: {preview(skipped)}")
        if skipped:
            compact(key, kept, records, math.prod(shape))
        # Mapped on the rows file: torch.save writes the pages of the page cache, no copy of the part is made.
        clips = torch.from_file(str(rows_file(key)), shared=False, size=len(kept) * math.prod(shape),
                                dtype=torch.uint8).view(len(kept), *shape)
        final = _save_cache(DecodedPart(
            clips=clips, labels=torch.tensor([items[i].label for i in kept], dtype=torch.int64),
            paths=[items[i].path for i in kept], groups=[items[i].group for i in kept], skipped=skipped,
        ).to_dict(), key)
        del clips
        remove_partial(key)  # the lock goes last
        return final
    finally:
        lock_file(key).unlink(missing_ok=True)


def decode_shard(cache_dir: str, source_key: dict, part: str, items: Sequence[VideoItem], spec: ClipSpec,
                 shard: int = 0, num_shards: int = 1, workers: int | None = None,
                 max_bad_fraction: float = 0.05) -> Path | None:
    """Decode shard ``shard`` of ``num_shards`` of a part into its cache; publish the cache if no row is missing.

    Several processes, on one machine or on several sharing ``cache_dir``, each run this with their
    own ``shard`` and the same other arguments (``tsgf decode --shard I --num-shards N``): each
    writes its contiguous rows (:func:`shard_rows`) into the part's shared partial
    (:mod:`.partial`) and its own journal, and whichever finds every row done publishes the cache,
    which a later :func:`load_or_decode` then loads. A shard that is killed resumes when run again;
    a later run with another ``num_shards`` (or a plain load) reuses every row already decoded.

    Returns:
        the stored cache, or None: other shards are still decoding, or another process is publishing.

    Raises:
        OSError: ``cache_dir`` is not writable (before any decoding).
        RuntimeError: too many unreadable videos (:func:`decode_part`).
    """
    key = cache_file(cache_dir, source_key, part, items, spec)
    require_writable(key)
    rows = shard_rows(len(items), shard, num_shards)
    desc = f"decoding {part} shard {shard + 1}/{num_shards} ({len(rows)} of {len(items)} videos)"
    _write_rows(key, items, spec, rows, workers, shard, num_shards, desc)
    return _published(key) or _publish(key, items, spec, max_bad_fraction, desc)


def _published(key: Path) -> Path | None:
    return next((p for p in stored_caches(key) if has_record(p)), None)


def _write_rows(key: Path, items: Sequence[VideoItem], spec: ClipSpec, rows: range, workers: int | None, shard: int,
                num_shards: int, desc: str, again: bool = True) -> None:
    """:func:`~.decoding.decode_rows` under the shared writers lock, unless the part is published already.

    ``again=False``: only if the journals lack a row (a publisher that failed removed the partial); a
    process waiting for another to publish thus does not re-read every row each time it looks.
    """
    with writing(key):
        if _published(key) is not None:
            writers_file(key).unlink(missing_ok=True)  # made again by this lock; nobody needs it once published
            return
        if again or (compacted_through(key) is None and len(read_journals(key, len(items))) < len(items)):
            decode_rows(key, items, spec, rows, workers or default_workers(), shard, num_shards, desc)


def decode_part(items: Sequence[VideoItem], spec: ClipSpec, workers: int | None = None,
                max_bad_fraction: float = 0.05, desc: str = "decoding", key: Path | None = None) -> DecodedPart:
    """Decode every item (in order, ``workers`` processes, by default one per core, with a progress bar).

    The clips go straight from the decoding processes into the partial of the cache ``key``
    (:mod:`.partial`; a temporary folder when None) and the result is the published cache, mapped:
    no process holds more than the clips it is decoding. A decode of ``key`` that was killed resumes
    from the videos it had finished. Unreadable items are warned about one by one, with the
    decoder's reason, and listed in ``skipped``.

    Raises:
        RuntimeError: more than ``max_bad_fraction`` of the items (or all of them) failed; the
            message names the failures.
    """
    with tempfile.TemporaryDirectory(prefix="tsgf-decode-") as scratch:
        key = key or Path(scratch) / "part.pt"
        waited = False
        while True:
            _write_rows(key, items, spec, range(len(items)), workers, 0, 1, desc, again=not waited)
            final = _published(key) or _publish(key, items, spec, max_bad_fraction, desc) or _published(key)
            if final is not None:
                return DecodedPart(**torch.load(final, mmap=True, weights_only=True))
            if not waited:
                warnings.warn(f"waiting for another process decoding {key.name} (this one's rows are done) to "
                              f"finish writing and publish it (lock {lock_file(key)})", stacklevel=2)
                waited = True
            time.sleep(1.0)


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename over ``path`` (readers never see half a file)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _save_cache(obj: dict, path: Path) -> Path:
    """Save to a temporary, checksum what landed, and rename it to its recorded name.

    Saved through a file object: torch names the archive inside after a file name it is given (the
    temporary's, which carries the pid), and the same part must be the same bytes whoever saves it.
    """
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
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
                   workers: int | None = None, max_bad_fraction: float = 0.05) -> DecodedPart:
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
    decoded = decode_part(items, spec, workers, max_bad_fraction, desc=f"decoding {part} ({len(items)} videos)",
                          key=path)
    report_skipped(decoded, part, len(items))
    return decoded


def cached_part_exists(cache_dir: str, source_key: dict, part: str, items: Sequence[VideoItem],
                        spec: ClipSpec) -> bool:
    """Whether a recorded cache of the part is stored (not verified: :func:`load_or_decode` does that)."""
    path = cache_file(cache_dir, source_key, part, items, spec)
    return any(has_record(p) for p in stored_caches(path))
