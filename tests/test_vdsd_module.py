"""VDSDModule: each stage moves only its own memories, the export is the naive assembly of the memories, exact
resume in either stage, the export a student reads, the CLI.

IPC 2 as 1 static x 2 dynamic entries per class, 2 static steps then 2 dynamic steps (learning rates raised so
that two steps visibly move every memory). Data and helpers: tests/baseline_utils.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tsgf_lightning import cli
from tsgf_lightning.baselines import Hallucinator
from tsgf_lightning.modules.vdsd import VDSDModule
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

from .baseline_utils import (
    CLASSES,
    TINY,
    assert_a_student_trains_on,
    assert_resumes_exactly,
    datamodule,
    embedded_data,
    exported,
    fit,
    reference_run,
)

REPO = Path(__file__).resolve().parent.parent
VDSD = dict(ipc=2, static_per_class=1, dynamic_per_class=2, static_steps=2, dynamic_steps=2, embed_backbone=TINY,
            batch_real=3, embed_batch=5, lr_static=1.0, lr_dynamic=1.0, lr_hal=0.1, export_media=False)
STEPS = 4


def make_vdsd(export_dir: str) -> VDSDModule:
    return VDSDModule(CLASSES, export_dir=export_dir, **VDSD)


@pytest.fixture(scope="module")
def data(tiny_embedded, shared_cache_dir) -> SimpleNamespace:
    return embedded_data(tiny_embedded, shared_cache_dir)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> SimpleNamespace:
    return reference_run(make_vdsd, data, tmp_path_factory, "vdsd_run", STEPS)


def memories(run, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(run.root / "ckpt" / f"step={step}.ckpt", weights_only=True)["state_dict"]
    return {"static": state["static"], "dynamic": state["dynamic"],
            "hallucinator": torch.cat([state["hallucinator.conv.weight"].flatten(), state["hallucinator.conv.bias"]])}


def test_each_stage_moves_only_its_own_memories(run) -> None:
    after = {step: memories(run, step) for step in range(1, STEPS + 1)}
    # step=1 and step=2 follow the two static steps, step=3 and step=4 the two dynamic ones.
    assert not torch.equal(after[1]["static"], after[2]["static"])
    assert torch.equal(after[1]["dynamic"], after[2]["dynamic"])
    assert torch.equal(after[1]["hallucinator"], after[2]["hallucinator"])
    for a, b in ((2, 3), (3, 4)):
        assert torch.equal(after[a]["static"], after[b]["static"])
        assert not torch.equal(after[a]["dynamic"], after[b]["dynamic"])
        assert not torch.equal(after[a]["hallucinator"], after[b]["hallucinator"])
    assert run.module.stage_of(1) == "static" and run.module.stage_of(2) == "dynamic"


def test_the_export_is_the_naive_assembly_of_the_memories(data, run) -> None:
    d, m = exported(run.root), run.module
    static, dynamic, hal = m.static.detach(), m.dynamic.detach(), m.hallucinator
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    assert isinstance(hal, Hallucinator) and d["videos"].shape == (CLASSES * 2, 3, 8, 48, 48)
    assert d["labels"].tolist() == [c for c in range(CLASSES) for _ in range(2)]
    i = 0
    for c in range(CLASSES):
        for k in range(2):  # one static frame, two dynamic maps per class: videos (c, 0), (c, 1)
            still = torch.stack([static[c]] * 8, dim=1)  # (C, T, H, W)
            with torch.no_grad():
                video = hal(torch.cat([still, dynamic[c * 2 + k]], dim=0)[None])[0]
            naive = (video * std + mean).clamp(0, 1)
            assert torch.allclose(d["videos"][i].float(), naive, atol=1e-3), (c, k)
            i += 1
    pixels = static * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # static frames clamped after each step
    assert (d["static_per_class"], d["dynamic_per_class"], d["ipc"]) == (1, 2, 2)
    assert d["static_shape"] == [CLASSES, 3, 48, 48] and d["dynamic_shape"] == [CLASSES * 2, 1, 8, 48, 48]
    assert d["hallucinator_parameters"] == 4 * 3 * 27 + 3 and d["method"] == "vdsd"
    _, _, idx = datamodule(data).random_subset(1, 0)  # static frames start from random real clips
    paths = datamodule(data).part("fit").paths
    assert d["init_paths"] == [paths[j] for j in idx.tolist()]


def test_vdsd_resumes_exactly_in_either_stage(data, run, tmp_path) -> None:
    assert_resumes_exactly(make_vdsd, data, run.root, run.module, tmp_path, STEPS, at=(1, 3))


def test_a_student_trains_on_the_assembled_videos(data, run, tmp_path) -> None:
    assert_a_student_trains_on(run.root / "export" / "distilled.pt", data, tmp_path)


def test_storage_and_schedule_are_checked(data, tmp_path) -> None:
    with pytest.raises(ValueError, match="to equal `ipc` = 5"):
        VDSDModule(CLASSES, ipc=5, static_per_class=2)
    with pytest.raises(ValueError, match="set it to 4"):
        fit(make_vdsd, data, tmp_path, max_steps=3)


def test_the_embedded_config_runs_through_the_cli(data, tmp_path) -> None:
    cli.main(["fit", "--config", str(REPO / "configs/embedded/data.yaml"), "--config",
              str(REPO / "configs/embedded/vdsd.yaml"), *data.embedded.cli_args(), f"--data.cache_dir={data.cache}",
              "--data.val_fraction=0", "--data.decode_workers=1", "--trainer.max_steps=2",
              "--model.init_args.static_steps=1", "--model.init_args.dynamic_steps=1",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--model.init_args.embed_backbone.init_args.channels=[4,8,8]", "--model.init_args.batch_real=2",
              "--model.init_args.export_media=false"])
    d = torch.load(tmp_path / "vdsd_ipc1" / "distilled.pt", weights_only=True)
    assert d["steps"] == 2 and d["ipc"] == 1 and d["videos"].shape[0] == CLASSES
