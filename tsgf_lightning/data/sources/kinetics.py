"""Kinetics-400 (Kay et al. 2017) from the official CSV annotations, or from class folders."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

from .base import VIDEO_EXTENSIONS, Split, VideoItem, VideoSource, preview, require_dir, require_file, resolve_root
from .classes import select_classes
from .folder import check_same_classes, list_class_dirs, list_videos

_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_CLIP_NAME = re.compile(r"^(?P<yid>.+)_\d{6}_\d{6}$")

# (label, youtube_id, clip stem "{youtube_id}_{start:06d}_{end:06d}")
Row = tuple[str, str, str]


class Kinetics(VideoSource):
    """Kinetics-400; the test split is the official validation set (the test labels were never public).

    With ``annotations`` (a folder holding ``train.csv`` and ``validate.csv`` or ``val.csv``, columns
    ``label,youtube_id,time_start,time_end,split[,is_cc]``), the classes are the sorted labels of
    ``train.csv`` and each row is looked up under ``root/train_dir`` or ``root/test_dir``, flat or in
    class sub-folders of any spelling, by the downloader's file name
    ``{youtube_id}_{start:06d}_{end:06d}.<ext>`` (or ``{youtube_id}.<ext>``). Some YouTube links
    are always dead: rows without a file are skipped with one warning that counts them; a class left
    with no video is an error.

    Without ``annotations``, ``root/train_dir/<class>/*`` and ``root/test_dir/<class>/*`` are listed
    as they are (classes: the sorted folder names, which must match on both sides).

    :attr:`VideoItem.group` is the YouTube id.

    Args:
        root: dataset folder.
        annotations: folder of the official CSV files, or ``None`` to use the class folders.
        train_dir: training videos, relative to ``root``.
        test_dir: validation videos (used as the test split), relative to ``root``.
        classes: ``None`` for all classes; a list of labels; or a path to a text file with one label
            per line. Labels keep the sorted order within a subset.
    """

    def __init__(self, root: str, annotations: str | None = None, train_dir: str = "train", test_dir: str = "val",
                 classes: list[str] | str | None = None) -> None:
        super().__init__()
        self.root = resolve_root(root, "Kinetics")
        self.dirs: dict[str, str] = {"train": train_dir, "test": test_dir}
        self.annotations = None if annotations is None else require_dir(
            Path(annotations).expanduser().resolve(), "Kinetics annotation folder")
        if self.annotations is None:
            train_classes = list_class_dirs(require_dir(self.root / train_dir, "Kinetics train folder"))
            test_classes = list_class_dirs(require_dir(self.root / test_dir, "Kinetics test folder"))
            available = check_same_classes(train_classes, test_classes, self.root)
            self._csv: dict[str, Path] = {}
        else:
            self._csv = {"train": require_file(self.annotations / "train.csv", "Kinetics train annotations"),
                         "test": _validation_csv(self.annotations)}
            self._rows = {"train": _read_csv(self._csv["train"])}
            available = sorted({label for label, _, _ in self._rows["train"]})
        if not available:
            raise ValueError(f"Kinetics at {self.root} defines no classes")
        self._available = set(available)
        self.class_names = select_classes(classes, available)

    def _list(self, split: Split) -> list[VideoItem]:
        folder = self.root / self.dirs[split]
        if self.annotations is None:
            return [VideoItem(str(p), label, _youtube_id(p.stem)) for label, name in enumerate(self.class_names)
                    for p in list_videos(folder / name, VIDEO_EXTENSIONS)]
        rows = self._rows.get(split) or _read_csv(self._csv[split])
        unknown = sorted({label for label, _, _ in rows} - self._available)
        if unknown:
            raise ValueError(f"{self._csv[split]} has {len(unknown)} labels not in train.csv: {preview(unknown)}")
        files = _index_videos(require_dir(folder, f"Kinetics {split} folder"))
        label_of = {name: i for i, name in enumerate(self.class_names)}
        items: list[VideoItem] = []
        missing: list[str] = []
        for label, yid, stem in rows:
            if label not in label_of:
                continue
            path = files.get(stem) or files.get(yid)
            if path is None:
                missing.append(stem)
            else:
                items.append(VideoItem(path, label_of[label], yid))
        if missing:
            warnings.warn(f"Kinetics {split}: {len(missing)} of {len(missing) + len(items)} videos listed in "
                          f"{self._csv[split].name} are not in {folder} and are skipped: {preview(sorted(missing), 3)}",
                          stacklevel=3)
        return items

    def cache_key(self) -> dict:
        return {"kind": "kinetics", "root": str(self.root),
                "annotations": None if self.annotations is None else str(self.annotations),
                "train_dir": self.dirs["train"], "test_dir": self.dirs["test"], "classes": list(self.class_names)}


def _validation_csv(folder: Path) -> Path:
    for name in ("validate.csv", "val.csv"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"Kinetics validation annotations not found: no validate.csv or val.csv in {folder}")


def _read_csv(path: Path) -> list[Row]:
    """Rows of an official annotation file as (label, youtube_id, clip stem)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{path} lacks the columns {absent} (has {reader.fieldnames})")
        rows = []
        for record in reader:
            start, end = int(float(record["time_start"])), int(float(record["time_end"]))
            yid = record["youtube_id"]
            rows.append((record["label"], yid, f"{yid}_{start:06d}_{end:06d}"))
    return rows


def _index_videos(folder: Path) -> dict[str, str]:
    """Clip stem -> path of every video in ``folder`` or one level of sub-folders below it."""
    index: dict[str, str] = {}
    subfolders = [folder] + [folder / name for name in list_class_dirs(folder)]
    for sub in subfolders:
        for path in list_videos(sub, VIDEO_EXTENSIONS):
            index.setdefault(path.stem, str(path))
    return index


def _youtube_id(stem: str) -> str:
    match = _CLIP_NAME.match(stem)
    return match.group("yid") if match else stem
