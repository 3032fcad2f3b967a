"""What synthesis writes: ``distilled.pt`` and its media, the export CLI, and an export that never half-replaces.

Data, teacher and the reference run: tests/synthesis_utils.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import av
import pytest
import torch

from tsgf_lightning.export import export_distilled
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

from .synthesis_utils import FRAMES, IPC, SIZE, THREE, build_world, reference_run, run_cli


@pytest.fixture(scope="module")
def world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    return build_world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory)


def decode_frames(path: Path) -> list:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.slow
def test_distilled_pt_holds_the_documented_contents(world) -> None:
    out = reference_run(world) / "export"
    data = torch.load(out / "distilled.pt", weights_only=True)
    v = data["videos"]
    assert v.dtype == torch.float16 and v.shape == (3 * IPC, 3, FRAMES, SIZE, SIZE)
    assert v.min() >= 0 and v.max() <= 1 and v.float().std() > 0.05
    assert data["labels"].dtype == torch.int64 and data["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert data["class_names"] == THREE
    assert (data["ipc"], data["frames"], data["size"]) == (IPC, FRAMES, SIZE)
    assert data["mean"] == pytest.approx(list(IMAGENET_MEAN)) and data["std"] == pytest.approx(list(IMAGENET_STD))
    assert data["teacher_sha256"] == hashlib.sha256(world.teacher.read_bytes()).hexdigest()
    assert data["config"]["mask"] == "binary" and data["config"]["ipc"] == IPC and data["config"]["lr"] == 0.1
    assert data["method"] == "tsgf" and isinstance(data["format_version"], int)
    assert len(data["init_paths"]) == 3 * IPC and data["steps"] == 5
    assert 0 < data["init_saturated_fraction"] < 0.05 and 0 <= data["saturated_fraction"] < 0.05
    grids = sorted(p.name for p in (out / "grids").glob("*.png"))
    assert grids == [f"{c:03d}_{name}.png" for c, name in enumerate(THREE)]
    mp4s = sorted((out / "videos").glob("*.mp4"))
    assert [p.name for p in mp4s] == [f"{c:03d}_{name}_{j}.mp4" for c, name in enumerate(THREE) for j in range(IPC)]
    frames = decode_frames(mp4s[3])  # move_left, second video
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    # H.264 at crf 12 is lossy but close: the decoded clip resembles the exported one.
    decoded = torch.tensor(frames).permute(3, 0, 1, 2).float() / 255  # (C, T, H, W)
    assert (decoded - v[3].float()).abs().mean() < 0.05
    assert not list(out.glob(".*tmp"))


@pytest.mark.slow
def test_export_cli_reproduces_the_videos_from_the_last_checkpoint(world, tmp_path) -> None:
    reference = reference_run(world)
    code, out = run_cli(world.env, None, str(reference / "ckpt" / "last.ckpt"), "--output-dir", str(tmp_path),
                        module="tsgf_lightning.export", command=None)
    assert code == 0, out[-3000:]
    again = torch.load(tmp_path / "distilled.pt", weights_only=True)
    original = torch.load(reference / "export" / "distilled.pt", weights_only=True)
    assert torch.equal(again["videos"], original["videos"])  # same float32 tensor -> same float16 export
    assert torch.equal(again["labels"], original["labels"])
    for key in ("class_names", "ipc", "frames", "size", "mean", "std", "teacher_sha256", "method"):
        assert again[key] == original[key], key
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3 * IPC


def small_set(value: float) -> dict:
    return dict(videos=torch.full((2, 3, 4, 8, 8), value), labels=torch.tensor([0, 1]), class_names=["a", "b"],
                ipc=1, mean=[0.5] * 3, std=[0.25] * 3, method="test")


def test_export_replaces_an_existing_distilled_pt_only_at_the_end(tmp_path, monkeypatch) -> None:
    export_distilled(tmp_path, **small_set(0.25), media=False)
    old = (tmp_path / "distilled.pt").read_bytes()
    seen = []
    real_save_mp4 = export_distilled.__globals__["save_mp4"]

    def spying_save_mp4(video, path, *args, **kwargs):  # media are written before distilled.pt
        seen.append((tmp_path / "distilled.pt").read_bytes() == old)
        real_save_mp4(video, path, *args, **kwargs)

    monkeypatch.setitem(export_distilled.__globals__, "save_mp4", spying_save_mp4)
    export_distilled(tmp_path, **small_set(0.75))
    assert seen == [True, True]
    new = torch.load(tmp_path / "distilled.pt", weights_only=True)
    assert torch.all(new["videos"] == 0.75)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distilled.pt", "grids", "videos"]  # no temp file


def test_a_failed_export_leaves_the_previous_distilled_pt(tmp_path, monkeypatch) -> None:
    export_distilled(tmp_path, **small_set(0.25), media=False)
    old = (tmp_path / "distilled.pt").read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_distilled(tmp_path, **small_set(0.75), media=False)
    assert (tmp_path / "distilled.pt").read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["distilled.pt"]
