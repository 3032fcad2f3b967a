"""Decoding a part's videos in worker processes straight into the rows file of its partial (:mod:`.partial`).

Each worker decodes one video, writes its clips at the video's row and returns only the row's
CRC-32 (or the decoder's reason it could not), which the parent appends to its journal: so the
parent never holds a clip, a worker holds one video's, and the memory of a decode does not grow
with the part. Rows already recorded, and still intact on disk, are not decoded again.
"""

from __future__ import annotations

import gc
import math
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .decode import ClipSpec, VideoDecodeError, decode_clips
from .partial import Journal, compacted_through, open_rows, read_journals, verified_done, write_row
from .sources.base import VideoItem

#: Videos handed to the worker pool at a time.
SUBMIT_BLOCK = 1024


def default_workers() -> int:
    """Decoding processes when ``decode_workers`` is not set: one per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def row_shape(spec: ClipSpec) -> tuple[int, ...]:
    """One video's clips, ``(K, C, T, H, W)``: a row of the decoded part."""
    return (len(spec.positions), 3, spec.frames, *spec.size_hw)


def shard_rows(total: int, shard: int, num_shards: int) -> range:
    """The contiguous rows shard ``shard`` of ``num_shards`` decodes (the shards cover ``range(total)`` once)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"Expected argument `shard` to be in [0, {num_shards}) but got {shard}")
    return range(shard * total // num_shards, (shard + 1) * total // num_shards)


def _single_thread() -> None:
    torch.set_num_threads(1)


def _decode_row(job: tuple[str, int, str, ClipSpec, int]) -> tuple[int, int, str | None]:
    """Decode one video into its row of the rows file: ``(row, CRC-32, None)``, or ``(row, 0, reason)``."""
    rows, index, path, spec, row_bytes = job
    try:
        clips = decode_clips(path, spec.frames, spec.size_hw, spec.sampling, spec.gap, spec.positions)
    except VideoDecodeError as err:
        return index, 0, str(err)
    data = memoryview(clips.numpy()).cast("B")
    write_row(Path(rows), index, row_bytes, data)
    return index, zlib.crc32(data), None


def decode_rows(key: Path, items: Sequence[VideoItem], spec: ClipSpec, rows: range, workers: int, shard: int,
                 num_shards: int, desc: str) -> None:
    """Decode the rows of ``rows`` not yet done into the partial of ``key``, journaling each as it lands."""
    row_bytes = math.prod(row_shape(spec))
    if compacted_through(key) is not None:
        return  # compaction began: every row was decoded, and rows have moved
    done = verified_done(key, read_journals(key, len(items)), rows, row_bytes)
    todo = [i for i in rows if i not in done]
    if not todo:
        return
    path = open_rows(key, len(items), row_bytes)
    jobs = [(str(path), i, items[i].path, spec, row_bytes) for i in todo]
    journal = Journal(key, shard, num_shards, len(items))
    try:
        with tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, unit="video") as bar:
            if workers > 1 and len(jobs) > 1:
                # Frozen: the workers' garbage collector would otherwise touch every object the parent holds
                # (a VideoItem per video), copying those pages into each worker: memory growing with the part.
                gc.freeze()
                try:
                    # fork, like DataLoader workers, and like them one intra-op thread each (OpenMP after fork).
                    with ProcessPoolExecutor(workers, mp_context=get_context("fork"),
                                             initializer=_single_thread) as pool:
                        # Submitted a block at a time, so the parent holds a block's futures, not the part's.
                        for start in range(0, len(jobs), SUBMIT_BLOCK):
                            for result in pool.map(_decode_row, jobs[start:start + SUBMIT_BLOCK], chunksize=4):
                                journal.add(*result)
                                bar.update()
                finally:
                    gc.unfreeze()
            else:
                for job in jobs:
                    journal.add(*_decode_row(job))
                    bar.update()
    finally:
        journal.close()
