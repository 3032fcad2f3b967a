"""Integrity of what the DataModule reads: decode-cache files and the classes a part still covers.

A cache file carries its integrity record in its name (``{key}.{size}.crc32-{crc}.pt``, see
:mod:`~tsgf_lightning.data.cache`); :func:`cache_problem` says what is wrong with one. Saves write a
``.NAME.PID@HOST.tmp`` temporary first; :func:`remove_stale_temps` deletes those of killed writers
and :func:`require_writable` proves, before a decode, that the save will be possible.
:func:`check_classes` refuses a training part that lost every clip of a class to unreadable videos.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

from ..atomic import host_name, unwritable
from .sources.base import VideoItem, preview

#: Bytes read per step when checksumming a cache: 1 MiB measured fastest here (benchmarks/results/cache_checksum.md).
CHECK_CHUNK = 1 << 20
_RECORD = re.compile(r"\.(?P<size>\d+)\.crc32-(?P<crc>[0-9a-f]{8})\.pt$")
_TEMP = re.compile(r"^\.(?P<name>.+\.pt)\.(?P<pid>\d+)(?:@(?P<host>[^/]*))?\.tmp$")


def alive(pid: int) -> bool:
    """Whether a process of this host has ``pid`` (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporaries of killed cache saves in ``folder``; return what was deleted.

    Only ``.NAME.pt.PID[@HOST].tmp`` files whose writer is not alive: written on this host (or
    without a host) by a pid that no longer exists. A concurrent decoder's temporary, here or on
    another machine sharing the folder, is never touched, nor is a partial decode (:mod:`.partial`): it is
    resumed, whoever left it.
    """
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    host, removed = host_name(), []
    for path in entries:
        m = _TEMP.match(path.name)
        if m is None or m["host"] not in (None, host) or alive(int(m["pid"])):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def require_writable(path: Path) -> None:
    """Raise before decoding if the decoded part could not be saved as ``path``.

    Probed by writing a temporary (:func:`~tsgf_lightning.atomic.unwritable`), so the answer is the
    one the save would get; the folder is then created if missing.
    """
    folder = path.parent
    why = unwritable(folder)
    if why is not None:
        raise OSError(f"cache directory {folder} (config key `data.cache_dir`) is not writable: {why}. Nothing "
                      "was decoded; point `data.cache_dir` at a writable folder.")
    folder.mkdir(parents=True, exist_ok=True)


def file_crc32(path: Path, chunk: int = CHECK_CHUNK) -> int:
    """CRC-32 of a file, streamed through one ``chunk``-byte buffer (the file is never held in memory)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


def has_record(path: Path) -> bool:
    return _RECORD.search(path.name) is not None


def recorded_name(path: Path, size: int, crc: int) -> Path:
    """``{key}.{size}.crc32-{crc}.pt``: the stored name of the cache keyed ``path``."""
    return path.with_name(f"{path.stem}.{size}.crc32-{crc:08x}.pt")


def stored_caches(path: Path) -> list[Path]:
    """The files stored for the cache keyed ``path`` (newest first): recorded ones and a record-less ``path``."""
    prefix = path.stem + "."
    try:
        found = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".pt")]
    except OSError:
        return []
    stamped = []
    for p in found:
        try:
            stamped.append((p.stat().st_mtime_ns, p))
        except OSError:
            pass
    return [p for _, p in sorted(stamped, reverse=True)]


def cache_problem(path: Path) -> str | None:
    """What is wrong with a stored cache: None if its size and CRC-32 match the record in its name."""
    m = _RECORD.search(path.name)
    if m is None:
        return "it has no size/checksum record in its name (written by an older version, or renamed)"
    size, crc = int(m["size"]), int(m["crc"], 16)
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"it is {actual} bytes but was written with {size} (truncated or appended to)"
        got = file_crc32(path)
    except OSError as err:
        return f"it cannot be read: {err}"
    if got != crc:
        return f"its CRC-32 is {got:08x} but was written as {crc:08x} (bytes changed on disk)"
    return None


def check_classes(part: str, labels: Sequence[int], skipped: Sequence[str], items: Sequence[VideoItem],
                  class_names: Sequence[str]) -> None:
    """Refuse a training part (``fit``) with a class that has no clip left; warn for the test part.

    A class whose training videos are all unreadable (skipped) would still be a class of the
    teacher, trained to never predict it, and synthesis would find nothing to start from. The
    validation carve-out may lack a class (a few groups); the test part only warns, since its
    accuracy simply leaves the class out.

    Raises:
        RuntimeError: ``part == "fit"`` and some class has no clip; names each such class and its
            unreadable files.
    """
    present = {int(label) for label in labels}
    missing = [c for c in range(len(class_names)) if c not in present]
    if not missing or part == "val":
        return
    unreadable = set(skipped)
    lost = []
    for c in missing:
        files = [item.path for item in items if item.label == c and item.path in unreadable]
        lost.append(f"{class_names[c]!r} (all {len(files)} of its videos are unreadable: {preview(files)})" if files
                    else f"{class_names[c]!r} (no video in the part)")
    where = f"{len(missing)} of {len(class_names)} classes have none: {'; '.join(lost)}"
    if part == "fit":
        raise RuntimeError(f"Expected every class to have a training clip in part 'fit' but {where}. Replace or "
                           f"remove the unreadable videos, or leave the class out of the dataset (the source's "
                           f"`classes`, or its folder).")
    warnings.warn(f"Expected every class to have a clip in part {part!r} but {where}; its accuracy leaves them "
                  f"out", stacklevel=3)
