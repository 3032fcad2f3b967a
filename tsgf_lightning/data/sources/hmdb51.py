"""HMDB51 (Kuehne et al. 2011) with its three official 70/30 folds."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import Split, VideoItem, VideoSource, check_missing, require_dir, resolve_root
from .classes import select_classes

# Clip names end in meta tags: body part, camera motion, people, viewpoint, quality, clip counter,
# e.g. "April_09_brush_hair_u_nm_np1_ba_goo_0"; what precedes "_<action>" is the source film.
_META = re.compile(r"_[a-z]+_(?:cm|nm)_np\d+_(?:ba|fr|le|ri)_(?:goo|med|bad)_\d+$")


class HMDB51(VideoSource):
    """HMDB51 with one of its three official folds (each fold is one train/test split).

    Layout::

        root/<action>/<clip>.avi
        split_dir/<action>_test_split<N>.txt      "<clip>.avi 1" (1 train, 2 test, 0 unused)

    Each fold puts 70 clips per class in train and 30 in test and leaves the rest unused.
    ``unused_to_train=True`` adds the unused clips to train, as the published MiniUCF/HMDB51 code
    does (fold 1: 5236 train / 1530 test); ``False`` gives the 70/30 protocol (3570 / 1530).
    :attr:`VideoItem.group` is the source film, shared across actions (a film can hold clips of
    several classes), so a validation carve-out keeps whole films on one side.

    Args:
        root: folder of per-action video folders.
        split_dir: folder of split files; default ``root/testTrainMulti_7030_splits``.
        fold: which official division (``<action>_test_split<N>.txt``): 1, 2 or 3.
        unused_to_train: put the clips a fold marks 0 (unused) into train instead of dropping them.
        classes: ``None`` for all 51 actions; a list of action names; or a path to a text file with
            one action per line. Classes are the sorted action names (re-indexed within a subset).
    """

    def __init__(self, root: str, split_dir: str | None = None, fold: int = 1, unused_to_train: bool = True,
                 classes: list[str] | str | None = None) -> None:
        super().__init__()
        if fold not in (1, 2, 3):
            raise ValueError(f"Expected argument `fold` to be 1, 2 or 3 but got {fold!r}")
        self.root = resolve_root(root, "HMDB51")
        folder = self.root / "testTrainMulti_7030_splits" if split_dir is None else Path(split_dir).expanduser()
        self.split_dir = require_dir(folder.resolve(), "HMDB51 split folder")
        self.fold = fold
        self.unused_to_train = unused_to_train
        suffix = f"_test_split{fold}.txt"
        actions = sorted(p.name[: -len(suffix)] for p in self.split_dir.glob(f"*{suffix}"))
        if not actions:
            raise FileNotFoundError(f"HMDB51 split files not found: no *{suffix} in {self.split_dir}")
        self.class_names = select_classes(classes, actions)

    def _list(self, split: Split) -> list[VideoItem]:
        files = [self.split_dir / f"{action}_test_split{self.fold}.txt" for action in self.class_names]
        for split_file in files:
            check_split_file(split_file)
        kinds = ["test"] if split == "test" else ["train", "unused"] if self.unused_to_train else ["train"]
        label_of = {action: i for i, action in enumerate(self.class_names)}
        on_disk: dict[str, set[str]] = {}
        items: list[VideoItem] = []
        missing: list[str] = []
        for kind in kinds:
            for rel, meta in _pytorchvideo_entries(files, kind):
                action, name = meta["label"], Path(rel).name
                if action not in on_disk:
                    folder = self.root / action
                    on_disk[action] = set(os.listdir(folder)) if folder.is_dir() else set()
                if name not in on_disk[action]:
                    missing.append(f"{action}/{name}")
                items.append(VideoItem(str(self.root / rel), label_of[action], film_of(Path(name).stem, action)))
        check_missing(sorted(missing), len(items), f"the HMDB51 fold-{self.fold} files")
        return items

    def cache_key(self) -> dict:
        return {"kind": "hmdb51", "root": str(self.root), "split_dir": str(self.split_dir), "fold": self.fold,
                "unused_to_train": self.unused_to_train, "classes": list(self.class_names)}


def film_of(stem: str, action: str) -> str:
    """Source-film prefix of an HMDB51 clip name (the clip stem itself if it does not parse)."""
    match = _META.search(stem)
    head = stem[: match.start()] if match else stem
    tail = f"_{action}"
    return head[: -len(tail)] if head.endswith(tail) and len(head) > len(tail) else head


def check_split_file(path: Path) -> None:
    """Every line of a fold file must read ``<clip>.avi <0|1|2>``: an error naming the file and line otherwise.

    pytorchvideo's parser skips a line with another flag without a word and fails on a blank line with a bare
    IndexError, so the file is checked here first (a second read of a few kB per class); a blank line is an
    error here too (the official files have none).
    """
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{number}: expected '<clip>.avi <0|1|2>' but got {line!r}")


def _pytorchvideo_entries(files: list[Path], kind: str) -> list[tuple[str, dict]]:
    """``(action/clip.avi, {"label": action, ...})`` of the ``kind`` lines (train, test or unused) of ``files``.

    pytorchvideo asserts that a kind has at least one line; an empty one is an empty list here, so that an
    empty split is reported by :func:`~.base.check_split` in the words every reader uses. Imported here:
    ``pytorchvideo.data`` loads all of its datasets, about 2 s that a command not reading HMDB51 should not pay.
    """
    from pytorchvideo.data.hmdb51 import Hmdb51LabeledVideoPaths

    try:
        parsed = Hmdb51LabeledVideoPaths.from_csvs(files, kind)
    except AssertionError:
        return []
    return [parsed[i] for i in range(len(parsed))]
