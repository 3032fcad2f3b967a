"""The contract between dataset layout readers and the DataModule.

A *source* knows which videos a dataset holds, their labels and the official train/test split; it
never decodes video. The DataModule asks a source for :class:`VideoItem` lists and hands them to the
decoder, keyed in the decoded-clip cache by :meth:`VideoSource.cache_key`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")

#: Container suffixes the readers recognise as videos (compared case-insensitively).
VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".mp4", ".mkv", ".webm", ".mov")


@dataclass(frozen=True)
class VideoItem:
    """One labelled video.

    Attributes:
        path: absolute path of the video file.
        label: 0-based class index into the source's ``class_names``.
        group: id of the source recording. Clips sharing a group must never be split between train
            and a validation carve-out (UCF101: ``"<Class>_gXX"``; HMDB51: the source-film prefix;
            Kinetics: the YouTube id; SSv2: the video id; a plain folder: the file stem).
    """

    path: str
    label: int
    group: str


class VideoSource(ABC):
    """A dataset layout: class names, and the sorted items of each official split.

    ``class_names`` is set in ``__init__`` from index files or class folders only (no walk over the
    videos), so a CLI can link ``num_classes`` before any data is touched. :meth:`items` lists and
    checks the videos on first use and caches the result.
    """

    class_names: list[str]

    def __init__(self) -> None:
        self._items: dict[str, list[VideoItem]] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``; labels are ``0 .. K-1``."""
        return len(self.class_names)

    def items(self, split: Split) -> list[VideoItem]:
        """The videos of ``split``, sorted by path (so the order is independent of the filesystem).

        Raises:
            ValueError: if ``split`` is not ``"train"``/``"test"``, if the split is empty, if a class
                has no video in it, or (reader-specific) if the index names videos not on disk.
        """
        if split not in SPLITS:
            raise ValueError(f"Expected argument `split` to be one of {SPLITS} but got {split!r}")
        if split not in self._items:
            listed = sorted(self._list(split), key=lambda item: item.path)
            check_split(listed, self.class_names if self._every_class(split) else [], split, type(self).__name__)
            self._items[split] = listed
        return list(self._items[split])

    def _every_class(self, split: Split) -> bool:
        """Whether every class must have a video in ``split`` (a reader may allow train-only classes)."""
        return True

    @abstractmethod
    def _list(self, split: Split) -> list[VideoItem]:
        """Read the index of ``split`` (any order); :meth:`items` sorts, checks and caches it."""

    @abstractmethod
    def cache_key(self) -> dict:
        """JSON-able identity: kind, resolved root, split id, class subset and options.

        Two sources with equal keys list the same items (given the same files on disk).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cache_key()})"


def preview(names: Sequence[str], k: int = 5) -> str:
    """``'a', 'b', 'c' (and 7 more)``: the first ``k`` names of a list for an error message."""
    shown = ", ".join(repr(n) for n in names[:k])
    more = len(names) - k
    return shown + (f" (and {more} more)" if more > 0 else "")


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def resolve_root(root: str, what: str) -> Path:
    """Absolute, symlink-free root directory (so cache keys do not depend on the working dir)."""
    path = Path(root).expanduser().resolve()
    return require_dir(path, f"{what} root")


def check_missing(missing: Sequence[str], total: int, where: str) -> None:
    """Raise ValueError naming the first missing videos and how many more there are."""
    if missing:
        raise ValueError(f"{len(missing)} of {total} videos listed in {where} are not on disk: "
                         f"{preview(missing, 3)}")


def check_split(items: Sequence[VideoItem], class_names: Sequence[str], split: str, source: str) -> None:
    """An empty split, or a class without videos in it, is an error rather than a silent surprise."""
    if not items:
        raise ValueError(f"{source}: the {split!r} split is empty")
    present = {item.label for item in items}
    absent = [name for label, name in enumerate(class_names) if label not in present]
    if absent:
        raise ValueError(f"{source}: {len(absent)} classes have no video in the {split!r} split: "
                         f"{preview(absent)}")
