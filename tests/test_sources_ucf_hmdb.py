"""Dataset layout readers for UCF101 and HMDB51, on tiny fake layouts built here (empty files: nothing is decoded).

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

from tsgf_lightning.data.sources import HMDB51, NAMED_CLASS_LISTS, UCF101
from tsgf_lightning.data.sources.hmdb51 import film_of

from .source_utils import REFERENCE, SHARED, touch, write_crlf

REPO = Path(__file__).resolve().parent.parent


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
        UCF101(str(tmp_path), fold=2)
    with pytest.raises(ValueError, match="`fold`"):
        UCF101(str(tmp_path), fold=4)
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


def make_hmdb(root: Path, layout: dict[str, list[tuple[str, int]]], fold: int = 1, missing: tuple = ()) -> Path:
    """``layout``: action -> [(clip name, 0|1|2)]; fold files in the official format (trailing space)."""
    for action, clips in layout.items():
        for name, _ in clips:
            if name not in missing:
                touch(root / action / name)
        text = "".join(f"{name} {flag} \n" for name, flag in clips)
        (root / "testTrainMulti_7030_splits").mkdir(parents=True, exist_ok=True)
        (root / "testTrainMulti_7030_splits" / f"{action}_test_split{fold}.txt").write_text(text)
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
        HMDB51(str(tmp_path), fold=2)
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
