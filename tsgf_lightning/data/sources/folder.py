"""Any folder-per-class video set, with its own train/test folders or a seeded per-class split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .base import VIDEO_EXTENSIONS, Split, VideoItem, VideoSource, preview, resolve_root


def list_class_dirs(directory: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``directory`` (one per class)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def list_videos(directory: Path, extensions: Sequence[str]) -> list[Path]:
    """Sorted video files directly inside ``directory`` (suffix matched case-insensitively)."""
    suffixes = tuple(ext.lower() for ext in extensions)
    return sorted(Path(e.path) for e in os.scandir(directory)
                  if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(suffixes))


def check_same_classes(train: Sequence[str], test: Sequence[str], where: Path) -> list[str]:
    """The sorted union of two class-folder lists; a class on one side only is an error naming it."""
    only_train = sorted(set(train) - set(test))
    only_test = sorted(set(test) - set(train))
    if only_train or only_test:
        parts = [f"only in train: {preview(only_train)}" if only_train else "",
                 f"only in test: {preview(only_test)}" if only_test else ""]
        raise ValueError(f"Train and test folders of {where} must hold the same classes; "
                         + "; ".join(p for p in parts if p))
    return sorted(set(train))


class VideoFolder(VideoSource):
    """Videos in one folder per class, e.g. a custom dataset.

    Two layouts::

        root/train/<class>/<video>, root/test/<class>/<video>    the given split is used
        root/<class>/<video>                                      split here, per class

    In the second layout ``test_fraction`` of each class (rounded, at least one video on each side
    when the class has two or more) goes to test, chosen by ``torch.randperm`` with a generator
    seeded by ``seed``; the classes draw in sorted order from that one generator. A class with a
    single video keeps it in train. Classes are the sorted folder names; each video is its own
    group (its file stem).

    Args:
        root: dataset folder.
        test_fraction: share of each class held out for test when the layout has no split, in (0, 1).
        seed: seed of the split.
        extensions: file suffixes counted as videos (case-insensitive).
    """

    def __init__(self, root: str, test_fraction: float = 0.2, seed: int = 0,
                 extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> None:
        super().__init__()
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"Expected argument `test_fraction` to be in (0, 1) but got {test_fraction}")
        if not extensions:
            raise ValueError(f"Expected argument `extensions` to list at least one suffix but got {extensions!r}")
        self.root = resolve_root(root, "video folder")
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.extensions = tuple(extensions)
        has = {s: (self.root / s).is_dir() for s in ("train", "test")}
        if has["train"] != has["test"]:
            lone = "train" if has["train"] else "test"
            raise ValueError(f"{self.root} has a {lone!r} folder but no {('test' if has['train'] else 'train')!r} "
                             "folder: give both (pre-split layout) or neither (class folders at the root)")
        self.presplit = has["train"]
        if self.presplit:
            self.class_names = check_same_classes(list_class_dirs(self.root / "train"),
                                                  list_class_dirs(self.root / "test"), self.root)
        else:
            self.class_names = list_class_dirs(self.root)
        if not self.class_names:
            raise ValueError(f"{self.root} holds no class folders")

    def _list(self, split: Split) -> list[VideoItem]:
        if self.presplit:
            return [VideoItem(str(p), label, p.stem) for label, name in enumerate(self.class_names)
                    for p in list_videos(self.root / split / name, self.extensions)]
        generator = torch.Generator().manual_seed(self.seed)
        items: list[VideoItem] = []
        for label, name in enumerate(self.class_names):
            videos = list_videos(self.root / name, self.extensions)
            n = len(videos)
            n_test = min(max(round(self.test_fraction * n), 1), n - 1) if n >= 2 else 0
            order = torch.randperm(n, generator=generator).tolist()
            chosen = order[:n_test] if split == "test" else order[n_test:]
            items += [VideoItem(str(videos[i]), label, videos[i].stem) for i in chosen]
        return items

    def _every_class(self, split: Split) -> bool:
        # A single-video class keeps its video in train, so its test side may be empty.
        return self.presplit or split == "train"

    def cache_key(self) -> dict:
        return {"kind": "folder", "root": str(self.root), "presplit": self.presplit,
                "test_fraction": None if self.presplit else self.test_fraction,
                "seed": None if self.presplit else self.seed, "extensions": list(self.extensions),
                "classes": list(self.class_names)}
