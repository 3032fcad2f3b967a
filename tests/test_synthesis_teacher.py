"""SynthesisModule and its teacher: frozen, outside the module tree, checked against the data.

Data and teacher: tests/synthesis_utils.py.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules import synthesis as synthesis_module
from tsgf_lightning.modules.frozen import FrozenTeacher
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

from .synthesis_utils import CHANNELS, IPC, THREE, build_world, fit_synthesis


@pytest.fixture(scope="module")
def world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    return build_world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory)


# ================================================================================ frozen teacher
def teacher_state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}


class TeacherProbe(L.Callback):
    """Checks, at every step, that only the videos take part in optimisation and the teacher stays in eval mode."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        training = [name or "<net>" for name, m in pl_module.teacher.net.named_modules() if m.training]
        assert not training, f"teacher modules in training mode: {training}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps += 1
        assert [p for g in optimizer.param_groups for p in g["params"]] == [pl_module.videos]
        assert pl_module.videos.grad is not None and pl_module.videos.grad.abs().sum() > 0
        for name, p in pl_module.teacher.net.named_parameters():
            assert not p.requires_grad and p.grad is None, name
        assert [n for n, p in pl_module.named_parameters() if p.requires_grad] == ["videos"]


def assert_teacher_unchanged(teacher: nn.Module, path: Path) -> None:
    assert isinstance(teacher, FrozenTeacher)
    now = teacher.net.state_dict()
    saved = teacher_state(path)
    assert now.keys() == saved.keys()
    assert any("running_mean" in k for k in now)  # BN buffers are part of the comparison
    for k in now:
        assert torch.equal(now[k].cpu(), saved[k]), k
    bns = [m for m in teacher.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)


def test_teacher_is_frozen_through_synthesis(world, tmp_path) -> None:
    probe = TeacherProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=3, callbacks=[probe], mask="eq8", mask_target="gradient")
    assert probe.steps == 3
    assert_teacher_unchanged(module.teacher, world.teacher)
    module.train()  # whoever puts the module in training mode, the teacher stays in eval mode
    assert not any(m.training for m in module.teacher.net.modules())
    # Outside the module tree: no submodule, parameter or state-dict entry of the module is the teacher's.
    assert not {id(p) for p in module.teacher.net.parameters()} & {id(p) for p in module.parameters()}
    assert not any(m is module.teacher.net for m in module.modules())
    assert sorted(module.state_dict()) == ["global_index", "labels", "moved_frames", "videos"]


def test_a_synthesis_checkpoint_holds_no_teacher_and_only_plain_types(world, tmp_path) -> None:
    fit_synthesis(world, tmp_path, max_steps=1, ckpt_every=1)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # would refuse a DataSpec object
    assert sorted(ckpt["state_dict"]) == ["global_index", "labels", "moved_frames", "videos"]
    assert "data_spec" not in ckpt["hyper_parameters"] and ckpt["hyper_parameters"]["ipc"] == IPC
    record = ckpt["tsgf"]
    assert (record["class_names"], record["mean"], record["std"]) == (THREE, list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_the_teacher_follows_the_module_into_its_precision(world, tmp_path) -> None:
    """``64-true`` converts the module (the videos) to float64 after ``setup``; the teacher outside the tree must
    follow, or its first forward fails on mixed dtypes."""
    trainer, module = fit_synthesis(world, tmp_path, max_steps=1, precision="64-true")
    assert trainer.global_step == 1 and module.videos.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in module.teacher.net.parameters())


# ================================================================================ bad input
@pytest.fixture(scope="module")
def teacher8(teacher_checkpoint) -> Path:
    """conftest's teacher of the 8-class embedded set: the wrong class count for the 3-class data."""
    return Path(teacher_checkpoint(channels=CHANNELS))


def test_teacher_of_another_class_count_is_refused(world, teacher8, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"teacher-4-8-8-s2-seed0\.ckpt was trained on 8 classes but the data has 3"):
        fit_synthesis(world, tmp_path, teacher_ckpt=str(teacher8))


def test_teacher_of_another_architecture_is_refused(world, tmp_path) -> None:
    other = functools.partial(MiniC3D, channels=[4, 8, 16])
    with pytest.raises(ValueError) as err:
        fit_synthesis(world, tmp_path, teacher_backbone=other)
    message = str(err.value)
    assert "channels=[4, 8, 8]" in message and "channels=[4, 8, 16]" in message and "teacher3.ckpt" in message


def test_missing_teacher_file_is_refused(world, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_teacher.ckpt"):
        fit_synthesis(world, tmp_path, teacher_ckpt=str(tmp_path / "no_such_teacher.ckpt"))


def test_a_synthesis_checkpoint_is_not_a_teacher(world, tmp_path) -> None:
    fit_synthesis(world, tmp_path / "synthesis", max_steps=1, ckpt_every=1)
    ckpt = tmp_path / "synthesis" / "ckpt" / "last.ckpt"
    with pytest.raises(ValueError, match=r"last\.ckpt is not a TeacherModule checkpoint \(a 'synthesis' checkpoint\)"):
        fit_synthesis(world, tmp_path, teacher_ckpt=str(ckpt))


@pytest.mark.parametrize("ipc,factor,need", [(5, 1, 5), (2, 2, 8)])
def test_ipc_above_a_class_size_with_real_init_names_the_class(world, tmp_path, ipc, factor, need) -> None:
    """The message counts stored videos and the clips they pack: ``ipc x factor^2``."""
    with pytest.raises(ValueError, match=rf"class 'grow' has 4 training videos, fewer than ipc={ipc} x factor\^2 "
                                         rf"{factor ** 2} = {need} clips needed \(each stored video packs factor x "
                                         r"factor clips\)"):
        fit_synthesis(world, tmp_path, ipc=ipc, factor=factor)


def test_non_finite_loss_stops_before_the_update_and_keeps_earlier_files(world, tmp_path, monkeypatch) -> None:
    fit_synthesis(world, tmp_path, max_steps=2, ckpt_every=1)  # a clean run: last.ckpt at step 2, distilled.pt
    last, exported = tmp_path / "ckpt" / "last.ckpt", tmp_path / "export" / "distilled.pt"
    before = last.read_bytes(), exported.read_bytes()

    real_load = synthesis_module.load_teacher

    def nan_teacher(*args, **kwargs):
        teacher, record = real_load(*args, **kwargs)
        forward = teacher.net.forward
        teacher.net.forward = lambda video: forward(video) * float("nan")
        return teacher, record

    monkeypatch.setattr(synthesis_module, "load_teacher", nan_teacher)
    with pytest.raises(FloatingPointError, match="not finite at step 2"):
        fit_synthesis(world, tmp_path, max_steps=4, ckpt_every=1, ckpt_path=str(last))
    assert (last.read_bytes(), exported.read_bytes()) == before
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
