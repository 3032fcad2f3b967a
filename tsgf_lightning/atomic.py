"""Atomic writes: a temporary sibling (named with the writer's pid) renamed over the target.

Readers never see half a file, so the existence of a result means it is complete. A temporary left
by a killed writer is ``.NAME.PID.tmp`` beside the target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
