"""UCF101 (Soomro, Zamir, Shah 2012) in its official layout, and MiniUCF as a class subset of it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import SPLITS, Split, VideoItem, VideoSource, check_missing, preview, require_file, resolve_root
from .classes import select_classes

_GROUP = re.compile(r"_g(\d+)_c\d+$")


class UCF101(VideoSource):
    """UCF101 with one of its three official train/test folds (each fold is one train/test split).

    Layout (as distributed)::

        root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
        root/ucfTrainTestlist/classInd.txt        "1 ApplyEyeMakeup" (1-based ids, CRLF)
        root/ucfTrainTestlist/trainlist0N.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
        root/ucfTrainTestlist/testlist0N.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

    ``root`` may also be the ``UCF-101`` video folder itself, with ``ucfTrainTestlist`` inside it or
    beside it. The class of a video is the folder part of its list line (the file name is not used:
    the official files spell ``HandstandPushups`` as ``v_HandStandPushups_...``). Groups (``gXX``)
    are clips cut from the same long video; the official splits keep each group on one side, and
    :attr:`VideoItem.group` is ``"<Class>_gXX"`` so validation carve-outs can do the same.

    MiniUCF is ``UCF101(root, fold=1, classes="miniucf")``: 50 classes, 4662 train / 1861 test.

    Args:
        root: dataset folder (see above).
        fold: which official train/test division (``trainlist0N.txt`` / ``testlist0N.txt``): 1, 2 or 3.
        classes: ``None`` for all 101 classes; a list of class names; a path to a text file with one
            class per line; or ``"miniucf"``. Labels are re-indexed ``0..K-1`` in the order of
            ``classInd.txt`` restricted to the subset.
    """

    def __init__(self, root: str, fold: int = 1, classes: list[str] | str | None = None) -> None:
        super().__init__()
        if fold not in (1, 2, 3):
            raise ValueError(f"Expected argument `fold` to be 1, 2 or 3 but got {fold!r}")
        base = resolve_root(root, "UCF101")
        self.video_dir, self.list_dir = _locate(base)
        self.root = base
        self.fold = fold
        class_ind = require_file(self.list_dir / "classInd.txt", "UCF101 class index")
        self._ids = _read_class_ind(class_ind)  # name -> 1-based id, in file order
        # Checked here, not on first use, so a wrong fold fails when the config is parsed.
        self._lists = {s: require_file(self.list_dir / f"{s}list0{fold}.txt", f"UCF101 {s} list") for s in SPLITS}
        self.class_names = select_classes(classes, list(self._ids))

    def _list(self, split: Split) -> list[VideoItem]:
        list_file = self._lists[split]
        name = list_file.name
        label_of = {cls: i for i, cls in enumerate(self.class_names)}
        unknown: list[str] = []
        items: list[VideoItem] = []
        listed_per_class: dict[str, list[str]] = {}
        for line in list_file.read_text().splitlines():
            fields = line.split()
            if not fields:
                continue
            rel = fields[0].replace("\\", "/")
            cls, _, file = rel.rpartition("/")
            if cls not in self._ids:
                unknown.append(cls or rel)
                continue
            if len(fields) > 1 and fields[1] != str(self._ids[cls]):
                raise ValueError(f"{name}: {rel!r} has class id {fields[1]!r} but classInd.txt gives "
                                 f"{cls!r} the id {self._ids[cls]}")
            if cls not in label_of:
                continue
            match = _GROUP.search(Path(file).stem)
            group = f"{cls}_g{match.group(1)}" if match else Path(file).stem
            listed_per_class.setdefault(cls, []).append(file)
            items.append(VideoItem(str(self.video_dir / cls / file), label_of[cls], group))
        if unknown:
            raise ValueError(f"{name} names {len(unknown)} videos of classes not in classInd.txt: "
                             f"{preview(sorted(set(unknown)))}")
        missing = []
        for cls, files in listed_per_class.items():
            folder = self.video_dir / cls
            on_disk = set(os.listdir(folder)) if folder.is_dir() else set()
            missing += [f"{cls}/{f}" for f in files if f not in on_disk]
        check_missing(sorted(missing), len(items), str(list_file))
        return items

    def cache_key(self) -> dict:
        return {"kind": "ucf101", "root": str(self.root), "fold": self.fold,
                "classes": list(self.class_names)}


def _locate(base: Path) -> tuple[Path, Path]:
    """(video folder, list folder) for either accepted layout; FileNotFoundError names what is missing."""
    if (base / "UCF-101").is_dir():
        video_dir = base / "UCF-101"
        candidates = [base / "ucfTrainTestlist", video_dir / "ucfTrainTestlist"]
    else:
        video_dir = base
        candidates = [base / "ucfTrainTestlist", base.parent / "ucfTrainTestlist"]
    for folder in candidates:
        if folder.is_dir():
            return video_dir, folder
    raise FileNotFoundError(f"UCF101 split folder not found: looked for {' and '.join(map(str, candidates))}")


def _read_class_ind(path: Path) -> dict[str, int]:
    """``classInd.txt`` as name -> 1-based id, in file order (``splitlines`` drops the CRs)."""
    ids: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{number}: expected '<id> <ClassName>' but got {line!r}")
        ids[fields[1]] = int(fields[0])
    if not ids:
        raise ValueError(f"{path} lists no classes")
    return ids
