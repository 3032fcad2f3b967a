"""What the SynthesisModule tests share: tiny data, a tiny teacher, in-process and subprocess fits.

Data: three classes of conftest's embedded set (4 training and 2 test clips each, 8 frames at
48x48, linked as a ``VideoFolder``) and a MiniC3D teacher of widths 4/8/8 trained for a few steps.
Three classes at ipc 2 over two ranks make unequal shards (4 and 2 videos). Multi-process runs go
through ``python -m tsgf_lightning fit`` in a subprocess (Lightning's DDP launcher re-executes that
command for rank 1), each under a timeout that kills the whole process group; every process,
the test process included, uses one intra-op thread, so one- and two-process runs do the same float
work. Tests that start subprocesses carry the ``slow`` marker.

The world (folder, teacher) and the reference runs are built once per session whichever test file
asks first (:func:`once`); each test file declares thin fixtures over the builders here.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.sources import VideoFolder
from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules.synthesis import SynthesisModule
from tsgf_lightning.modules.teacher import TeacherModule

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE, CHANNELS = 8, 48, [4, 8, 8]
THREE = ["grow", "move_left", "move_right"]  # sorted, as VideoFolder orders class folders
IPC = 2
TIMEOUT = 240  # seconds per subprocess run (a run takes ~5-10 s on 2 cores)
TWO_RANKS = ("--trainer.devices=2", "--trainer.strategy=ddp_shards")

#: SynthesisModule arguments of every run here: the TSGF_O path the configs use, with augmentation.
MODEL = dict(ipc=IPC, lr=0.1, mask="binary", mask_target="update", augment=True, augment_flip=True,
             image_every_n_steps=0)

_SESSION: dict[str, object] = {}


def once(name: str, make):
    """``make()`` the first time ``name`` is asked for in this pytest session, the same object afterwards."""
    if name not in _SESSION:
        _SESSION[name] = make()
    return _SESSION[name]


# ---------------------------------------------------------------------------------------------- data
def make_datamodule(source, cache: Path, **kwargs) -> VideoDataModule:
    return VideoDataModule(source, frames=FRAMES, size=SIZE, flip=False, batch_size=4, num_workers=0,
                           cache_dir=str(cache), decode_workers=1, **kwargs)


def train_teacher(path: Path, source, cache: Path, channels=CHANNELS, steps: int = 3) -> Path:
    """A TeacherModule checkpoint after a few AdamW steps: real weights, real BN running statistics."""
    dm = make_datamodule(source, cache)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = TeacherModule(functools.partial(MiniC3D, channels=channels), dm.num_classes)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
        trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


def build_world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    """conftest's embedded set (8 classes), a 3-class folder of links into it, and a 3-class teacher."""
    def make() -> SimpleNamespace:
        base = tmp_path_factory.mktemp("synthesis")
        embedded = Path(tiny_embedded.root)
        assert (tiny_embedded.frames, tiny_embedded.size) == (FRAMES, SIZE)
        three = base / "three"
        for split in ("train", "test"):
            (three / split).mkdir(parents=True)
            for name in THREE:
                (three / split / name).symlink_to(embedded / split / name, target_is_directory=True)
        cache = Path(shared_cache_dir)
        teacher = train_teacher(base / "teacher3.ckpt", VideoFolder(str(three)), cache)
        return SimpleNamespace(base=base, embedded=embedded, three=three, cache=cache, teacher=teacher,
                               env=subprocess_env)
    return once("world", make)


def synthesis_datamodule(world) -> VideoDataModule:
    return make_datamodule(VideoFolder(str(world.three)), world.cache, train_set="none", steps_per_epoch=3)


# ------------------------------------------------------------------------------------ in-process fit
def fit_synthesis(world, run: Path, *, max_steps: int = 2, callbacks=(), ckpt_every: int | None = None,
                  ckpt_path: str | None = None, logger=False, precision: str = "32-true",
                  **model) -> tuple[L.Trainer, SynthesisModule]:
    module = SynthesisModule(num_classes=3, **{"teacher_ckpt": str(world.teacher), **MODEL,
                                               "export_dir": str(run / "export"), **model})
    callbacks = list(callbacks)
    if ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=run / "ckpt", save_last=True, save_top_k=0,
                                         every_n_train_steps=ckpt_every))
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, precision=precision,
                        enable_checkpointing=bool(ckpt_every), enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=run, callbacks=callbacks)
    trainer.fit(module, datamodule=synthesis_datamodule(world), ckpt_path=ckpt_path)
    return trainer, module


# ------------------------------------------------------------------------------------ subprocess fit
class SigkillAtStep(L.Callback):
    """SIGKILLs its own process (no clean-up at all, like a pre-empted job) once ``step`` steps are done.

    At the start of batch ``step`` the ModelCheckpoint of step ``step`` has just been written:
    killing here is "SIGKILL after that checkpoint appears", without a race against a poller.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def write_config(world, run: Path, *, max_steps: int = 5, kill_at: int | None = None, **model) -> Path:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0,
                                "every_n_train_steps": 1}}]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.synthesis_utils.SigkillAtStep", "init_args": {"step": kill_at}})
    config = {
        "seed_everything": 0,
        "model": {"class_path": "tsgf_lightning.modules.synthesis.SynthesisModule",
                  "init_args": {"teacher_ckpt": str(world.teacher), **MODEL, "export_dir": str(run / "export"),
                                **model}},
        "data": {"source": {"class_path": "tsgf_lightning.data.sources.VideoFolder",
                            "init_args": {"root": str(world.three)}},
                 "frames": FRAMES, "size": SIZE, "flip": False, "train_set": "none", "steps_per_epoch": 3,
                 "num_workers": 0, "cache_dir": str(world.cache), "decode_workers": 1},
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run),
                    "callbacks": callbacks},
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(env: dict, config: Path | None, *extra: str, module: str = "tsgf_lightning", command: str | None = "fit",
            timeout: float = TIMEOUT) -> tuple[int, str]:
    """``python -m MODULE [COMMAND] --config CONFIG EXTRA`` in a new session; returns (exit code, output)."""
    args = [sys.executable, "-m", module, *([command] if command else []),
            *(["--config", str(config)] if config else []), *extra]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too: it lives in the same session
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args)} ran past {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def run_ok(world, config: Path, *extra: str) -> None:
    code, out = run_cli(world.env, config, *extra)
    assert code == 0, out[-4000:]


def last_checkpoint(run: Path) -> dict:
    """The newest ``last*.ckpt`` of a run, as ``--ckpt_path last`` finds it.

    A run resumed in a copied folder writes ``last-v1.ckpt``: ModelCheckpoint does not take over a
    ``last.ckpt`` written under another ``dirpath``.
    """
    newest = max((run / "ckpt").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    return torch.load(newest, weights_only=True)


def final_videos(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(videos of distilled.pt as float32, float32 normalised videos of the last checkpoint)."""
    exported = torch.load(run / "export" / "distilled.pt", weights_only=True)["videos"].float()
    return exported, last_checkpoint(run)["state_dict"]["videos"]


def reference_run(world) -> Path:
    """One process, 5 uninterrupted steps, a checkpoint after every step."""
    def make() -> Path:
        run = world.base / "reference"
        run_ok(world, write_config(world, run))
        return run
    return once("reference_run", make)


def killed_run(world) -> Path:
    """The reference config SIGKILLed after step 2's checkpoint (mid-epoch: 3 steps per epoch)."""
    def make() -> Path:
        run = world.base / "killed"
        code, out = run_cli(world.env, write_config(world, run, kill_at=2))
        assert code == -signal.SIGKILL, f"expected the run to die by SIGKILL, got exit code {code}:\n{out[-3000:]}"
        ckpt = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 2
        assert not (run / "export" / "distilled.pt").exists()
        return run
    return once("killed_run", make)


def resume_copy(world, killed: Path, run: Path) -> Path:
    shutil.copytree(killed / "ckpt", run / "ckpt")
    return write_config(world, run)
