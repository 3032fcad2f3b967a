"""StudentModule: teacher relabelling of the mixed clip, the teacher held outside the module, and input checks.

The loss tests call ``training_step`` directly on a stand-in network (a linear read-out of per-frame
channel means that records what it was given) and infer what was mixed from the pixels alone (which
voxels changed, whose values they took), independently of the mixing code (``student_mix`` itself:
tests/test_mixing.py). The fits run on conftest's tiny embedded set (8 classes, 8 frames at 48x48)
with conftest's tiny teacher.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.distilled import DistilledSetError
from tsgf_lightning.data.sources import VideoFolder
from tsgf_lightning.data.spec import DataSpec
from tsgf_lightning.export import export_distilled
from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules.frozen import FrozenTeacher
from tsgf_lightning.modules.student import StudentModule
from tsgf_lightning.tsgf import soft_label_kd
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

CHANNELS = (4, 8, 8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)




B, C, T, H, W = 3, 3, 8, 12, 12


# ================================================================================ training_step
class Recorder(nn.Module):
    """A stand-in network: logits are a fixed linear read-out of the per-frame channel means.

    Every input it sees is recorded, so a test can tell which clip the student and the teacher saw.
    """

    def __init__(self, num_classes: int, seed: int, frames: int = T):
        super().__init__()
        self.readout = nn.Linear(C * frames, num_classes)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.readout.weight.copy_(torch.randn(self.readout.weight.shape, generator=g))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.readout(x.mean(dim=(3, 4)).flatten(1))


def attached_module(cls, **kwargs):
    """A ``cls`` (Student- or TeacherModule) on a Recorder, given its data spec, attached to a stand-in trainer
    (step and rank only)."""
    spec = DataSpec(["a", "b", "c", "d"], T, H, MEAN, STD)
    module = cls(lambda n: Recorder(n, seed=0), num_classes=4, data_spec=spec, **kwargs)
    module._trainer = SimpleNamespace(global_step=0, global_rank=0)
    module.log = lambda *args, **kw: None
    return module


attached_student = functools.partial(attached_module, StudentModule)


def random_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"video": torch.randn(6, C, T, H, W, generator=g), "label": torch.tensor([0, 1, 2, 3, 0, 1])}


def infer_mix(mixed: torch.Tensor, video: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """From pixels alone: each clip's partner (whose values fill its changed voxels) and the changed fraction."""
    partners, fractions = [], []
    for i in range(len(video)):
        changed = mixed[i] != video[i]
        fractions.append(changed.float().mean())
        if not changed.any():
            partners.append(i)
            continue
        sources = [j for j in range(len(video)) if torch.equal(mixed[i][changed], video[j][changed])]
        assert len(sources) == 1, (i, sources)
        partners.append(sources[0])
    return partners, torch.stack(fractions)


def test_soft_labels_come_from_the_teacher_on_the_mixed_clip() -> None:
    module = attached_student(teacher_ckpt="set-below", labels="soft", temperature=2.0, mix="tsgf")
    module.teacher = FrozenTeacher(Recorder(4, seed=1))
    batch = random_batch()
    loss = module.training_step(batch, 0)
    (student_in,), (teacher_in,) = module.net.inputs, module.teacher.net.inputs
    assert torch.equal(teacher_in, student_in)
    assert not torch.equal(student_in, batch["video"])  # the batch was mixed
    with torch.no_grad():
        expected = soft_label_kd(module.net(student_in), module.teacher(student_in), 2.0)
        unmixed_teacher = soft_label_kd(module.net(student_in), module.teacher(batch["video"]), 2.0)
    torch.testing.assert_close(loss.detach(), expected)
    assert not torch.allclose(expected, unmixed_teacher)  # relabelling the unmixed clip would be detected
    loss.backward()
    assert module.net.readout.weight.grad is not None
    assert all(p.grad is None for p in module.teacher.net.parameters())


def test_hard_labels_are_mixed_by_the_voxel_fraction_taken_from_the_partner() -> None:
    module = attached_student(labels="hard", mix="tsgf")
    batch = random_batch()
    loss = module.training_step(batch, 0)
    (mixed,) = module.net.inputs
    partners, f = infer_mix(mixed, batch["video"])
    assert ((f > 0) & (f < 1)).sum() >= 2
    y = batch["label"]
    with torch.no_grad():
        logits = module.net(mixed)
    expected = ((1 - f) * F.cross_entropy(logits, y, reduction="none")
                + f * F.cross_entropy(logits, y[partners], reduction="none")).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_soft_labels_need_a_teacher_checkpoint() -> None:
    with pytest.raises(ValueError, match="teacher_ckpt"):
        StudentModule(functools.partial(MiniC3D, channels=CHANNELS), num_classes=8, labels="soft")


# ================================================================================ distilled sets
@pytest.fixture(scope="module")
def data(tiny_embedded, shared_cache_dir) -> SimpleNamespace:
    return SimpleNamespace(embedded=tiny_embedded, cache=shared_cache_dir)


def datamodule(data, source=None, **kwargs) -> VideoDataModule:
    return VideoDataModule(source or data.embedded.source(), frames=8, size=48, flip=False, batch_size=4,
                           num_workers=0, cache_dir=data.cache, decode_workers=1, **kwargs)


def write_set(path: Path, data, classes: int = 8, frames: int = 8, size: int = 48) -> Path:
    """A distilled set named after the embedded set's first ``classes`` classes (conftest's set has 8)."""
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(classes, 3, frames, size, size, generator=g)
    names = data.embedded.source().class_names[:classes]
    return export_distilled(path, videos, torch.arange(classes), names, 1, list(IMAGENET_MEAN), list(IMAGENET_STD),
                            method="test", media=False)


def test_a_matching_distilled_set_loads(data, tmp_path) -> None:
    dm = datamodule(data, train_set="distilled", distilled_path=str(write_set(tmp_path, data)))
    dm.setup("fit")
    assert len(dm.train_data) == 8


@pytest.mark.parametrize("shape,message", [
    (dict(classes=5), "number of classes = 5 but the data config expects 8"),
    (dict(frames=4), "frames = 4 but the data config expects 8"),
    (dict(size=32), "size = 32 but the data config expects 48"),
])
def test_a_distilled_set_of_other_geometry_is_refused(data, tmp_path, shape, message) -> None:
    path = write_set(tmp_path, data, **shape)
    dm = datamodule(data, train_set="distilled", distilled_path=str(path))
    with pytest.raises(DistilledSetError, match=message) as err:
        dm.setup("fit")
    assert str(path) in str(err.value)


def test_a_missing_distilled_set_is_refused(data, tmp_path) -> None:
    path = tmp_path / "nowhere" / "distilled.pt"
    with pytest.raises(DistilledSetError, match="does not exist") as err:
        datamodule(data, train_set="distilled", distilled_path=str(path)).setup("fit")
    assert str(path) in str(err.value)


def test_a_truncated_distilled_set_is_refused_by_a_student_fit(data, teacher_checkpoint, tmp_path) -> None:
    path = write_set(tmp_path, data)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    dm = datamodule(data, train_set="distilled", distilled_path=str(path))
    module = StudentModule(functools.partial(MiniC3D, channels=CHANNELS), dm.num_classes,
                           teacher_ckpt=teacher_checkpoint(channels=CHANNELS))
    with pytest.raises(DistilledSetError, match="truncated") as err:
        quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    assert str(path) in str(err.value)


# ================================================================================ the teacher
def quiet_trainer(root: Path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, **kwargs)


def test_teacher_is_frozen_through_a_student_fit(data, teacher_checkpoint, tmp_path) -> None:
    teacher_path = teacher_checkpoint(channels=CHANNELS)
    dm = datamodule(data, train_set="random", ipc=2)
    module = StudentModule(functools.partial(MiniC3D, channels=CHANNELS), dm.num_classes, teacher_ckpt=teacher_path,
                           mix="tsgf")
    student_before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == {
        id(p) for p in module.net.parameters()}
    saved = {k[len("net."):]: v for k, v in torch.load(teacher_path, weights_only=True)["state_dict"].items()
             if k.startswith("net.")}
    now = module.teacher.net.state_dict()
    assert now.keys() == saved.keys() and any("running_var" in k for k in now)
    for k in now:
        assert torch.equal(now[k], saved[k]), k
    assert not any(m.training for m in module.teacher.net.modules())
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.net.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in module.net.state_dict().items())  # the student learnt
    # Outside the module tree: not a submodule, not a parameter, not in the state dict.
    teacher_ids = {id(p) for p in module.teacher.net.parameters()}
    assert not teacher_ids & {id(p) for p in module.parameters()}
    assert not any(m is module.teacher.net for m in module.modules())
    assert all(k.startswith(("net.", "val_", "test_")) for k in module.state_dict())


def test_a_student_checkpoint_holds_no_teacher_and_resumes(data, teacher_checkpoint, tmp_path) -> None:
    teacher_path = teacher_checkpoint(channels=CHANNELS)

    def student() -> StudentModule:
        return StudentModule(functools.partial(MiniC3D, channels=CHANNELS), 8, teacher_ckpt=teacher_path)

    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(student(), datamodule=datamodule(data, train_set="random", ipc=2))
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    ckpt = torch.load(tmp_path / "student.ckpt", weights_only=True)  # plain types: no DataSpec in it
    assert not [k for k in ckpt["state_dict"] if k.startswith("teacher")]
    assert "data_spec" not in ckpt["hyper_parameters"]
    record = ckpt["tsgf"]
    assert record["stage"] == "student" and record["class_names"] == data.embedded.source().class_names
    assert (record["frames"], record["size"], record["mean"]) == (8, 48, list(IMAGENET_MEAN))
    resumed = student()
    again = quiet_trainer(tmp_path, max_steps=2)
    again.fit(resumed, datamodule=datamodule(data, train_set="random", ipc=2), ckpt_path=tmp_path / "student.ckpt")
    assert again.global_step == 2 and resumed.teacher is not None  # strict loading found every key


@pytest.fixture(scope="module")
def three_classes(data, tmp_path_factory) -> Path:
    """Three classes of the embedded set, linked as a VideoFolder (a dataset the teacher was not trained on)."""
    root = tmp_path_factory.mktemp("student_three") / "three"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for name in ("grow", "move_left", "move_right"):
            (root / split / name).symlink_to(Path(data.embedded.root) / split / name, target_is_directory=True)
    return root


def test_a_teacher_of_other_classes_is_refused(data, teacher_checkpoint, three_classes, tmp_path) -> None:
    teacher_path = teacher_checkpoint(channels=CHANNELS)
    dm = datamodule(data, VideoFolder(str(three_classes)), train_set="none", steps_per_epoch=1)
    module = StudentModule(functools.partial(MiniC3D, channels=CHANNELS), dm.num_classes, teacher_ckpt=teacher_path)
    with pytest.raises(ValueError, match="was trained on 8 classes but the data has 3") as err:
        quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    assert teacher_path in str(err.value)


def test_a_teacher_of_other_clip_size_is_refused(data, teacher_checkpoint, tmp_path) -> None:
    teacher_path = teacher_checkpoint(channels=CHANNELS)
    dm = VideoDataModule(data.embedded.source(), frames=8, size=44, train_set="none", steps_per_epoch=1,
                         num_workers=0, cache_dir=data.cache)
    module = StudentModule(functools.partial(MiniC3D, channels=CHANNELS), dm.num_classes, teacher_ckpt=teacher_path)
    with pytest.raises(ValueError, match="size = 48 but the data config says 44") as err:
        quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    assert teacher_path in str(err.value)
