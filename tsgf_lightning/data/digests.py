"""Content digests of video files, remembered by their stat so each file is read once.

The decode-cache key (:func:`~.cache.cache_file`) hashes what is *in* each video, not when it was
written: a dataset copied to a new disk, extracted again or restored from a backup gets new mtimes,
and with mtime keys every cache, teacher and table built on it would decode and train again. A
file's SHA-256 is remembered under ``path|size|mtime_ns|inode`` in a JSON memo (default
``~/.cache/tsgf_lightning/file-digests.json``; the ``TSGF_DIGESTS`` environment variable names
another), so a file whose stat is unchanged is never read again, and one whose stat changed is read
once: same bytes, same key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_json_atomic

#: How many files must be read before a progress bar is shown.
_SHOW_BAR_FROM = 200


def memo_path() -> Path:
    """Where digests are remembered: ``$TSGF_DIGESTS``, else ``~/.cache/tsgf_lightning/file-digests.json``."""
    env = os.environ.get("TSGF_DIGESTS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tsgf_lightning" / "file-digests.json"


def _stat_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


#: The memo as last parsed in this process, by its path, with the stat it was parsed at: a stage
#: computes three cache keys, and for a Kinetics-sized memo (~40 MB) each parse costs seconds.
_PARSED: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}


def _read_memo(path: Path) -> dict[str, str]:
    """The memo's entries (read only: callers build new dicts), parsed again only when its file changed."""
    try:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)  # written by atomic replace: a new inode each time
        if path.as_posix() in _PARSED and _PARSED[path.as_posix()][0] == stamp:
            return _PARSED[path.as_posix()][1]
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    memo = memo if isinstance(memo, dict) else {}
    _PARSED[path.as_posix()] = (stamp, memo)
    return memo


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (the one file hash the project computes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_digests(paths: Sequence[str]) -> list[str | None]:
    """The SHA-256 of each file (``None`` for one that cannot be read), reusing remembered ones.

    New digests are added to the memo (re-read just before the write, so concurrent runs lose at most
    each other's latest entries, which costs a re-read, never a wrong key). An unwritable memo only
    means the files are read again next time.
    """
    where = memo_path()
    memo = _read_memo(where)
    keys = [_stat_key(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k is not None and k not in memo]
    fresh: dict[str, str] = {}
    for i in tqdm(todo, desc="hashing videos", unit="video", disable=len(todo) < _SHOW_BAR_FROM):
        try:
            fresh[keys[i]] = sha256_file(paths[i])
        except OSError:
            keys[i] = None
    if fresh:
        current = {p: k for p, k in zip(paths, keys) if k is not None}
        # Entries for these paths under an older stat are dead: drop them so the memo does not grow.
        kept = {k: v for k, v in _read_memo(where).items() if current.get(k.rsplit("|", 3)[0], k) == k}
        try:  # not remembered as parsed: another process may replace the file before we could stat ours
            write_json_atomic({**kept, **fresh}, where)
        except OSError:
            pass
    known = {**memo, **fresh}
    return [known[k] if k is not None else None for k in keys]
