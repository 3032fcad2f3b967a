"""Dataset layout readers, on tiny fake layouts built here (empty files: nothing is decoded).

Reference checks against the real ucf101-mini9 layout and the published MiniUCF/HMDB51 splits run
only where /work/shared/datasets exists.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tsgf_lightning.data.sources import (
    HMDB51,
    NAMED_CLASS_LISTS,
    UCF101,
    Kinetics,
    SomethingSomethingV2,
    VideoFolder,
    VideoItem,
    validation_split,
)
from tsgf_lightning.data.sources.hmdb51 import film_of

SHARED = Path("/work/shared/datasets")
REFERENCE = SHARED / "reference-splits"
REPO = Path(__file__).resolve().parent.parent


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_crlf(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())


# ----------------------------------------------------------------------------------------- UCF101

def make_ucf(root: Path, classes: list[str], groups: int = 9, clips: int = 2, extra_train: list[str] = (),
             skip_files: list[str] = ()) -> Path:
    """Official layout: groups 1-7 in testlist01, the rest in trainlist01 (CRLF, 1-based ids)."""
    write_crlf(root / "ucfTrainTestlist" / "classInd.txt", [f"{i} {c}" for i, c in enumerate(classes, 1)])
    train, test = [], []
    for cid, cls in enumerate(classes, 1):
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                if rel not in skip_files:
                    touch(root / "UCF-101" / rel)
                (test.append(rel) if g <= 7 else train.append(f"{rel} {cid}"))
    write_crlf(root / "ucfTrainTestlist" / "trainlist01.txt", train + list(extra_train))
    write_crlf(root / "ucfTrainTestlist" / "testlist01.txt", test)
    return root


def test_ucf101_reads_official_layout(tmp_path):
    make_ucf(tmp_path, ["Zeta", "Alpha", "Mid"])  # classInd order, not alphabetical, defines labels
    source = UCF101(str(tmp_path))
    assert source.class_names == ["Zeta", "Alpha", "Mid"] and source.num_classes == 3
    train, test = source.items("train"), source.items("test")
    assert len(train) == 3 * 2 * 2 and len(test) == 3 * 7 * 2
    for item in train + test:
        cls = Path(item.path).parent.name
        assert Path(item.path).is_absolute() and Path(item.path).is_file()
        assert item.label == ["Zeta", "Alpha", "Mid"].index(cls)
        group_number = re.search(r"_g(\d+)_", item.path).group(1)
        assert item.group == f"{cls}_g{group_number}"
    assert [i.path for i in train] == sorted(i.path for i in train)
    assert {int(i.group[-2:]) for i in train} == {8, 9} and {int(i.group[-2:]) for i in test} == set(range(1, 8))
    assert UCF101(str(tmp_path / "UCF-101")).items("train") == train  # root may be the video folder
    json.dumps(source.cache_key())


def test_ucf101_subset_reindexes_in_classind_order(tmp_path):
    make_ucf(tmp_path, ["A", "B", "C", "D"])
    source = UCF101(str(tmp_path), classes=["D", "B"])
    assert source.class_names == ["B", "D"]
    labels = {Path(i.path).parent.name: i.label for i in source.items("test")}
    assert labels == {"B": 0, "D": 1}
    class_file = tmp_path / "subset.txt"
    class_file.write_text("# comment\nC\n\nA\n")
    assert UCF101(str(tmp_path), classes=str(class_file)).class_names == ["A", "C"]
    assert source.cache_key() != UCF101(str(tmp_path)).cache_key()


def test_ucf101_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        UCF101(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="ucfTrainTestlist"):
        UCF101(str(tmp_path))
    make_ucf(tmp_path, ["A", "B", "C"])
    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        UCF101(str(tmp_path), split=2)
    with pytest.raises(ValueError, match="`split`"):
        UCF101(str(tmp_path), split=4)
    with pytest.raises(ValueError, match=r"'Nope'.*available classes include 'A', 'B', 'C'"):
        UCF101(str(tmp_path), classes=["A", "Nope"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        UCF101(str(tmp_path), classes=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="`split`"):
        UCF101(str(tmp_path)).items("val")


def test_ucf101_unknown_class_missing_video_and_bad_id(tmp_path):
    extra = ["Ghost/v_Ghost_g08_c01.avi 4", "Ghost/v_Ghost_g09_c01.avi 4", "Phantom/v_Phantom_g08_c01.avi 5"]
    make_ucf(tmp_path / "a", ["A", "B"], extra_train=extra)
    with pytest.raises(ValueError, match=r"3 videos of classes not in classInd.*'Ghost', 'Phantom'"):
        UCF101(str(tmp_path / "a")).items("train")
    skip = [f"A/v_A_g0{g}_c01.avi" for g in range(1, 6)]
    make_ucf(tmp_path / "b", ["A", "B"], skip_files=skip)
    with pytest.raises(ValueError, match=r"5 of 28 videos.*'A/v_A_g01_c01.avi'.*\(and 2 more\)"):
        UCF101(str(tmp_path / "b")).items("test")
    assert len(UCF101(str(tmp_path / "b")).items("train")) == 8  # the other split is intact
    make_ucf(tmp_path / "c", ["A", "B"], extra_train=["B/v_B_g08_c01.avi 1"])
    with pytest.raises(ValueError, match="class id '1'"):
        UCF101(str(tmp_path / "c")).items("train")


def test_ucf101_empty_split_is_an_error(tmp_path):
    make_ucf(tmp_path, ["A", "B"], groups=7)  # every group is a test group: trainlist01 is empty
    with pytest.raises(ValueError, match="'train' split is empty"):
        UCF101(str(tmp_path)).items("train")


def test_miniucf_list_single_source_of_truth():
    packaged = NAMED_CLASS_LISTS["miniucf"]
    assert packaged == REPO / "tsgf_lightning" / "data" / "miniucf_classes.txt"
    names = packaged.read_text().split()
    assert len(names) == 50 == len(set(names))
    assert (REPO / "data" / "miniucf_classes.txt").read_text() == packaged.read_text()
    if (REFERENCE / "miniucf_classes.txt").exists():
        assert (REFERENCE / "miniucf_classes.txt").read_text().split() == names


@pytest.mark.skipif(not (SHARED / "ucf101-mini9").is_dir(), reason="ucf101-mini9 not available")
def test_reference_ucf101_mini9():
    source = UCF101(str(SHARED / "ucf101-mini9"))
    assert source.num_classes == 9
    train, test = source.items("train"), source.items("test")
    assert (len(train), len(test)) == (324, 126)
    assert set(Counter(i.label for i in train).values()) == {36}
    assert set(Counter(i.label for i in test).values()) == {14}
    assert not {i.group for i in train} & {i.group for i in test}


@pytest.mark.skipif(not (REFERENCE / "miniucf_splits1.csv").exists(), reason="reference split not available")
def test_reference_miniucf_split_reproduced(tmp_path):
    with open(REFERENCE / "miniucf_splits1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mini = sorted({r["label"] for r in rows})
    extra = [f"Invented{i:02d}" for i in range(51)]
    all_classes = sorted(mini + extra)  # alphabetical like the real classInd: MiniUCF ids are not 1..50
    ids = {c: i for i, c in enumerate(all_classes, 1)}
    names = [(r["label"], r["folder_name"]) for r in rows] + [(c, f"v_{c}_g{g:02d}_c01") for c in extra for g in (1, 8)]
    train, test = [], []
    for cls, stem in names:
        touch(tmp_path / "UCF-101" / cls / f"{stem}.avi")
        group = int(re.search(r"_g(\d+)_c\d+$", stem).group(1))  # the official rule: g01-g07 are test
        (test.append(f"{cls}/{stem}.avi") if group <= 7 else train.append(f"{cls}/{stem}.avi {ids[cls]}"))
    write_crlf(tmp_path / "ucfTrainTestlist" / "classInd.txt", [f"{ids[c]} {c}" for c in all_classes])
    write_crlf(tmp_path / "ucfTrainTestlist" / "trainlist01.txt", train)
    write_crlf(tmp_path / "ucfTrainTestlist" / "testlist01.txt", test)

    source = UCF101(str(tmp_path), classes="miniucf")
    assert source.class_names == mini
    expected = {s: {(r["folder_name"], r["label"]) for r in rows if r["split"] == s} for s in ("train", "test")}
    for split in ("train", "test"):
        got = {(Path(i.path).stem, source.class_names[i.label]) for i in source.items(split)}
        assert got == expected[split]
    assert (len(source.items("train")), len(source.items("test"))) == (4662, 1861)


# ----------------------------------------------------------------------------------------- HMDB51

def hmdb_name(film: str, action: str, n: int) -> str:
    return f"{film}_{action}_u_cm_np1_fr_goo_{n}.avi"


def make_hmdb(root: Path, layout: dict[str, list[tuple[str, int]]], split: int = 1, missing: tuple = ()) -> Path:
    """``layout``: action -> [(clip name, 0|1|2)]; split files in the official format (trailing space)."""
    for action, clips in layout.items():
        for name, _ in clips:
            if name not in missing:
                touch(root / action / name)
        text = "".join(f"{name} {flag} \n" for name, flag in clips)
        (root / "testTrainMulti_7030_splits").mkdir(parents=True, exist_ok=True)
        (root / "testTrainMulti_7030_splits" / f"{action}_test_split{split}.txt").write_text(text)
    return root


HMDB_LAYOUT = {
    "wave": [(hmdb_name("Film_A", "wave", 0), 1), (hmdb_name("Film_A", "wave", 1), 1),
             (hmdb_name("Film_B", "wave", 0), 2), (hmdb_name("Film_C", "wave", 0), 0)],
    "brush_hair": [(hmdb_name("Film_A", "brush_hair", 0), 1), (hmdb_name("Other", "brush_hair", 0), 2),
                   (hmdb_name("Extra", "brush_hair", 3), 0)],
}


def test_hmdb51_flags_and_class_order(tmp_path):
    make_hmdb(tmp_path, HMDB_LAYOUT)
    source = HMDB51(str(tmp_path))
    assert source.class_names == ["brush_hair", "wave"]
    train = {(Path(i.path).name, i.label, i.group) for i in source.items("train")}
    assert train == {(hmdb_name("Film_A", "wave", 0), 1, "Film_A"), (hmdb_name("Film_A", "wave", 1), 1, "Film_A"),
                     (hmdb_name("Film_C", "wave", 0), 1, "Film_C"),
                     (hmdb_name("Film_A", "brush_hair", 0), 0, "Film_A"),
                     (hmdb_name("Extra", "brush_hair", 3), 0, "Extra")}
    assert {Path(i.path).name for i in source.items("test")} == {hmdb_name("Film_B", "wave", 0),
                                                                  hmdb_name("Other", "brush_hair", 0)}
    moved = tmp_path / "elsewhere"
    (tmp_path / "testTrainMulti_7030_splits").rename(moved)
    source = HMDB51(str(tmp_path), split_dir=str(moved))
    strict = HMDB51(str(tmp_path), split_dir=str(moved), unused_to_train=False)
    assert len(strict.items("train")) == 3 and len(strict.items("test")) == 2
    assert strict.cache_key() != source.cache_key()
    assert HMDB51(str(tmp_path), split_dir=str(moved), classes=["wave"]).items("test")[0].label == 0


def test_hmdb51_film_prefix():
    assert film_of("April_09_brush_hair_u_nm_np1_ba_goo_0", "brush_hair") == "April_09"
    assert film_of("prelinger_LetsBeGo1953_wave_u_cm_np10_ba_med_2", "wave") == "prelinger_LetsBeGo1953"
    assert film_of("Return_of_the_King_7_shoot_bow_u_nm_np10_ba_med_2", "shoot_bow") == "Return_of_the_King_7"
    assert film_of("no_meta_tags_here", "wave") == "no_meta_tags_here"


def test_hmdb51_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HMDB51(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="testTrainMulti_7030_splits"):
        HMDB51(str(tmp_path))
    make_hmdb(tmp_path, HMDB_LAYOUT)
    with pytest.raises(FileNotFoundError, match=r"_test_split2\.txt"):
        HMDB51(str(tmp_path), split=2)
    with pytest.raises(ValueError, match="'jump'"):
        HMDB51(str(tmp_path), classes=["wave", "jump"])
    missing = (hmdb_name("Film_B", "wave", 0),)
    make_hmdb(tmp_path / "m", HMDB_LAYOUT, missing=missing)
    with pytest.raises(ValueError, match=re.escape(f"'wave/{missing[0]}'")):
        HMDB51(str(tmp_path / "m")).items("test")
    bad = {"wave": [(hmdb_name("F", "wave", 0), 3)]}
    make_hmdb(tmp_path / "b", bad)
    with pytest.raises(ValueError, match="<0|1|2>"):
        HMDB51(str(tmp_path / "b")).items("train")
    only_test = {"wave": [(hmdb_name("F", "wave", 0), 2)]}
    make_hmdb(tmp_path / "e", only_test)
    with pytest.raises(ValueError, match="'train' split is empty"):
        HMDB51(str(tmp_path / "e")).items("train")


@pytest.mark.skipif(not (REFERENCE / "hmdb51_splits1.csv").exists(), reason="reference split not available")
def test_reference_hmdb51_split_reproduced(tmp_path):
    with open(REFERENCE / "hmdb51_splits1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The CSV has no "unused" label: the published code already put split-1 unused clips in train.
    # Rebuild split files with 70 train clips per class marked 1 and the other train clips 0.
    layout: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for action in sorted({r["label"] for r in rows}):
        mine = sorted((r["folder_name"], r["split"]) for r in rows if r["label"] == action)
        kept = [name for name, s in mine if s == "train"][:70]
        layout[action] = [(f"{n}.avi", 2 if s == "test" else 1 if n in kept else 0) for n, s in mine]
    make_hmdb(tmp_path, layout)
    source = HMDB51(str(tmp_path), unused_to_train=True)
    assert source.num_classes == 51
    for split in ("train", "test"):
        got = {(Path(i.path).stem, source.class_names[i.label]) for i in source.items(split)}
        assert got == {(r["folder_name"], r["label"]) for r in rows if r["split"] == split}
    assert (len(source.items("train")), len(source.items("test"))) == (5236, 1530)
    assert len(HMDB51(str(tmp_path), unused_to_train=False).items("train")) == 51 * 70


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
