"""What the DM, MTT and VDSD module tests share: tiny data, tiny networks, fits, resumes, exports, a student.

Data: conftest's embedded set (8 classes, 4 training and 2 test clips each, 8 frames at 48x48) served
with ``train_set: none`` (the set is the parameters). Networks: ConvNet3D of widths 4/8/8 (the smallest
clip it accepts is 8 frames at 43 pixels). Every fit runs in this process on one thread.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.distilled import load_distilled
from tsgf_lightning.models import ConvNet3D
from tsgf_lightning.modules.student import StudentModule
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

CLASSES, FRAMES, SIZE = 8, 8, 48
TINY = functools.partial(ConvNet3D, channels=(4, 8, 8))


def datamodule(data, **kwargs) -> VideoDataModule:
    """The tiny embedded set; ``data`` has ``embedded`` (conftest's TinyEmbedded) and ``cache``."""
    kwargs = {"train_set": "none", "steps_per_epoch": 3, "batch_size": 4, **kwargs}
    return VideoDataModule(data.embedded.source(), frames=FRAMES, size=SIZE, flip=False, num_workers=0,
                           cache_dir=data.cache, decode_workers=1, **kwargs)


def trainer(root: Path, max_steps: int, ckpt_every: int | None = None, logger=False, **kwargs) -> L.Trainer:
    """A quiet CPU trainer; ``ckpt_every`` keeps a checkpoint ``step=K.ckpt`` every that many steps."""
    callbacks = list(kwargs.pop("callbacks", []))
    if ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", save_top_k=-1,
                                         every_n_train_steps=ckpt_every))
    checkpointing = kwargs.pop("enable_checkpointing", bool(ckpt_every))
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger,
                     enable_checkpointing=checkpointing, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root, callbacks=callbacks, **kwargs)


def fit(make_module, data, root: Path, max_steps: int, ckpt_every: int | None = None, ckpt_path=None,
        **trainer_kwargs):
    """``make_module(export_dir)`` fitted for ``max_steps`` (from ``ckpt_path`` if given): (trainer, module).

    On one intra-op thread whoever calls (module-scoped fixtures run before conftest's autouse ``one_thread``):
    float sums in another order would make a resumed run differ from its reference in the last bit.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = make_module(str(root / "export"))
        t = trainer(root, max_steps, ckpt_every, **trainer_kwargs)
        t.fit(module, datamodule=datamodule(data), ckpt_path=ckpt_path)
    finally:
        torch.set_num_threads(threads)
    return t, module


def embedded_data(tiny_embedded, cache_dir: str) -> SimpleNamespace:
    """What every helper here takes as ``data``: conftest's tiny embedded set and its shared decode cache."""
    return SimpleNamespace(embedded=tiny_embedded, cache=cache_dir)


def reference_run(make_module, data, tmp_path_factory, name: str, steps: int) -> SimpleNamespace:
    """An uninterrupted fit of ``steps`` steps with a checkpoint after each: ``root`` and the ``module``."""
    root = tmp_path_factory.mktemp(name)
    _, module = fit(make_module, data, root, steps, ckpt_every=1)
    return SimpleNamespace(root=root, module=module)


def exported(root: Path) -> dict:
    return torch.load(root / "export" / "distilled.pt", weights_only=True)


def assert_resumes_exactly(make_module, data, whole: Path, reference, tmp_path: Path, steps: int,
                           at: tuple[int, ...]) -> None:
    """Runs resumed from the checkpoints ``whole/ckpt/step=K.ckpt`` (K in ``at``) of an uninterrupted run of
    ``steps`` steps (``reference``, its module) end bit for bit where it ended: export and every tensor."""
    want = exported(whole)
    for k in at:
        run = tmp_path / f"resumed_at_{k}"
        _, module = fit(make_module, data, run, steps, ckpt_path=str(whole / "ckpt" / f"step={k}.ckpt"))
        got = exported(run)
        assert got["steps"] == want["steps"] == steps
        assert torch.equal(got["videos"], want["videos"]), f"resumed at step {k}"
        for name, value in module.state_dict().items():
            assert torch.equal(value, reference.state_dict()[name]), (k, name)


def assert_a_student_trains_on(path: Path, data, tmp_path: Path) -> None:
    """``distilled.pt`` passes the reader's checks and a StudentModule (hard labels, no teacher) fits 2 steps on it."""
    load_distilled(str(path), data.embedded.source().class_names, FRAMES, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    dm = datamodule(data, train_set="distilled", distilled_path=str(path))
    student = StudentModule(TINY, CLASSES, labels="hard", mix="none")
    before = {k: v.clone() for k, v in student.net.state_dict().items()}
    t = trainer(tmp_path / "student", max_steps=2)
    t.fit(student, datamodule=dm)
    assert t.global_step == 2
    assert any(not torch.equal(v, before[k]) for k, v in student.net.state_dict().items())
