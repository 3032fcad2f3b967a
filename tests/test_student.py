"""StudentModule: saliency-gated VideoMix, teacher relabelling of the mixed clip, and its input checks.

The mixing and loss tests call ``training_step`` directly on a stand-in network (a linear read-out of
per-frame channel means that records what it was given) and infer what was mixed from the pixels
alone (which voxels changed, whose values they took), independently of the mixing code. The fits run
on conftest's tiny embedded set (8 classes, 8 frames at 48x48) with conftest's tiny teacher.
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
from tsgf_lightning.export import export_distilled
from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules.frozen import FrozenTeacher
from tsgf_lightning.modules.student import StudentModule, student_mix
from tsgf_lightning.tsgf import soft_label_kd
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize

CHANNELS = (4, 8, 8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)




# ================================================================================ student_mix
B, C, T, H, W = 3, 3, 8, 12, 12
#: Clip b is flat grey, stepping from LOW[b] to HIGH[b] between frames JUMP[b] - 1 and JUMP[b]. With no
#: smoothing (window 1), Eq. 6 gives d = (HIGH - LOW) / 2 on exactly those two frames and 0 elsewhere:
#: with an absolute eps of 0.1 they are the key frames. All frame values differ between clips.
LOW, HIGH, JUMP = (0.05, 0.12, 0.21), (0.45, 0.62, 0.66), (3, 5, 2)
KEY = [{j - 1, j} for j in JUMP]
SALIENCY = dict(window_length=1, window="uniform", eps=0.1, eps_mode="absolute")


def stepped_clips() -> torch.Tensor:
    """``(B, C, T, H, W)`` normalised with MEAN/STD (student_mix sees network inputs)."""
    t = torch.arange(T)
    levels = torch.stack([torch.where(t < j, lo, hi) for lo, hi, j in zip(LOW, HIGH, JUMP)])  # (B, T)
    pixels = levels[:, None, :, None, None].expand(B, C, T, H, W).clone()
    return normalize(pixels, MEAN, STD)


def changed_box(out: torch.Tensor, video: torch.Tensor, i: int) -> list[torch.Tensor]:
    """Per frame, the ``(H, W)`` bool map of pixels of clip ``i`` that mixing changed (any channel)."""
    return [(out[i, :, t] != video[i, :, t]).any(0) for t in range(T)]


def is_rectangle(region: torch.Tensor) -> bool:
    rows, cols = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
    full = torch.zeros_like(region)
    full[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return torch.equal(region, full)


def test_tsgf_mix_pastes_one_box_into_non_key_frames_only() -> None:
    video = stepped_clips()
    out, partner, frac = student_mix(video, "tsgf", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    assert out.shape == video.shape and torch.equal(video, stepped_clips())  # input untouched
    mixed = 0
    for i in range(B):
        regions = changed_box(out, video, i)
        for t in KEY[i]:
            assert not regions[t].any(), f"clip {i}: key frame {t} changed"
        calm = [t for t in range(T) if t not in KEY[i]]
        box = regions[calm[0]]
        if partner[i] == i or not box.any():
            assert frac[i] == 0 or partner[i] == i
            continue
        mixed += 1
        assert is_rectangle(box)
        for t in calm:  # the same box in every non-key frame, holding the partner's pixels
            assert torch.equal(regions[t], box)
            assert torch.equal(out[i, :, t][:, box], video[partner[i], :, t][:, box])
            assert torch.equal(out[i, :, t][:, ~box], video[i, :, t][:, ~box])
        expected = box.sum() * len(calm) / (H * W * T)
        assert frac[i].item() == pytest.approx(expected.item())
    assert mixed >= 2  # the draw mixed at least two clips: the checks above were exercised


def test_videomix_changes_every_frame_inside_the_same_box() -> None:
    video = stepped_clips()
    tsgf, partner_t, _ = student_mix(video, "tsgf", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    out, partner, frac = student_mix(video, "videomix", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    assert torch.equal(partner, partner_t)
    mixed = 0
    for i in range(B):
        regions = changed_box(out, video, i)
        if partner[i] == i or not regions[0].any():
            continue
        mixed += 1
        for t in range(T):  # key frames included
            assert torch.equal(regions[t], regions[0])
        assert frac[i].item() == pytest.approx(regions[0].sum().item() / (H * W))
        # With the same draws, TSGF_A is VideoMix with the key frames restored.
        for t in range(T):
            expected = video[i, :, t] if t in KEY[i] else out[i, :, t]
            assert torch.equal(tsgf[i, :, t], expected)
    assert mixed >= 2


def test_no_mix_leaves_the_batch_alone() -> None:
    video = stepped_clips()
    out, partner, frac = student_mix(video, "none", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    assert torch.equal(out, video) and torch.equal(partner, torch.arange(B)) and torch.all(frac == 0)


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


def attached_student(**kwargs) -> StudentModule:
    """A StudentModule on a Recorder, attached to a stand-in trainer (only what training_step reads)."""
    module = StudentModule(lambda n: Recorder(n, seed=0), num_classes=4, **kwargs)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(mean=MEAN, std=STD), global_step=0, global_rank=0)
    module.log = lambda *args, **kw: None
    return module


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
    assert all(p.grad is None for p in module.teacher.parameters())


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
    assert not any(m.training for m in module.teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in module.net.state_dict().items())  # the student learnt


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


def test_denormalised_saliency_is_what_gates_the_mix() -> None:
    """The gate reads pixels, not network inputs: the same clip normalised differently gates the same frames."""
    video = stepped_clips()
    pixels = denormalize(video, MEAN, STD)
    other = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
    a, _, _ = student_mix(video, "tsgf", torch.Generator().manual_seed(3), MEAN, STD, **SALIENCY)
    b, _, _ = student_mix(other, "tsgf", torch.Generator().manual_seed(3), IMAGENET_MEAN, IMAGENET_STD, **SALIENCY)
    torch.testing.assert_close(denormalize(a, MEAN, STD), denormalize(b, IMAGENET_MEAN, IMAGENET_STD))
