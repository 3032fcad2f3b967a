"""VideoDataModule end to end on the tiny embedded set and on folders made here: what each loader
serves, the validation carve-out, random subsets, and bad input (corrupt, short or missing videos,
impossible subsets, a distilled set without a path) failing loudly and writing nothing."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tsgf_lightning.data.datamodule import ClipDataset, VideoDataModule, collate_clips
from tsgf_lightning.data.decode import decode_clips
from tsgf_lightning.data.distilled import DistilledSetError
from tsgf_lightning.data.sources import UCF101, VideoFolder


def tiny_dm(tiny_embedded, cache_dir: str, **kwargs) -> VideoDataModule:
    args = dict(frames=8, size=48, flip=False, batch_size=8, num_workers=0, decode_workers=1, cache_dir=cache_dir)
    return VideoDataModule(tiny_embedded.source(), **{**args, **kwargs})


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------- real data

def test_loaders_serve_the_batch_contract_and_validation_is_a_group_carve_out(tiny_embedded, tmp_path):
    cache = tmp_path / "cache"
    dm = tiny_dm(tiny_embedded, str(cache), val_fraction=0.25)
    assert dm.num_classes == 8 and len(dm.class_names) == 8
    dm.prepare_data()
    names = cache_files(cache)
    assert len(names) == 3 and all(n.startswith(("embedded-fit-8x48x48", "embedded-val-", "embedded-test-"))
                                   for n in names)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (8, 3, 8, 48, 48) and batch["video"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["index"].shape == (8,)
    assert -3 < batch["video"].min() < 0 < batch["video"].max() < 3  # normalised, not [0, 255]

    fit, val = dm.part("fit"), dm.part("val")
    train_items = tiny_embedded.source().items("train")
    assert sorted(fit.paths + val.paths) == sorted(i.path for i in train_items)
    assert not set(fit.groups) & set(val.groups)
    assert sorted(val.labels.tolist()) == list(range(8))  # round(0.25 * 4) = 1 group per class held out
    val_batches = list(dm.val_dataloader())
    assert sum(len(b["label"]) for b in val_batches) == 8
    dm.setup("test")
    test = dm.part("test")
    assert sorted(test.paths) == sorted(i.path for i in tiny_embedded.source().items("test"))
    assert sum(len(b["label"]) for b in dm.test_dataloader()) == 16

    # A second DataModule finds the cache: nothing is decoded or rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = tiny_dm(tiny_embedded, str(cache), val_fraction=0.25)
    again.prepare_data()
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    assert torch.equal(again.part("fit").clips, fit.clips)


def test_training_videos_cache_k_clips_and_evaluation_one(tiny_embedded, shared_cache_dir):
    dm = tiny_dm(tiny_embedded, shared_cache_dir, train_clips_per_video=3, val_fraction=0.25)
    fit, val, test = dm.part("fit"), dm.part("val"), dm.part("test")
    assert fit.clips.shape[1:] == (3, 3, 8, 48, 48)
    assert val.clips.shape[1] == 1 and test.clips.shape[1] == 1
    # Clip k of a training video sits at position (k + 0.5) / 3; evaluation clips at the centre.
    want = decode_clips(fit.paths[0], 8, (48, 48), positions=(1 / 6, 1 / 2, 5 / 6))
    assert torch.equal(fit.clips[0], want)
    assert torch.equal(test.clips[0], decode_clips(test.paths[0], 8, (48, 48)))


def test_random_subset_draws_ipc_per_class_reproducibly(tiny_embedded, shared_cache_dir):
    dm = tiny_dm(tiny_embedded, shared_cache_dir, val_fraction=0.25)
    clips, labels, idx = dm.random_subset(ipc=2, seed=0)
    assert clips.shape == (16, 3, 8, 48, 48) and clips.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(8) for _ in range(2)]
    real, real_labels = dm.real_clips("fit")
    assert torch.equal(clips, real[idx]) and torch.equal(labels, real_labels[idx])
    again = dm.random_subset(ipc=2, seed=0)[2]
    assert torch.equal(idx, again)
    assert any(not torch.equal(idx, dm.random_subset(ipc=2, seed=s)[2]) for s in (1, 2, 3))

    served = tiny_dm(tiny_embedded, shared_cache_dir, val_fraction=0.25, train_set="random", ipc=2)
    served.setup("fit")
    assert len(served.train_data) == 16
    assert sorted(b["label"].item() for b in (served.train_data[i] for i in range(16))) == labels.tolist()


def test_ipc_larger_than_a_class_is_an_error_naming_the_class(tiny_embedded, shared_cache_dir):
    # 4 training videos per class, 1 held out for validation: 3 left, fewer than ipc = 4.
    dm = tiny_dm(tiny_embedded, shared_cache_dir, val_fraction=0.25, train_set="random", ipc=4)
    first = dm.class_names[0]
    with pytest.raises(ValueError, match=rf"class '{first}' has 3 training videos, fewer than ipc=4"):
        dm.setup("fit")


def test_train_set_none_serves_step_counters(tiny_embedded, shared_cache_dir):
    dm = tiny_dm(tiny_embedded, shared_cache_dir, train_set="none", steps_per_epoch=5)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and set(batches[0]) == {"index"}


def test_distilled_training_set_needs_a_path_that_exists(tiny_embedded, shared_cache_dir, tmp_path):
    with pytest.raises(ValueError, match="distilled_path"):
        tiny_dm(tiny_embedded, shared_cache_dir, train_set="distilled")
    dm = tiny_dm(tiny_embedded, shared_cache_dir, train_set="distilled", distilled_path=str(tmp_path / "no.pt"))
    with pytest.raises(DistilledSetError, match="no.pt"):
        dm.setup("fit")


@pytest.mark.parametrize("kwargs, name", [
    (dict(frames=0), "frames"), (dict(size=0), "size"), (dict(batch_size=0), "batch_size"),
    (dict(ipc=0), "ipc"), (dict(val_fraction=1.0), "val_fraction"), (dict(train_repeats=0), "train_repeats"),
])
def test_bad_arguments_are_named(tiny_embedded, shared_cache_dir, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_dm(tiny_embedded, shared_cache_dir, **kwargs)


def test_per_clip_work_runs_on_one_thread_and_restores_the_setting():
    # Tiny per-clip ops on several contending OpenMP threads were 60x slower (see datamodule.py).
    seen = []

    def spy(clip):
        seen.append(torch.get_num_threads())
        return clip.float()

    data = ClipDataset(torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), torch.arange(4), spy)
    torch.set_num_threads(2)  # the autouse fixture restores the session's setting afterwards
    batch = collate_clips([data[i] for i in range(4)])
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2
    assert batch["video"].shape == (4, 3, 2, 8, 8) and batch["label"].tolist() == [0, 1, 2, 3]
    assert batch["index"].tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------- bad videos

def test_a_corrupt_video_is_skipped_with_a_warning_naming_it(tiny_embedded, tmp_path):
    root = tiny_embedded.copy_to(tmp_path / "folder")
    bad = root / "train" / "grow" / "zz_corrupt.mkv"
    bad.write_bytes(b"\x1aE\xdf\xa3 not really matroska" * 40)
    cache = tmp_path / "cache"
    dm = VideoDataModule(VideoFolder(str(root)), frames=8, size=48, batch_size=8, num_workers=0,
                         decode_workers=1, cache_dir=str(cache))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.prepare_data()
    messages = [str(w.message) for w in record]
    assert any(str(bad) in m for m in messages), messages
    fit = dm.part("fit")
    assert fit.skipped == [str(bad)] and len(fit.paths) == 32 and str(bad) not in fit.paths
    dm.setup("fit")
    assert len(dm.train_data) == 32


def test_too_many_corrupt_videos_stop_the_run_and_write_nothing(tiny_embedded, tmp_path):
    root = tiny_embedded.copy_to(tmp_path / "folder")
    bad = [root / "train" / cls / f"zz_corrupt{i}.mkv" for i, cls in enumerate(("grow", "shrink", "move_up"))]
    for path in bad:
        path.write_bytes(b"garbage" * 100)
    cache = tmp_path / "cache"
    dm = VideoDataModule(VideoFolder(str(root)), frames=8, size=48, num_workers=0, decode_workers=1,
                         cache_dir=str(cache), max_bad_fraction=0.05)
    with pytest.raises(RuntimeError, match=r"3 of 35 videos") as err, pytest.warns(UserWarning):
        dm.prepare_data()
    for path in bad:
        assert path.name in str(err.value)
    assert cache_files(cache) == []


def test_a_video_shorter_than_the_clip_repeats_frames(tmp_path, write_video):
    # Two classes, a train and a test folder each; one training video has 5 frames for T = 8.
    frames = {}
    for split in ("train", "test"):
        for cls in ("a", "b"):
            n = 5 if (split, cls) == ("train", "a") else 12
            data = torch.randint(0, 256, (n, 32, 32, 3), generator=torch.Generator().manual_seed(n + len(cls)),
                                 dtype=torch.uint8)
            folder = tmp_path / "root" / split / cls
            folder.mkdir(parents=True)
            frames[(split, cls)] = data
            write_video(folder / "v.mkv", data)
    dm = VideoDataModule(VideoFolder(str(tmp_path / "root")), frames=8, size=32, num_workers=0, decode_workers=1,
                         cache_dir=str(tmp_path / "cache"))
    fit = dm.part("fit")
    short = fit.clips[fit.paths.index(str(tmp_path / "root" / "train" / "a" / "v.mkv")), 0]  # (C, T, H, W)
    want = frames[("train", "a")][[0, 0, 1, 2, 2, 3, 4, 4]].permute(3, 0, 1, 2)
    assert torch.equal(short, want)


def test_a_split_naming_a_missing_video_fails_before_anything_is_decoded(tmp_path):
    # UCF101 layout (empty files stand for videos: the error must come before any decoding).
    root = tmp_path / "ucf"
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("1 Alpha\n2 Beta\n")
    train, test = [], []
    for cid, cls in ((1, "Alpha"), (2, "Beta")):
        (root / "UCF-101" / cls).mkdir(parents=True)
        for g in (1, 8):
            name = f"v_{cls}_g{g:02d}_c01.avi"
            if name != "v_Beta_g08_c01.avi":
                (root / "UCF-101" / cls / name).write_bytes(b"")
            (test.append(f"{cls}/{name}") if g == 1 else train.append(f"{cls}/{name} {cid}"))
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("\n".join(train))
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("\n".join(test))
    cache = tmp_path / "cache"
    dm = VideoDataModule(UCF101(str(root)), frames=8, size=48, num_workers=0, decode_workers=1, cache_dir=str(cache))
    with pytest.raises(ValueError, match=r"Beta/v_Beta_g08_c01\.avi"):
        dm.prepare_data()
    assert cache_files(cache) == []
