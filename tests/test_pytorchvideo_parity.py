"""Our layout readers and decoder against ``pytorchvideo.data`` on the same fixtures.

Where the two agree on paths and labels (HMDB51's fold files) the reader uses pytorchvideo's parser and
these tests say so; where they disagree the reader keeps its own code, and the tests assert the exact
disagreement, so the README line that gives the reason stays true (``pytorchvideo.transforms`` does not
import beside torchvision >= 0.17 and is not used).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from pytorchvideo.data.encoded_video import EncodedVideo
from pytorchvideo.data.hmdb51 import Hmdb51LabeledVideoPaths
from pytorchvideo.data.labeled_video_paths import LabeledVideoPaths
from pytorchvideo.data.ssv2 import _read_video_paths_and_labels

from tsgf_lightning.data.decode import decode_clips, sample_indices
from tsgf_lightning.data.sources import HMDB51, UCF101, Kinetics, SomethingSomethingV2, VideoFolder

from .source_utils import touch
from .test_decode import random_frames
from .test_sources_other import make_kinetics, make_ssv2
from .test_sources_ucf_hmdb import HMDB_LAYOUT, hmdb_name, make_hmdb, make_ucf


def pv_pairs(parsed) -> list[tuple[str, object]]:
    """``(path, label)`` of a pytorchvideo paths object, sorted by path as our readers sort."""
    pairs = [parsed[i] for i in range(len(parsed))]
    return sorted((path, meta["label"] if isinstance(meta, dict) else meta) for path, meta in pairs)


def ours(source, split: str) -> list[tuple[str, int]]:
    return [(item.path, item.label) for item in source.items(split)]


# ------------------------------------------------------------------ folder per class: agree on plain layouts

def test_folder_layouts_agree_on_plain_mp4_avi(tmp_path):
    for cls, n in {"cats": 4, "dogs": 3}.items():
        for i in range(n):
            touch(tmp_path / "flat" / cls / f"{cls}{i}.MP4")
    touch(tmp_path / "flat" / "cats" / "notes.txt")
    flat = VideoFolder(str(tmp_path / "flat"), test_fraction=0.3)
    both = sorted(ours(flat, "train") + ours(flat, "test"))
    assert both == pv_pairs(LabeledVideoPaths.from_path(str(tmp_path / "flat")))
    for split in ("train", "test"):
        for cls in ("b", "a"):
            touch(tmp_path / "pre" / split / cls / f"{split}_{cls}.avi")
    pre = VideoFolder(str(tmp_path / "pre"))
    assert ours(pre, "test") == pv_pairs(LabeledVideoPaths.from_directory(str(tmp_path / "pre" / "test")))
    for split, yid in (("train", "x1"), ("train", "x2"), ("val", "x3")):
        for cls in ("b class", "a class"):
            touch(tmp_path / "k" / split / cls / f"{yid}_000001_000011.mp4")
    kinetics = Kinetics(str(tmp_path / "k"))
    assert ours(kinetics, "train") == pv_pairs(LabeledVideoPaths.from_directory(str(tmp_path / "k" / "train")))


def test_folder_layouts_disagree_on_other_containers_hidden_and_nested_entries(tmp_path):
    """pytorchvideo walks ("mp4", "avi") only, recursively, hidden entries included, and hidden folders are classes."""
    for name in ("a.mp4", "b.mkv", "c.webm", "d.mov", ".e.mp4", "deeper/f.mp4"):
        touch(tmp_path / "cls" / name)
    touch(tmp_path / "other" / "g.avi")
    ours_items = VideoFolder(str(tmp_path)).items("train") + VideoFolder(str(tmp_path)).items("test")
    assert sorted(Path(i.path).name for i in ours_items) == ["a.mp4", "b.mkv", "c.webm", "d.mov", "g.avi"]
    theirs = pv_pairs(LabeledVideoPaths.from_directory(str(tmp_path)))
    assert [(Path(p).relative_to(tmp_path).as_posix(), label) for p, label in theirs] == [
        ("cls/.e.mp4", 0), ("cls/a.mp4", 0), ("cls/deeper/f.mp4", 0), ("other/g.avi", 1)]
    touch(tmp_path / ".cache" / "h.mp4")  # a hidden folder becomes class 0 and shifts every label
    assert VideoFolder(str(tmp_path)).class_names == ["cls", "other"]
    assert {label for _, label in pv_pairs(LabeledVideoPaths.from_directory(str(tmp_path)))} == {0, 1, 2}
    (tmp_path / ".empty").mkdir()  # and a hidden folder without a video stops the listing
    with pytest.raises(FileNotFoundError, match=r"Found no valid file for the classes \.empty"):
        LabeledVideoPaths.from_directory(str(tmp_path))


# ---------------------------------------------------------------------------------- HMDB51: agree (used)

def test_hmdb51_split_files_agree_train_unused_and_test(tmp_path):
    make_hmdb(tmp_path, HMDB_LAYOUT)
    splits = tmp_path / "testTrainMulti_7030_splits"

    def theirs(kinds: tuple[str, ...]) -> list[tuple[str, int]]:
        names = sorted(HMDB_LAYOUT)
        pairs = [(str(tmp_path / path), names.index(action)) for kind in kinds
                 for path, action in pv_pairs(Hmdb51LabeledVideoPaths.from_dir(str(splits), 1, kind))]
        return sorted(pairs)

    assert ours(HMDB51(str(tmp_path)), "train") == theirs(("train", "unused"))
    assert ours(HMDB51(str(tmp_path), unused_to_train=False), "train") == theirs(("train",))
    assert ours(HMDB51(str(tmp_path)), "test") == theirs(("test",))


def test_hmdb51_bad_flag_is_skipped_by_pytorchvideo_and_named_by_ours(tmp_path):
    make_hmdb(tmp_path, {"wave": [(hmdb_name("F", "wave", 0), 1), (hmdb_name("F", "wave", 1), 3)]})
    splits = tmp_path / "testTrainMulti_7030_splits"
    assert len(Hmdb51LabeledVideoPaths.from_dir(str(splits), 1, "train")) == 1  # the "3" line is dropped silently
    with pytest.raises(ValueError, match=r"wave_test_split1\.txt:2: expected '<clip>.avi <0\|1\|2>'"):
        HMDB51(str(tmp_path)).items("train")


# ------------------------------------------------------------------- UCF101, Kinetics CSV, SSv2: disagree

def test_ucf101_lists_agree_on_paths_but_carry_raw_ids(tmp_path):
    make_ucf(tmp_path, ["Zeta", "Alpha"])
    lists, videos = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    source = UCF101(str(tmp_path))
    train = pv_pairs(LabeledVideoPaths.from_csv(str(lists / "trainlist01.txt")))
    assert [(str(videos / p), label - 1) for p, label in train] == ours(source, "train")  # 1-based classInd ids
    test = pv_pairs(LabeledVideoPaths.from_csv(str(lists / "testlist01.txt")))
    assert [str(videos / p) for p, _ in test] == [p for p, _ in ours(source, "test")]
    assert {label for _, label in test} == {-1}  # testlist has no ids: the class is in the folder part
    make_ucf(tmp_path / "e", ["A", "B"], groups=7)  # an empty trainlist: a bare assertion, no split named
    with pytest.raises(AssertionError, match="Failed to load dataset"):
        LabeledVideoPaths.from_csv(str(tmp_path / "e" / "ucfTrainTestlist" / "trainlist01.txt"))


def test_kinetics_official_csv_is_not_pytorchvideos_csv(tmp_path):
    make_kinetics(tmp_path)
    with pytest.warns(UserWarning, match="1 of 4"):
        assert len(Kinetics(str(tmp_path), annotations=str(tmp_path / "annotations")).items("train")) == 3
    # pytorchvideo reads "<path> <int label>" lines: a row without a space is one path without a label, and a
    # row whose label has a space ("passing American football ...", most of the 400) stops the listing.
    with pytest.raises(ValueError, match="invalid literal for int"):
        LabeledVideoPaths.from_csv(str(tmp_path / "annotations" / "train.csv"))
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(line for line in (tmp_path / "annotations" / "train.csv").open() if " " not in line))
    theirs = LabeledVideoPaths.from_csv(str(plain))
    rows = [theirs[i] for i in range(len(theirs))]
    assert rows[0] == ("label,youtube_id,time_start,time_end,split,is_cc", {"label": -1})
    assert {meta["label"] for _, meta in rows} == {-1} and len(rows) == 3


def test_ssv2_labels_agree_but_pytorchvideo_reads_frame_lists(tmp_path):
    make_ssv2(tmp_path)
    source = SomethingSomethingV2(str(tmp_path))
    records = json.loads((tmp_path / "labels" / "train.json").read_text())
    frames = tmp_path / "frames.csv"  # pytorchvideo's SSv2 reads extracted frames listed here, not videos
    with frames.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=" ")
        writer.writerow(["original_vido_id", "video_id", "frame_id", "path", "labels"])
        writer.writerows([r["id"], i, 0, f"{r['id']}/000.jpg", '""'] for i, r in enumerate(records))
    paths, labels = _read_video_paths_and_labels(str(tmp_path / "labels" / "labels.json"),
                                                 str(tmp_path / "labels" / "train.json"), str(frames))
    theirs = sorted((str(tmp_path / source.video_dir / f"{Path(p[0]).parent.name}.webm"), label)
                    for p, label in zip(paths, labels))
    assert theirs == ours(source, "train")


# ------------------------------------------------------------------------------------- EncodedVideo (pyav)

@pytest.mark.parametrize("codec", ["libx264rgb", "ffv1"])
def test_encoded_video_pyav_gives_our_frames(tmp_path, write_video, codec):
    n, T = 29, 8
    frames = random_frames(n)
    path = write_video(tmp_path / f"v.{'mp4' if codec == 'libx264rgb' else 'mkv'}", frames, codec)
    positions = (0.0, 0.5, 1.0)
    clips = decode_clips(str(path), T, None, "uniform", 4, positions)  # (K, C, T, H, W) uint8
    video = EncodedVideo.from_path(str(path), decode_audio=False, decoder="pyav")
    try:
        every = video.get_clip(0, video.duration + 1)["video"]  # (C, n, H, W) float32 in [0, 255]
    finally:
        video.close()
    assert every.shape == (3, n, 24, 40) and every.dtype == torch.float32
    for k, position in enumerate(positions):
        idx = sample_indices(n, T, "uniform", 4, position)
        assert torch.equal(every[:, idx].to(torch.uint8), clips[k])
