"""Dataset layout readers for Kinetics, Something-Something V2 and plain folders, and the validation
carve-out, on tiny fake layouts built here (empty files: nothing is decoded)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tsgf_lightning.data.sources import Kinetics, SomethingSomethingV2, VideoFolder, VideoItem, validation_split

from .source_utils import touch

# --------------------------------------------------------------------------------------- Kinetics

K400_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def k400_row(label: str, yid: str, start: int, split: str) -> str:
    quoted = f'"{label}"' if "," in label else label
    return f"{quoted},{yid},{start},{start + 10},{split},0\n"


def make_kinetics(root: Path, val_name: str = "validate.csv") -> Path:
    """Two classes (one label with a comma); train in class folders, val flat; one dead train link."""
    labels = ["abseiling", "passing American football (in game), x"]
    train = [(labels[0], "aaaaaaaaaaa", 0), (labels[0], "a-b_c-d_e-f", 12), (labels[1], "bbbbbbbbbbb", 5),
             (labels[1], "deadlink000", 7)]
    val = [(labels[0], "ccccccccccc", 3), (labels[1], "ddddddddddd", 1)]
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "train.csv").write_text(K400_HEADER + "".join(k400_row(*r, "train") for r in train))
    (ann / val_name).write_text(K400_HEADER + "".join(k400_row(*r, "val") for r in val))
    for label, yid, start in train[:3]:
        touch(root / "train" / label.replace(" ", "_") / f"{yid}_{start:06d}_{start + 10:06d}.mp4")
    touch(root / "val" / "ccccccccccc_000003_000013.mp4")
    touch(root / "val" / "ddddddddddd.mkv")  # named by the YouTube id alone
    return root


def test_kinetics_from_annotations(tmp_path):
    make_kinetics(tmp_path)
    source = Kinetics(str(tmp_path), annotations=str(tmp_path / "annotations"))
    assert source.class_names == ["abseiling", "passing American football (in game), x"]
    with pytest.warns(UserWarning, match=r"1 of 4 videos.*'deadlink000_000007_000017'") as record:
        train = source.items("train")
    assert len(record) == 1
    assert [(i.label, i.group) for i in train] == [(0, "a-b_c-d_e-f"), (0, "aaaaaaaaaaa"), (1, "bbbbbbbbbbb")]
    test = source.items("test")
    assert [(Path(i.path).name, i.label) for i in test] == [("ccccccccccc_000003_000013.mp4", 0),
                                                            ("ddddddddddd.mkv", 1)]
    sub = Kinetics(str(tmp_path), annotations=str(tmp_path / "annotations"), classes=["abseiling"])
    assert [i.group for i in sub.items("train")] == ["a-b_c-d_e-f", "aaaaaaaaaaa"]  # no warning needed
    json.dumps(source.cache_key())


def test_kinetics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Kinetics(str(tmp_path / "nowhere"))
    make_kinetics(tmp_path / "k", val_name="val.csv")
    ann = tmp_path / "k" / "annotations"
    assert Kinetics(str(tmp_path / "k"), annotations=str(ann)).items("test")  # val.csv is accepted too
    (ann / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match="validate.csv or val.csv"):
        Kinetics(str(tmp_path / "k"), annotations=str(ann))
    with pytest.raises(FileNotFoundError, match="train.csv"):
        Kinetics(str(tmp_path / "k"), annotations=str(tmp_path / "k" / "val"))
    with pytest.raises(ValueError, match="'rock climbing'"):
        make_kinetics(tmp_path / "c")
        Kinetics(str(tmp_path / "c"), annotations=str(tmp_path / "c" / "annotations"), classes=["rock climbing"])
    with (tmp_path / "c" / "annotations" / "validate.csv").open("a") as f:
        f.write(k400_row("yoga", "eeeeeeeeeee", 0, "val"))
    with pytest.raises(ValueError, match="1 labels not in train.csv: 'yoga'"):
        Kinetics(str(tmp_path / "c"), annotations=str(tmp_path / "c" / "annotations")).items("test")
    # A class whose every video is gone is an error, not a silent 1-class dataset.
    make_kinetics(tmp_path / "g")
    for path in (tmp_path / "g" / "train").rglob("bbbbbbbbbbb*"):
        path.unlink()
    source = Kinetics(str(tmp_path / "g"), annotations=str(tmp_path / "g" / "annotations"))
    with pytest.warns(UserWarning, match="2 of 4"), pytest.raises(ValueError, match="no video in the 'train'"):
        source.items("train")


def test_kinetics_folder_fallback(tmp_path):
    for split, yid in (("train", "x1"), ("train", "x2"), ("val", "x3")):
        for cls in ("b class", "a class"):
            touch(tmp_path / split / cls / f"{yid}_000001_000011.mp4")
    source = Kinetics(str(tmp_path))
    assert source.class_names == ["a class", "b class"]
    assert [(i.label, i.group) for i in source.items("train")] == [(0, "x1"), (0, "x2"), (1, "x1"), (1, "x2")]
    touch(tmp_path / "val" / "c class" / "x4.mp4")
    with pytest.raises(ValueError, match="only in test: 'c class'"):
        Kinetics(str(tmp_path))


# ---------------------------------------------------------------------------- Something-Something V2

def make_ssv2(root: Path, prefix: str = "labels/", missing: tuple = ()) -> Path:
    # Index order differs from alphabetical order: classes must follow the index.
    labels = {"Pushing something from left to right": "2", "Holding something": "0",
              "Putting something on something": "1"}
    train = [{"id": "11", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
             {"id": "7", "label": "pushing pen", "template": "Pushing [something] from left to right",
              "placeholders": ["pen"]},
             {"id": "30", "label": "putting a on b", "template": "Putting [something] on [something]",
              "placeholders": ["a", "b"]}]
    val = [{**train[0], "id": "100"}, {**train[1], "id": "101"}, {**train[2], "id": "102"}]
    for name, content in (("labels.json", labels), ("train.json", train), ("validation.json", val)):
        path = root / (prefix + name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    for record in train + val:
        if record["id"] not in missing:
            touch(root / "20bn-something-something-v2" / f"{record['id']}.webm")
    return root


def test_ssv2_reads_official_json(tmp_path):
    make_ssv2(tmp_path)
    source = SomethingSomethingV2(str(tmp_path))
    assert source.class_names == ["Holding something", "Putting something on something",
                                  "Pushing something from left to right"]
    assert [(Path(i.path).name, i.label, i.group) for i in source.items("train")] == [
        ("11.webm", 0, "11"), ("30.webm", 1, "30"), ("7.webm", 2, "7")]
    assert len(source.items("test")) == 3
    make_ssv2(tmp_path / "flat", prefix="something-something-v2-")
    assert SomethingSomethingV2(str(tmp_path / "flat")).num_classes == 3


def test_ssv2_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.json"):
        SomethingSomethingV2(str(tmp_path))
    make_ssv2(tmp_path, missing=("101",))
    with pytest.raises(FileNotFoundError, match="other.json"):
        SomethingSomethingV2(str(tmp_path), test=str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="`extension`"):
        SomethingSomethingV2(str(tmp_path), extension="webm")
    with pytest.raises(ValueError, match="'101.webm'"):
        SomethingSomethingV2(str(tmp_path)).items("test")
    records = json.loads((tmp_path / "labels" / "train.json").read_text())
    records.append({"id": "5", "label": "x", "template": "Spinning [something]", "placeholders": ["x"]})
    (tmp_path / "labels" / "train.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="'Spinning something'"):
        SomethingSomethingV2(str(tmp_path)).items("train")


# ------------------------------------------------------------------------------------ VideoFolder

def test_video_folder_split_per_class(tmp_path):
    sizes = {"cats": 10, "dogs": 5, "eels": 2, "owls": 1}
    for cls, n in sizes.items():
        for i in range(n):
            touch(tmp_path / cls / f"{cls}{i}.MP4")
    touch(tmp_path / "cats" / "notes.txt")  # not a video
    source = VideoFolder(str(tmp_path), test_fraction=0.3, seed=1)
    assert source.class_names == ["cats", "dogs", "eels", "owls"]
    train, test = source.items("train"), source.items("test")
    # round(0.3 n) clipped to [1, n-1]: 10 -> 3, 5 -> 2 (round half to even of 1.5), 2 -> 1, 1 -> 0.
    assert Counter(source.class_names[i.label] for i in test) == {"cats": 3, "dogs": 2, "eels": 1}
    assert Counter(source.class_names[i.label] for i in train) == {"cats": 7, "dogs": 3, "eels": 1, "owls": 1}
    assert not {i.path for i in train} & {i.path for i in test}
    assert all(i.group == Path(i.path).stem for i in train + test)
    assert VideoFolder(str(tmp_path), test_fraction=0.3, seed=1).items("test") == test
    seeds = {tuple(i.path for i in VideoFolder(str(tmp_path), 0.3, seed=s).items("test")) for s in range(5)}
    assert len(seeds) > 1  # the seed matters


def test_video_folder_presplit_and_errors(tmp_path):
    for split in ("train", "test"):
        for cls in ("b", "a"):
            touch(tmp_path / split / cls / f"{split}_{cls}.avi")
    source = VideoFolder(str(tmp_path))
    assert source.class_names == ["a", "b"]
    assert [(Path(i.path).name, i.label) for i in source.items("test")] == [("test_a.avi", 0), ("test_b.avi", 1)]
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match="only in train: 'c'|only in test: 'c'"):
        VideoFolder(str(tmp_path))
    with pytest.raises(ValueError, match="'test' folder but no 'train'"):
        touch(tmp_path / "lone" / "test" / "a" / "x.avi")
        VideoFolder(str(tmp_path / "lone"))
    with pytest.raises(ValueError, match="`test_fraction`"):
        VideoFolder(str(tmp_path), test_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolder(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="'train' split is empty"):
        VideoFolder(str(tmp_path / "empty")).items("train")


# ------------------------------------------------------------------------------- validation_split

def grouped_items(groups_per_class: dict[int, int], clips: int = 3) -> list[VideoItem]:
    return [VideoItem(f"/v/{label}/{g}_{c}.avi", label, f"c{label}_g{g}")
            for label, n in groups_per_class.items() for g in range(n) for c in range(clips)]


def test_validation_split_by_group_and_class():
    items = grouped_items({0: 25, 1: 4, 2: 2, 3: 1})
    train, val = validation_split(items, 0.2, seed=0)
    assert sorted(train + val, key=lambda i: i.path) == sorted(items, key=lambda i: i.path)
    assert not set(train) & set(val)
    assert not {i.group for i in train} & {i.group for i in val}
    assert [i for i in items if i in set(train)] == train  # input order kept
    val_groups = Counter(label for label, _ in {(i.label, i.group) for i in val})
    # round(0.2 n) clipped to [1, n-1]: 25 -> 5, 4 -> 1, 2 -> 1 (clip), 1 -> 0 (train keeps it).
    assert val_groups == {0: 5, 1: 1, 2: 1}
    assert validation_split(items, 0.2, seed=0) == (train, val)
    assert len({tuple(i.group for i in validation_split(items, 0.2, seed=s)[1]) for s in range(5)}) > 1


def test_validation_split_groups_shared_across_classes():
    # An HMDB51-like film with clips of several actions stays on one side in every class.
    items = [VideoItem(f"/v/{label}/{film}.avi", label, film)
             for label in range(3) for film in ("film0", "film1", "film2", "film3", f"own{label}")]
    for seed in range(10):
        train, val = validation_split(items, 0.4, seed)
        assert not {i.group for i in train} & {i.group for i in val}
        for label in range(3):
            assert any(i.label == label for i in train) and any(i.label == label for i in val)


def test_validation_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`fraction`"):
        validation_split(grouped_items({0: 3}), 0.0, 0)
    with pytest.raises(ValueError, match="`items`"):
        validation_split([], 0.2, 0)
