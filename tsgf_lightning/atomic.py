"""Atomic writes, and whether a directory can be written at all.

A file is written to a temporary sibling and renamed over the target, so readers never see half a
file and the existence of a result means it is complete. The temporary is ``.NAME.PID@HOST.tmp``:
the host makes the pid meaningful in a directory shared by several machines, so the temporaries of
killed writers can be told from those of live ones (:func:`~tsgf_lightning.data.integrity.remove_stale_temps`).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


def host_name() -> str:
    """This machine's name, safe inside a file name."""
    return re.sub(r"[^\w.-]", "_", socket.gethostname())


def temp_sibling(path: Path) -> Path:
    """The temporary a write of ``path`` goes to before its rename: ``.NAME.PID@HOST.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}@{host_name()}.tmp")


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary)``, then rename the temporary over ``path`` (removed if ``write`` fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def unwritable(directory: str | Path) -> str | None:
    """Why files cannot be written in ``directory`` (created on demand), or None when they can.

    Probed by creating and removing a temporary in the nearest existing ancestor, not with
    ``os.access``: root passes ``os.access`` on any mode, and it cannot tell a read-only mount.
    Nothing is created but the probe.
    """
    p = Path(directory).absolute()
    existing = next(q for q in (p, *p.parents) if q.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    probe = temp_sibling(existing / ".write-probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        return f"{existing} is not writable ({err.strerror or err})"
    return None
