"""Class subsets: an explicit list, a text file with one class per line, or a named list.

Named lists ship inside the package (``tsgf_lightning/data/<name>_classes.txt``), which is their
single source of truth; ``data/miniucf_classes.txt`` at the repository root is a copy for readers
browsing the repo, and a test keeps the two identical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .base import preview, require_file

_PACKAGE_DATA = Path(__file__).resolve().parent.parent

#: Shortcut names accepted wherever a ``classes`` argument is: name -> class-list file.
NAMED_CLASS_LISTS: dict[str, Path] = {
    # The 50 UCF101 classes of MiniUCF (VDSD, CVPR'24), used with UCF101 split 1.
    "miniucf": _PACKAGE_DATA / "miniucf_classes.txt",
}


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a text file: one per line; blank lines and ``#`` comments are ignored.

    Raises:
        FileNotFoundError: if the file does not exist.
    """
    path = require_file(Path(path).expanduser(), "class list file")
    names = [line.strip() for line in path.read_text().splitlines()]
    return [name for name in names if name and not name.startswith("#")]


def select_classes(classes: Sequence[str] | str | None, available: Sequence[str]) -> list[str]:
    """The requested subset of ``available``, in the order of ``available``.

    Keeping the dataset's own order (not the request's) means a subset's labels do not depend on
    how the YAML happened to list it.

    Args:
        classes: ``None`` for all classes; a list of names; a key of :data:`NAMED_CLASS_LISTS`
            (e.g. ``"miniucf"``); or a path to a text file with one class per line.
        available: every class the dataset defines, in its canonical order.

    Raises:
        ValueError: if the subset is empty, repeats a name or names a class not in ``available``.
        FileNotFoundError: if ``classes`` is a path to a file that does not exist.
    """
    if classes is None:
        return list(available)
    if isinstance(classes, str):
        named = NAMED_CLASS_LISTS.get(classes.lower())
        requested = read_class_file(named if named is not None else classes)
    else:
        requested = [str(name) for name in classes]
    if not requested:
        raise ValueError(f"Expected argument `classes` to name at least one class but got {classes!r}")
    repeated = sorted(name for name, count in Counter(requested).items() if count > 1)
    if repeated:
        raise ValueError(f"Expected argument `classes` to list each class once but {preview(repeated)} repeat")
    known = set(available)
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ValueError(f"Expected argument `classes` to name classes of the dataset but got unknown "
                         f"{preview(unknown)}; available classes include {preview(list(available))}")
    wanted = set(requested)
    return [name for name in available if name in wanted]
