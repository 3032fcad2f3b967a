"""What the benchmark scripts share: writing a results page while keeping its hand-written notes."""

from __future__ import annotations

from pathlib import Path

NOTES_MARKER = "<!-- notes: kept across runs -->"


def write_report(path: str | Path, text: str) -> str:
    """Write ``text`` to ``path``, keeping whatever an earlier version held below :data:`NOTES_MARKER`."""
    out = Path(path)
    if out.exists() and NOTES_MARKER in out.read_text():  # keep the hand-written findings below the marker
        text += "\n" + NOTES_MARKER + out.read_text().split(NOTES_MARKER, 1)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
