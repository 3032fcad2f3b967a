"""Something-Something V2 (Goyal et al. 2017) from the official JSON annotations."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import Split, VideoItem, VideoSource, check_missing, preview, require_dir, require_file, resolve_root

# File names of the official annotation archive, and where each is looked for when not given.
_DEFAULT_NAMES = {"labels": "labels.json", "train": "train.json", "test": "validation.json"}


class SomethingSomethingV2(VideoSource):
    """Something-Something V2, 174 classes; the test split is the official validation set.

    ``labels`` maps each template to its index (``{"Holding something": "53", ...}``); ``train`` and
    ``test`` list ``{"id", "label", "template", "placeholders"}`` records whose class is the template
    with its brackets removed (``"Holding [something]"`` -> ``"Holding something"``). Classes are
    ordered by index. Videos are ``root/video_dir/<id><extension>``; each video is its own group.

    When an annotation path is not given it is looked for as ``root/labels/<name>``, ``root/<name>``
    and ``root/something-something-v2-<name>``, with names ``labels.json``, ``train.json`` and
    ``validation.json``.

    Args:
        root: dataset folder.
        labels: path of ``labels.json``.
        train: path of ``train.json``.
        test: path of ``validation.json`` (the test labels were never published).
        video_dir: video folder, relative to ``root``.
        extension: video file suffix, with its dot.
    """

    def __init__(self, root: str, labels: str | None = None, train: str | None = None, test: str | None = None,
                 video_dir: str = "20bn-something-something-v2", extension: str = ".webm") -> None:
        super().__init__()
        if not extension.startswith("."):
            raise ValueError(f"Expected argument `extension` to start with '.' but got {extension!r}")
        self.root = resolve_root(root, "Something-Something V2")
        self.video_dir = video_dir
        self.extension = extension
        given = {"labels": labels, "train": train, "test": test}
        self.files = {key: _annotation(self.root, key, path) for key, path in given.items()}
        self.class_names = _read_labels(self.files["labels"])

    def _list(self, split: Split) -> list[VideoItem]:
        path = self.files[split]
        records = json.loads(path.read_text())
        label_of = {name: i for i, name in enumerate(self.class_names)}
        folder = require_dir(self.root / self.video_dir, "Something-Something V2 video folder")
        on_disk = set(os.listdir(folder))
        items: list[VideoItem] = []
        unknown: list[str] = []
        missing: list[str] = []
        for record in records:
            template = record["template"].replace("[", "").replace("]", "")
            if template not in label_of:
                unknown.append(template)
                continue
            name = f"{record['id']}{self.extension}"
            if name not in on_disk:
                missing.append(name)
            items.append(VideoItem(str(folder / name), label_of[template], str(record["id"])))
        if unknown:
            raise ValueError(f"{path} has {len(unknown)} videos whose template is not in {self.files['labels'].name}: "
                             f"{preview(sorted(set(unknown)), 3)}")
        check_missing(sorted(missing), len(items), str(path))
        return items

    def cache_key(self) -> dict:
        return {"kind": "ssv2", "root": str(self.root), **{k: str(v) for k, v in self.files.items()},
                "video_dir": self.video_dir, "extension": self.extension, "classes": list(self.class_names)}


def _annotation(root: Path, key: str, given: str | None) -> Path:
    """The annotation file for ``key``: the given path, or the first default location that exists."""
    what = f"Something-Something V2 {key} annotations"
    if given is not None:
        return require_file(Path(given).expanduser().resolve(), what)
    name = _DEFAULT_NAMES[key]
    candidates = [root / "labels" / name, root / name, root / f"something-something-v2-{name}"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{what} not found: looked for {', '.join(map(str, candidates))}")


def _read_labels(path: Path) -> list[str]:
    """Class names ordered by their index in ``labels.json``; indices must be 0..K-1."""
    mapping = json.loads(path.read_text())
    order = sorted(mapping, key=lambda name: int(mapping[name]))
    indices = [int(mapping[name]) for name in order]
    if indices != list(range(len(order))):
        raise ValueError(f"{path}: expected class indices 0..{len(order) - 1} but got "
                         f"{preview([str(i) for i in indices])}")
    return order
