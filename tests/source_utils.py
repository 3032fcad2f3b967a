"""Helpers of the dataset-layout tests: empty video files and CRLF index files (nothing is decoded)."""

from __future__ import annotations

from pathlib import Path

SHARED = Path("/work/shared/datasets")
REFERENCE = SHARED / "reference-splits"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_crlf(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())
