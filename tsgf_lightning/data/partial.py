"""The resumable state of a part being decoded: a file of rows, journals of finished rows, a compaction log.

Beside the cache keyed ``{key}.pt`` (:func:`~.cache.cache_file`) a decode keeps, until the cache is published:

- ``.{key}.rows``: ``N`` rows of ``row_bytes`` (one video's ``K`` clips, ``uint8``), row ``i`` at byte
  ``i * row_bytes``. Created sparse at its full size, so decoders in any number of processes, or
  machines sharing the folder, write their rows in place without coordinating, and no process holds
  more than the clips it is decoding.
- ``.{key}.journal.{shard}of{n}.{pid}@{host}``: one per decoding process, append-only, never
  reopened by another. A record (:func:`encode_record`) says that row ``i`` was written, with the
  row's CRC-32, or that its video is unreadable, with the decoder's reason; it is written after the
  row, so a killed process leaves no record of a row it had not finished. Each record carries its
  own CRC-32: a torn or damaged record ends what is read of that journal and nothing after it is
  trusted. Resuming reads every journal of the key (any shard layout), and rows are checked against
  their recorded CRC before they are counted done (:func:`verified_done`), so a row lost with the
  page cache (a power cut: nothing here calls fsync) is decoded again.
- ``.{key}.compact``: progress of moving the kept rows down over the unreadable videos' rows, in
  place (:func:`compact`), so the finished tensor is contiguous without a second copy of the part.
- ``.{key}.lock``: held by the one process that compacts and publishes (:func:`take_lock`).
- ``.{key}.writers``: an advisory lock that processes writing rows hold shared and the publisher holds
  exclusive (:func:`writing`, :func:`no_writers`), so two processes that decode the same part at once
  (pipeline stages started together) never write a row into a file being compacted, published or
  removed; the later one then loads what the first published. A POSIX record lock (``lockf``), not
  ``flock``: it is the process's own, so the decode workers a process forks do not inherit it, and a
  killed process's lock goes with it even while orphaned workers live on.

The names derive from the key, which hashes every input of the clips: a changed dataset or
setting never resumes a wrong partial. None of them is a save temporary
(:func:`~.integrity.remove_stale_temps` leaves them alone); partials of killed writers are resumed,
not removed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import host_name
from .integrity import CHECK_CHUNK, alive

_HEAD = struct.Struct("<IIBH")  # row index, row CRC-32, 1 if unreadable, length of the reason
_TAIL = struct.Struct("<I")  # CRC-32 of head and reason
_MOVED = struct.Struct("<II")  # rows below this index are in place; CRC-32 of the first field
#: Most bytes one compaction step reads and writes (a step is also bounded by the rows it may move safely).
MOVE_BYTES = 64 << 20


def rows_file(key: Path) -> Path:
    return key.with_name(f".{key.stem}.rows")


def journal_file(key: Path, shard: int, num_shards: int) -> Path:
    """This process's journal (a new one per process: a journal is only ever appended to by its writer)."""
    return key.with_name(f".{key.stem}.journal.{shard}of{num_shards}.{os.getpid()}@{host_name()}")


def journals(key: Path) -> list[Path]:
    return sorted(key.parent.glob(f".{key.stem}.journal.*"))


def compact_file(key: Path) -> Path:
    return key.with_name(f".{key.stem}.compact")


def lock_file(key: Path) -> Path:
    return key.with_name(f".{key.stem}.lock")


def writers_file(key: Path) -> Path:
    return key.with_name(f".{key.stem}.writers")


def partial_files(key: Path) -> list[Path]:
    """Every file of the key's partial state that exists (the lock last: removing it ends a publish)."""
    return [p for p in (rows_file(key), *journals(key), compact_file(key), writers_file(key), lock_file(key))
            if p.exists()]


def remove_partial(key: Path) -> None:
    for path in partial_files(key):
        try:
            path.unlink()
        except FileNotFoundError:  # another finisher of the same key removed it first
            pass


def open_rows(key: Path, rows: int, row_bytes: int) -> Path:
    """Create the rows file at its full size (sparse), or keep the one there: concurrent openers agree."""
    path = rows_file(key)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != rows * row_bytes:
            os.ftruncate(fd, rows * row_bytes)
    finally:
        os.close(fd)
    return path


def write_row(path: Path, index: int, row_bytes: int, data: memoryview) -> None:
    """Write one row in place (``pwrite``: no other process's rows are touched)."""
    if data.nbytes != row_bytes:
        raise ValueError(f"Expected a row of {row_bytes} bytes but got {data.nbytes}")
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        while done < row_bytes:
            done += os.pwrite(fd, data[done:], index * row_bytes + done)
    finally:
        os.close(fd)


def read_row_crc(fd: int, index: int, row_bytes: int) -> int:
    crc, at, end = 0, index * row_bytes, (index + 1) * row_bytes
    while at < end:
        chunk = os.pread(fd, min(CHECK_CHUNK, end - at), at)
        if not chunk:
            return -1  # the file ends inside the row
        crc, at = zlib.crc32(chunk, crc), at + len(chunk)
    return crc


# -------------------------------------------------------------------------------------------- journals

def encode_record(index: int, crc: int, reason: str | None) -> bytes:
    text = (reason or "").encode()[:0xFFFF]
    head = _HEAD.pack(index, crc, reason is not None, len(text)) + text
    return head + _TAIL.pack(zlib.crc32(head))


def read_journal(path: Path, rows: int) -> tuple[dict[int, tuple[int, str | None]], int]:
    """The trusted records of one journal, ``{row: (crc, reason or None)}``, and the bytes they span.

    Reading stops at the first record that is cut short, fails its CRC-32 or names a row out of range.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return {}, 0
    found: dict[int, tuple[int, str | None]] = {}
    at = 0
    while at + _HEAD.size + _TAIL.size <= len(data):
        index, crc, bad, length = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if end + _TAIL.size > len(data) or _TAIL.unpack_from(data, end)[0] != zlib.crc32(data[at:end]):
            break
        if index >= rows or bad > 1:
            break
        found[index] = (crc, data[at + _HEAD.size:end].decode(errors="replace") if bad else None)
        at = end + _TAIL.size
    return found, at


def read_journals(key: Path, rows: int) -> dict[int, tuple[int, str | None]]:
    """The records of every journal of the key; a row written by any decoder counts as written."""
    merged: dict[int, tuple[int, str | None]] = {}
    for path in journals(key):
        for index, record in read_journal(path, rows)[0].items():
            if index not in merged or merged[index][1] is not None:
                merged[index] = record
    return merged


class Journal:
    """This process's journal: each record is one unbuffered append, in the kernel as soon as it returns."""

    def __init__(self, key: Path, shard: int, num_shards: int, rows: int):
        self.path = journal_file(key, shard, num_shards)
        if self.path.exists():  # a dead process of the same pid: keep only its trusted records
            os.truncate(self.path, read_journal(self.path, rows)[1])
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def add(self, index: int, crc: int, reason: str | None) -> None:
        os.write(self.fd, encode_record(index, crc, reason))

    def close(self) -> None:
        os.close(self.fd)


def verified_done(key: Path, records: dict[int, tuple[int, str | None]], wanted: Iterable[int],
                  row_bytes: int) -> dict[int, tuple[int, str | None]]:
    """The records among ``wanted`` rows whose row on disk still has its recorded CRC-32 (or that are unreadable)."""
    done: dict[int, tuple[int, str | None]] = {}
    path = rows_file(key)
    fd = os.open(path, os.O_RDONLY) if path.exists() else None
    try:
        for index in wanted:
            record = records.get(index)
            if record is not None and (record[1] is not None or
                                       (fd is not None and read_row_crc(fd, index, row_bytes) == record[0])):
                done[index] = record
    finally:
        if fd is not None:
            os.close(fd)
    return done


# ---------------------------------------------------------------------------------------- compaction

def compacted_through(key: Path) -> int | None:
    """How many leading rows hold their final content, from the last trusted compaction record (None: not begun)."""
    try:
        data = compact_file(key).read_bytes()
    except FileNotFoundError:
        return None
    through = None
    for at in range(0, len(data) - _MOVED.size + 1, _MOVED.size):
        value, crc = _MOVED.unpack_from(data, at)
        if crc != zlib.crc32(struct.pack("<I", value)):
            break
        through = value
    return through


def compact(key: Path, kept: list[int], records: dict[int, tuple[int, str | None]], row_bytes: int) -> None:
    """Move row ``kept[j]`` to row ``j`` for every ``j``, in place, resumable after a kill at any point.

    Rows move in increasing ``j`` in steps no longer than the gap between source and destination, and
    a record of how far it got is appended after each step; so a step never overwrites a row that a
    later step still reads, and redoing the step in flight after a kill reads intact sources. Each
    source is checked against its journal CRC before it moves.

    Raises:
        RuntimeError: a source row no longer has its recorded CRC-32 (the partial was damaged on disk).
    """
    start = compacted_through(key)
    j = next((j for j, src in enumerate(kept) if src != j), len(kept)) if start is None else start
    log = os.open(compact_file(key), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fd = os.open(rows_file(key), os.O_RDWR)
    try:
        os.write(log, _MOVED.pack(j, zlib.crc32(struct.pack("<I", j))))
        while j < len(kept):
            gap = kept[j] - j
            step = 1
            while (j + step < len(kept) and step < gap and (step + 1) * row_bytes <= MOVE_BYTES
                   and kept[j + step] - (j + step) == gap):
                step += 1
            data = os.pread(fd, step * row_bytes, kept[j] * row_bytes)
            for s in range(step):
                if zlib.crc32(data[s * row_bytes:(s + 1) * row_bytes]) != records[kept[j + s]][0]:
                    raise RuntimeError(f"row {kept[j + s]} of {rows_file(key)} changed on disk since it was decoded; "
                                       f"delete the files .{key.stem}.* to decode the part again")
            view, at = memoryview(data), 0
            while at < len(data):
                at += os.pwrite(fd, view[at:], j * row_bytes + at)
            j += step
            os.write(log, _MOVED.pack(j, zlib.crc32(struct.pack("<I", j))))
    finally:
        os.close(fd)
        os.close(log)


# ---------------------------------------------------------------------------------------------- lock

def take_lock(key: Path) -> bool:
    """Become the one process that compacts and publishes the part; False while another live one is.

    The lock holds ``pid@host``; a lock left by a dead process of this host is taken over. One left
    by a process of another host sharing the folder cannot be judged from here and must be removed
    by hand if that process died.
    """
    path = lock_file(key)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                pid, _, host = path.read_text().partition("@")
            except OSError:
                continue
            if host != host_name() or not pid.isdigit() or alive(int(pid)):
                return False
            path.unlink(missing_ok=True)
            continue
        os.write(fd, f"{os.getpid()}@{host_name()}".encode())
        os.close(fd)
        return True
    return False


def _locked(key: Path, how: int) -> int | None:
    """An fd of the key's writers file holding ``lockf(how)``; None if ``how`` is non-blocking and refused.

    (A process must not open the file elsewhere while it holds the lock: closing any of its fds of a file
    drops all of its POSIX locks on it.)

    The file may be removed (with the partial) by the process that held it exclusively: a lock taken on
    a file no longer at the path locks nothing another process can see, so it is taken again on the new one.
    """
    path = writers_file(key)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, how)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def writing(key: Path) -> Iterator[None]:
    """Hold the key's writers lock shared while rows are written (waits for a publish in progress)."""
    fd = _locked(key, fcntl.LOCK_SH)
    try:
        yield
    finally:
        os.close(fd)


@contextmanager
def no_writers(key: Path) -> Iterator[bool]:
    """Hold the key's writers lock exclusive, if no process of this machine is writing rows: yields whether."""
    fd = _locked(key, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)
