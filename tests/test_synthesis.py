"""SynthesisModule end to end on tiny data: shards, resume, frozen teacher, TSGF_O, export, bad input.

Data: three classes of conftest's embedded set (4 training and 2 test clips each, 8 frames at
48x48, linked as a ``VideoFolder``) and a MiniC3D teacher of widths 4/8/8 trained for a few steps.
Three classes at ipc 2 over two ranks make unequal shards (4 and 2 videos). Multi-process runs go
through ``python -m tsgf_lightning fit`` in a subprocess (Lightning's DDP launcher re-executes that
command for rank 1), each under a timeout that kills the whole process group; every process,
this one included, uses one intra-op thread, so one- and two-process runs do the same float work.
Tests that start subprocesses carry the ``slow`` marker (``-m "not slow"`` runs the rest in ~10 s).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn import functional as F

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.sources import VideoFolder
from tsgf_lightning.export import export_distilled
from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules import synthesis as synthesis_module
from tsgf_lightning.modules.frozen import FrozenTeacher
from tsgf_lightning.modules.synthesis import SynthesisModule, apply_crop_flip, crop_flip_thetas, shard_classes
from tsgf_lightning.modules.teacher import TeacherModule
from tsgf_lightning.tsgf import temporal_saliency, tsgf_mask
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD, denormalize

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE, CHANNELS = 8, 48, [4, 8, 8]
THREE = ["grow", "move_left", "move_right"]  # sorted, as VideoFolder orders class folders
IPC = 2
TIMEOUT = 240  # seconds per subprocess run (a run takes ~5-10 s on 2 cores)

#: SynthesisModule arguments of every run here: the TSGF_O path the configs use, with augmentation.
MODEL = dict(ipc=IPC, lr=0.1, mask="binary", mask_target="update", augment=True, augment_flip=True,
             image_every_n_steps=0)


# ---------------------------------------------------------------------------------------------- data
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


def make_datamodule(source, cache: Path, **kwargs) -> VideoDataModule:
    return VideoDataModule(source, frames=FRAMES, size=SIZE, flip=False, batch_size=4, num_workers=0,
                           cache_dir=str(cache), decode_workers=1, **kwargs)




@pytest.fixture(scope="module")
def world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    """conftest's embedded set (8 classes), a 3-class folder of links into it, and a 3-class teacher."""
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


def synthesis_datamodule(world) -> VideoDataModule:
    return make_datamodule(VideoFolder(str(world.three)), world.cache, train_set="none", steps_per_epoch=3)


# ------------------------------------------------------------------------------------ in-process fit
def fit_synthesis(world, run: Path, *, max_steps: int = 2, callbacks=(), ckpt_every: int | None = None,
                  ckpt_path: str | None = None, logger=False, **model) -> tuple[L.Trainer, SynthesisModule]:
    module = SynthesisModule(num_classes=3, **{"teacher_ckpt": str(world.teacher), **MODEL,
                                               "export_dir": str(run / "export"), **model})
    callbacks = list(callbacks)
    if ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=run / "ckpt", save_last=True, save_top_k=0,
                                         every_n_train_steps=ckpt_every))
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger,
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
        callbacks.append({"class_path": "tests.test_synthesis.SigkillAtStep", "init_args": {"step": kill_at}})
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


TWO_RANKS = ("--trainer.devices=2", "--trainer.strategy=ddp_shards")


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


@pytest.fixture(scope="module")
def reference_run(world) -> Path:
    """One process, 5 uninterrupted steps, a checkpoint after every step."""
    run = world.base / "reference"
    run_ok(world, write_config(world, run))
    return run


@pytest.fixture(scope="module")
def killed_run(world) -> Path:
    """The reference config SIGKILLed after step 2's checkpoint (mid-epoch: 3 steps per epoch)."""
    run = world.base / "killed"
    code, out = run_cli(world.env, write_config(world, run, kill_at=2))
    assert code == -signal.SIGKILL, f"expected the run to die by SIGKILL, got exit code {code}:\n{out[-3000:]}"
    ckpt = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert not (run / "export" / "distilled.pt").exists()
    return run


def resume_copy(world, killed: Path, run: Path) -> Path:
    shutil.copytree(killed / "ckpt", run / "ckpt")
    return write_config(world, run)


# ================================================================================ 1. world size
@pytest.mark.slow
def test_two_ranks_with_unequal_shards_give_the_one_rank_set(world, reference_run) -> None:
    run = world.base / "two_ranks"
    run_ok(world, write_config(world, run), *TWO_RANKS)
    exported_1, ckpt_1 = final_videos(reference_run)
    exported_2, ckpt_2 = final_videos(run)
    assert exported_1.shape == (3 * IPC, 3, FRAMES, SIZE, SIZE)
    # float32 checkpoints in [0, 1] pixel units; the all-reduce only reorders float sums.
    pixels = functools.partial(denormalize, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(pixels(ckpt_2), pixels(ckpt_1), atol=1e-4, rtol=0)
    # distilled.pt is float16: at most one rounding step (2^-11 near 1) apart.
    torch.testing.assert_close(exported_2, exported_1, atol=2.0**-11, rtol=0)
    # Not vacuous: five steps moved the videos well beyond that tolerance from their real initialisation.
    dm = synthesis_datamodule(world)
    init = dm.random_subset(IPC, 0)[0].float() / 255
    assert (exported_1 - init).abs().max() > 1e-2
    record_1, record_2 = (torch.load(r / "export" / "distilled.pt", weights_only=True) for r in (reference_run, run))
    assert record_2["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    # Saturation is counted over the whole set, both shards (rank 0 alone holds 4 of the 6 videos).
    assert record_2["init_saturated_fraction"] == record_1["init_saturated_fraction"] > 0
    assert record_2["saturated_fraction"] == pytest.approx(record_1["saturated_fraction"], abs=1e-5)


def test_plain_ddp_is_refused_in_setup() -> None:
    module = SynthesisModule(num_classes=3, teacher_ckpt="unused.ckpt")
    module._trainer = SimpleNamespace(strategy=DDPStrategy())  # setup() must refuse before touching anything else
    with pytest.raises(ValueError, match="ddp_shards"):
        module.setup("fit")


@pytest.mark.slow
def test_plain_ddp_is_refused_end_to_end(world) -> None:
    run = world.base / "plain_ddp"
    code, out = run_cli(world.env, write_config(world, run), "--trainer.devices=2", "--trainer.strategy=ddp")
    assert code != 0
    assert "ValueError" in out and "ddp_shards" in out, out[-3000:]
    assert not (run / "export" / "distilled.pt").exists()


# ================================================================================ 2. resume
@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(world, reference_run, killed_run) -> None:
    run = world.base / "resumed_1"
    run_ok(world, resume_copy(world, killed_run, run), "--ckpt_path", "last")
    exported, ckpt = final_videos(run)
    exported_ref, ckpt_ref = final_videos(reference_run)
    torch.testing.assert_close(ckpt, ckpt_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(exported, exported_ref, atol=1e-6, rtol=0)
    resumed, reference = last_checkpoint(run), last_checkpoint(reference_run)
    assert resumed["global_step"] == reference["global_step"] == 5
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(resumed["optimizer_states"][0]["state"][0][key],
                                   reference["optimizer_states"][0]["state"][0][key], atol=1e-9, rtol=1e-5)


@pytest.mark.slow
def test_resume_on_two_ranks_from_a_one_rank_checkpoint(world, reference_run, killed_run) -> None:
    run = world.base / "resumed_2"
    run_ok(world, resume_copy(world, killed_run, run), "--ckpt_path", "last", *TWO_RANKS)
    exported, ckpt = final_videos(run)
    exported_ref, ckpt_ref = final_videos(reference_run)
    pixels = functools.partial(denormalize, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(pixels(ckpt), pixels(ckpt_ref), atol=1e-4, rtol=0)
    torch.testing.assert_close(exported, exported_ref, atol=2.0**-11, rtol=0)
    # The killed state is far from the final one, so the comparison above is not vacuous.
    killed = torch.load(killed_run / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]["videos"]
    assert (pixels(killed) - pixels(ckpt_ref)).abs().max() > 1e-2


# ================================================================================ 3. frozen teacher
def teacher_state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}


class TeacherProbe(L.Callback):
    """Checks, at every step, that only the videos take part in optimisation and the teacher stays in eval mode."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        training = [name or "<wrapper>" for name, m in pl_module.teacher.named_modules() if m.training]
        assert not training, f"teacher modules in training mode: {training}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps += 1
        assert [p for g in optimizer.param_groups for p in g["params"]] == [pl_module.videos]
        assert pl_module.videos.grad is not None and pl_module.videos.grad.abs().sum() > 0
        for name, p in pl_module.teacher.named_parameters():
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
    bns = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)


def test_a_logged_run_at_ipc_2_beside_the_datamodules_default_ipc(world, tmp_path) -> None:
    """The DataModule's ``ipc`` (random subsets only) stays 1 while synthesis runs at ipc 2.

    With a logger, Lightning merges module and DataModule hyper-parameters and refuses one key with
    two values; a stale DataModule ``ipc`` once stopped every synthesis above IPC 1 in its first step.
    """
    logger = TensorBoardLogger(str(tmp_path), name="synthesis", version="")
    trainer, module = fit_synthesis(world, tmp_path, max_steps=1, logger=logger)
    assert trainer.global_step == 1 and module.videos.shape[0] == 3 * IPC
    logged = yaml.unsafe_load((tmp_path / "synthesis" / "hparams.yaml").read_text())  # holds tuples
    assert logged["ipc"] == IPC and logged["train_set"] == "none"


def test_teacher_is_frozen_through_synthesis(world, tmp_path) -> None:
    probe = TeacherProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=3, callbacks=[probe], mask="eq8", mask_target="gradient")
    assert probe.steps == 3
    assert_teacher_unchanged(module.teacher, world.teacher)
    module.train()  # whoever puts the module in training mode, the teacher stays in eval mode
    assert not any(m.training for m in module.teacher.modules())


# ================================================================================ 4. the TSGF_O hook
class StepProbe(L.Callback):
    """Records each optimiser step from outside the module.

    Callback hooks run before the module's: ``on_before_optimizer_step`` sees the raw gradient (before
    the TSGF mask) and the videos before the step; ``on_train_batch_end`` sees the finished step and
    the gradient the optimiser used. ``momentum`` plants an Adam state with non-zero moments before
    the first step (as after earlier steps), so zero-gradient elements would still move.
    """

    def __init__(self, momentum: bool = False):
        self.momentum, self.records = momentum, []

    def on_train_start(self, trainer, pl_module) -> None:
        if self.momentum:
            p, g = pl_module.videos, torch.Generator().manual_seed(0)
            trainer.optimizers[0].state[p] = {"step": torch.tensor(3.0), "exp_avg": torch.randn(p.shape, generator=g),
                                              "exp_avg_sq": torch.rand(p.shape, generator=g) + 0.5}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        state = optimizer.state.get(pl_module.videos, {})
        self.records.append({"before": pl_module.videos.detach().clone(), "raw": pl_module.videos.grad.clone(),
                             "exp_avg": state["exp_avg"].clone() if "exp_avg" in state else None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.records[-1].update(after=pl_module.videos.detach().clone(), used=pl_module.videos.grad.clone())


def expected_mask(videos: torch.Tensor, module: SynthesisModule, shape: str, signed: bool = False) -> torch.Tensor:
    """Eq. 6-8 on the current videos in [0, 1] pixel units, recomputed outside the module: ``(N, 1, T, 1, 1)``."""
    h = module.hparams
    s = temporal_saliency(denormalize(videos, IMAGENET_MEAN, IMAGENET_STD), h.window_length, h.window)
    return tsgf_mask(s, h.eps, h.eps_mode, shape, signed)[:, None, :, None, None]


def frame_views(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elements of ``x (N, C, T, H, W)`` on frames where ``mask (N, 1, T, 1, 1)`` is 0, and elsewhere."""
    zero = (mask == 0).expand_as(x)
    return x[zero], x[~zero]


def test_binary_gradient_mask_zeroes_key_frames_and_keeps_the_rest(world, tmp_path) -> None:
    probe = StepProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="binary", mask_target="gradient")
    for rec in probe.records:
        m = expected_mask(rec["before"], module, "binary")
        assert 0 < (m == 0).sum() < m.numel()  # both kinds of frames are present
        key_used, calm_used = frame_views(rec["used"], m)
        key_raw, calm_raw = frame_views(rec["raw"], m)
        assert key_raw.abs().sum() > 0 and torch.all(key_used == 0)
        assert torch.equal(calm_used, calm_raw)


def test_eq8_gradient_mask_scales_each_frame_by_the_recomputed_mask(world, tmp_path) -> None:
    probe = StepProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="eq8", mask_target="gradient")
    for rec in probe.records:
        m = expected_mask(rec["before"], module, "eq8")
        assert ((m > 0) & (m < 1)).any()  # a graded mask, not a binary one
        torch.testing.assert_close(rec["used"], rec["raw"] * m, rtol=1e-6, atol=0)


def test_signed_mask_flips_the_gradient_of_key_frames(world, tmp_path) -> None:
    probe = StepProbe()
    _, module = fit_synthesis(world, tmp_path, max_steps=1, callbacks=[probe], mask="eq8", mask_target="gradient",
                              signed_mask=True)
    rec = probe.records[0]
    m = expected_mask(rec["before"], module, "eq8", signed=True)
    torch.testing.assert_close(rec["used"], rec["raw"] * m, rtol=1e-6, atol=0)
    key = (m < 0).expand_as(rec["raw"]) & (rec["raw"] != 0)
    calm = (m > 0).expand_as(rec["raw"]) & (rec["raw"] != 0)
    assert key.any() and calm.any()
    assert torch.all(torch.sign(rec["used"][key]) == -torch.sign(rec["raw"][key]))
    assert torch.all(torch.sign(rec["used"][calm]) == torch.sign(rec["raw"][calm]))


def test_gradient_mask_does_not_stop_adam_momentum(world, tmp_path) -> None:
    """Why ``mask_target: update`` exists: zero gradient, yet key frames move on Adam's first moment."""
    probe = StepProbe(momentum=True)
    _, module = fit_synthesis(world, tmp_path, max_steps=1, callbacks=[probe], mask="binary", mask_target="gradient")
    rec = probe.records[0]
    m = expected_mask(rec["before"], module, "binary")
    key_used, _ = frame_views(rec["used"], m)
    assert torch.all(key_used == 0)
    key_before, _ = frame_views(rec["before"], m)
    key_after, _ = frame_views(rec["after"], m)
    assert (key_after - key_before).abs().max() > 1e-3


def test_update_mask_keeps_key_frames_still_under_momentum(world, tmp_path) -> None:
    probe = StepProbe(momentum=True)
    _, module = fit_synthesis(world, tmp_path, max_steps=2, callbacks=[probe], mask="binary", mask_target="update")
    for i, rec in enumerate(probe.records):
        m = expected_mask(rec["before"], module, "binary")
        assert 0 < (m == 0).sum() < m.numel()
        key_exp_avg, _ = frame_views(rec["exp_avg"], m)
        assert key_exp_avg.abs().min() > 0, f"step {i}: no momentum on key frames, the test would prove nothing"
        key_before, calm_before = frame_views(rec["before"], m)
        key_after, calm_after = frame_views(rec["after"], m)
        assert torch.equal(key_after, key_before)
        assert (calm_after - calm_before).abs().max() > 1e-3


# ================================================================================ 5. augmentation and shards
def crop_theta(box: tuple[int, int, int, int], H: int, W: int, flip: bool) -> torch.Tensor:
    """``affine_grid`` matrix of the pixel box ``[y0, y1) x [x0, x1)`` resized to the whole frame."""
    y0, y1, x0, x1 = box
    w, h = (x1 - x0) / W, (y1 - y0) / H  # half-sizes in normalised units (the frame spans [-1, 1])
    cx, cy = (x0 + x1) / W - 1, (y0 + y1) / H - 1
    return torch.tensor([[-w if flip else w, 0.0, cx], [0.0, h, cy]])


def naive_crop_flip(video: torch.Tensor, box, flip: bool) -> torch.Tensor:
    """One clip ``(C, T, H, W)``: the same box cut out of every frame, resized back, optionally mirrored."""
    C, T, H, W = video.shape
    y0, y1, x0, x1 = box
    frames = video.permute(1, 0, 2, 3)[:, :, y0:y1, x0:x1]  # (T, C, h, w): frames as a batch
    out = F.interpolate(frames, size=(H, W), mode="bilinear", align_corners=False).permute(1, 0, 2, 3)
    return out.flip(-1) if flip else out


def inside(box, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows/columns whose bilinear taps all lie inside the box (interpolate clamps at the box's edge,
    grid_sample reads the pixels just outside it: only those border rows/columns may differ)."""
    y0, y1, x0, x1 = box
    ys = (torch.arange(H) + 0.5) * (y1 - y0) / H - 0.5
    xs = (torch.arange(W) + 0.5) * (x1 - x0) / W - 0.5
    return (ys >= 0) & (ys <= y1 - y0 - 1), (xs >= 0) & (xs <= x1 - x0 - 1)


def test_apply_crop_flip_matches_a_per_video_crop_and_resize() -> None:
    N, C, T, H, W = 3, 2, 4, 16, 20
    videos = torch.randn(N, C, T, H, W, generator=torch.Generator().manual_seed(0))
    boxes = [(2, 14, 3, 19), (0, 16, 0, 20), (5, 13, 4, 12)]
    flips = [False, True, True]
    theta = torch.stack([crop_theta(b, H, W, f) for b, f in zip(boxes, flips)])
    out = apply_crop_flip(videos, theta)
    assert out.shape == videos.shape
    for i, (box, flip) in enumerate(zip(boxes, flips)):
        ref = naive_crop_flip(videos[i], box, flip)
        rows, cols = inside(box, H, W)
        if flip:
            cols = cols.flip(0)
        torch.testing.assert_close(out[i][:, :, rows][:, :, :, cols], ref[:, :, rows][:, :, :, cols],
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], videos[1].flip(-1), atol=1e-5, rtol=1e-5)  # whole frame, mirrored


def test_apply_crop_flip_carries_gradients_to_the_videos() -> None:
    videos = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    theta = torch.stack([crop_theta((1, 7, 2, 8), 8, 8, False), crop_theta((0, 8, 0, 8), 8, 8, True)])
    apply_crop_flip(videos, theta).sum().backward()
    assert videos.grad[0].abs().sum() > 0 and videos.grad[1].abs().sum() > 0


def test_crop_flip_thetas_stay_inside_the_frame_and_draw_both_flips() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = crop_flip_thetas(500, gen, (0.25, 1.0), flip=True)
    sx, cx, h, cy = theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2]
    w = sx.abs()
    assert torch.all(cx.abs() + w <= 1 + 1e-6) and torch.all(cy.abs() + h <= 1 + 1e-6)
    assert torch.all(w * h <= 1.0 + 1e-6) and torch.all(w * h >= 0.25 - 1e-6)  # area fraction within `scale`
    assert (sx < 0).any() and (sx > 0).any()
    assert torch.all(theta[:, 0, 1] == 0) and torch.all(theta[:, 1, 0] == 0)
    assert torch.all(crop_flip_thetas(50, gen, (0.5, 1.0), flip=False)[:, 0, 0] > 0)
    again = crop_flip_thetas(500, torch.Generator().manual_seed(0), (0.25, 1.0), flip=True)
    assert torch.equal(theta, again)


@pytest.mark.parametrize("classes,ranks", [(3, 2), (8, 3), (5, 5), (9, 4), (7, 1)])
def test_shard_classes_cover_every_class_once_in_balanced_ranges(classes: int, ranks: int) -> None:
    shards = [shard_classes(classes, ranks, r) for r in range(ranks)]
    assert [c for s in shards for c in s] == list(range(classes))  # contiguous, in order, each once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_shard_classes_refuses_more_ranks_than_classes() -> None:
    with pytest.raises(ValueError, match="4 ranks for 3 classes"):
        shard_classes(3, 4, 0)


# ================================================================================ 6. export
def decode_frames(path: Path) -> list:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.slow
def test_distilled_pt_holds_the_documented_contents(world, reference_run) -> None:
    out = reference_run / "export"
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
def test_export_cli_reproduces_the_videos_from_the_last_checkpoint(world, reference_run, tmp_path) -> None:
    code, out = run_cli(world.env, None, str(reference_run / "ckpt" / "last.ckpt"), "--output-dir", str(tmp_path),
                        module="tsgf_lightning.export", command=None)
    assert code == 0, out[-3000:]
    again = torch.load(tmp_path / "distilled.pt", weights_only=True)
    original = torch.load(reference_run / "export" / "distilled.pt", weights_only=True)
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
    real_save_mp4 = synthesis_module.export_distilled.__globals__["save_mp4"]

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


# ================================================================================ 7. bad input
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
        teacher.forward = lambda video: teacher.net(video) * float("nan")
        return teacher, record

    monkeypatch.setattr(synthesis_module, "load_teacher", nan_teacher)
    with pytest.raises(FloatingPointError, match="not finite at step 2"):
        fit_synthesis(world, tmp_path, max_steps=4, ckpt_every=1, ckpt_path=str(last))
    assert (last.read_bytes(), exported.read_bytes()) == before
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
