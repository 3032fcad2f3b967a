"""The teacher through the command line users run.

Subprocess tests run ``python -m tsgf_lightning`` exactly as a user would (``configs/embedded/
data.yaml`` + ``teacher.yaml`` with overrides pointing it at the tiny embedded set and a narrow MiniC3D), from a
temporary working directory: fit then test, a run killed mid-epoch and resumed with ``--ckpt_path
last``, and a two-process DDP run on CPU. The in-process tests check that bad configs fail with a
message naming the bad input (every shipped config file: ``tests/test_configs.py``).
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tsgf_lightning import cli
from tsgf_lightning.data.sources import validation_split

REPO = Path(__file__).resolve().parent.parent
DATA_YAML = REPO / "configs" / "embedded" / "data.yaml"
TEACHER_YAML = REPO / "configs" / "embedded" / "teacher.yaml"
#: The embedded teacher as users run it: the dataset's data file, then the stage's own.
TEACHER_CONFIGS = ("--config", str(DATA_YAML), "--config", str(TEACHER_YAML))


# --------------------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True)
def _cli_sandbox(monkeypatch):
    """Undo what an in-process ``cli.main`` does to the test process: ``seed_everything`` reseeds the
    global RNG and sets PL_GLOBAL_SEED; and LightningCLI warns when sys.argv holds pytest's arguments."""
    monkeypatch.setattr(sys, "argv", ["tsgf_lightning"])
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # recorded, so teardown restores the previous state
    with torch.random.fork_rng():
        yield


def teacher_command(subcommand: str, tiny_embedded, cache_dir: str, runs: Path, *extra: str) -> list[str]:
    """The shipped embedded teacher config, pointed at the tiny data, a narrow network and ``runs``."""
    return [sys.executable, "-m", "tsgf_lightning", subcommand, *TEACHER_CONFIGS,
            *tiny_embedded.cli_args(),
            "--model.init_args.backbone.init_args.channels=[4, 8, 8]",
            f"--data.cache_dir={cache_dir}", "--data.num_workers=0", "--data.decode_workers=1",
            f"--trainer.logger.init_args.save_dir={runs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


def run(command: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(command)}\n--- stdout\n{result.stdout[-3000:]}\n"
                                    f"--- stderr\n{result.stderr[-6000:]}")
    return result


def scalars(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Event file name -> tag -> [(step, value)], for every TensorBoard event file in ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        out[path.name] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return out


def fit_size(tiny_embedded) -> int:
    """Training videos of the tiny set left after the teacher config's validation carve-out."""
    items = tiny_embedded.source().items("train")
    fraction = config_value(DATA_YAML, "data", "val_fraction", default=0.0)
    if not fraction:
        return len(items)
    return len(validation_split(items, fraction, config_value(DATA_YAML, "data", "val_seed", default=0))[0])


def config_value(path: Path, *keys: str, default=None):
    node = yaml.safe_load(path.read_text())
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


# ------------------------------------------------------------------------------- fit, test, resume

def test_fit_then_test_logs_metrics(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path):
    runs = tmp_path / "runs"
    run(teacher_command("fit", tiny_embedded, shared_cache_dir, runs, "--trainer.max_epochs=2",
                        "--trainer.log_every_n_steps=1"), tmp_path, subprocess_env, timeout=240)
    run_dir = runs / "teacher"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    fit_events = scalars(run_dir)
    assert len(fit_events) == 1
    tags = next(iter(fit_events.values()))
    assert "train/loss" in tags and "val/acc_top1" in tags and "val/acc_top5" in tags
    assert all(math.isfinite(v) for _, v in tags["train/loss"])
    assert len(tags["val/acc_top1"]) == 2  # one validation per epoch

    result = run(teacher_command("test", tiny_embedded, shared_cache_dir, runs, "--ckpt_path=last"), tmp_path,
                 subprocess_env, timeout=240)
    assert "test/acc_top1" in result.stdout
    test_events = [tags for name, tags in scalars(run_dir).items() if name not in fit_events]
    assert len(test_events) == 1
    for tag in ("test/acc_top1", "test/acc_top5"):
        (_, value), = test_events[0][tag]
        assert 0.0 <= value <= 1.0
    assert test_events[0]["test/acc_top5"][0][1] >= test_events[0]["test/acc_top1"][0][1]
    assert sorted(p.name for p in runs.iterdir()) == ["teacher"]  # no extra run folders


def test_a_killed_fit_resumes_from_last_in_the_same_run_dir(tiny_embedded, shared_cache_dir, subprocess_env,
                                                           tmp_path):
    runs = tmp_path / "runs"
    epochs, repeats, batch = 3, 25, 16  # 38 steps per epoch
    steps_per_epoch = math.ceil(fit_size(tiny_embedded) * repeats / batch)
    extra = (f"--trainer.max_epochs={epochs}", f"--data.train_repeats={repeats}", f"--data.batch_size={batch}",
             "--trainer.log_every_n_steps=1")
    command = teacher_command("fit", tiny_embedded, shared_cache_dir, runs, *extra)
    last = runs / "teacher" / "checkpoints" / "last.ckpt"

    log = tmp_path / "killed_run.log"  # a file, not a pipe: nobody reads while it runs, and a full pipe blocks
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not last.exists():
            assert proc.poll() is None, f"fit ended before writing a checkpoint:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no last.ckpt within 240 s"
            time.sleep(0.05)
        # A little into the next epoch (one takes 0.4-3 s here), far from the end of the run.
        time.sleep(0.3)
        assert proc.poll() is None, "fit finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert killed_at % steps_per_epoch == 0 and 0 < killed_at < epochs * steps_per_epoch

    run(command + ["--ckpt_path=last"], tmp_path, subprocess_env, timeout=240)
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == epochs * steps_per_epoch  # what an uninterrupted run reaches
    assert final["epoch"] == epochs - 1

    assert sorted(p.name for p in runs.iterdir()) == ["teacher"]
    run_dir = runs / "teacher"
    assert not list(run_dir.glob("version_*"))
    events = scalars(run_dir)
    assert len(events) == 2  # the killed run's file and the resumed run's, side by side
    resumed = events[max(events, key=lambda name: (run_dir / name).stat().st_mtime_ns)]
    steps = [s for s, _ in resumed["train/loss"]]
    # The resumed run logs every step from the checkpoint on: global_step continues, not restarts.
    assert steps == list(range(killed_at, epochs * steps_per_epoch))


def test_ddp_on_two_cpu_processes(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path):
    runs = tmp_path / "runs"
    command = teacher_command("fit", tiny_embedded, shared_cache_dir, runs, "--trainer.max_epochs=1",
                              "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu")
    run(command, tmp_path, subprocess_env, timeout=420)
    ckpt = runs / "teacher" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    # Each rank sees half the training set: ceil(ceil(n / 2) / batch) steps.
    assert state["global_step"] == math.ceil(math.ceil(fit_size(tiny_embedded) / 2) / 16)
    assert state["tsgf"]["stage"] == "teacher" and state["tsgf"]["num_classes"] == 8


def test_the_shared_teacher_checkpoint_loads_as_a_frozen_teacher(teacher_checkpoint, tiny_embedded):
    from tsgf_lightning.data.spec import DataSpec
    from tsgf_lightning.modules.frozen import load_teacher
    from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

    path = teacher_checkpoint()
    assert teacher_checkpoint(channels=[4, 8, 8]) == path  # cached per argument set
    names = tiny_embedded.source().class_names
    teacher, record = load_teacher(path, 8, spec=DataSpec(names, 8, 48, IMAGENET_MEAN, IMAGENET_STD))
    assert record["stage"] == "teacher" and record["arch"]["init_args"]["channels"] == [4, 8, 8]
    assert (record["class_names"], record["frames"], record["size"]) == (names, 8, 48)
    assert not teacher.net.training and not any(p.requires_grad for p in teacher.net.parameters())
    with torch.no_grad():
        assert teacher(torch.zeros(2, 3, 8, 48, 48)).shape == (2, 8)
    other_std = (0.5, 0.5, 0.5)  # a teacher fed other normalisation would see shifted inputs: refused
    with pytest.raises(ValueError, match=r"std = \[.*\] but the data config says \[0.5, 0.5, 0.5\]"):
        load_teacher(path, 8, spec=DataSpec(names, 8, 48, IMAGENET_MEAN, other_std))


# ----------------------------------------------------------------------------------- bad configs

def test_an_unknown_architecture_is_named_in_the_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*TEACHER_CONFIGS, "--model.init_args.backbone=tsgf_lightning.models.NoSuchNet"],
                 run=False)
    assert exit_info.value.code != 0
    assert "tsgf_lightning.models.NoSuchNet" in capsys.readouterr().err


def test_a_missing_dataset_root_is_named(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        cli.main(["--model=tsgf_lightning.modules.teacher.TeacherModule",
                  "--model.init_args.backbone=tsgf_lightning.models.MiniC3D",
                  "--data.source=tsgf_lightning.data.sources.VideoFolder",
                  f"--data.source.init_args.root={missing}"], run=False)


def test_a_missing_split_file_is_named(tmp_path):
    lists = tmp_path / "ucf" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (tmp_path / "ucf" / "UCF-101").mkdir()
    (lists / "classInd.txt").write_text("1 A\n2 B\n")
    (lists / "trainlist01.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="testlist01.txt"):
        cli.main(["--model=tsgf_lightning.modules.teacher.TeacherModule",
                  "--model.init_args.backbone=tsgf_lightning.models.MiniC3D",
                  "--data.source=tsgf_lightning.data.sources.UCF101",
                  f"--data.source.init_args.root={tmp_path / 'ucf'}"], run=False)


def test_distilled_training_without_a_path_is_refused(tiny_embedded, tmp_path):
    with pytest.raises(ValueError, match="distilled_path"):
        cli.main([*TEACHER_CONFIGS, *tiny_embedded.cli_args(), "--data.train_set=distilled",
                  f"--trainer.default_root_dir={tmp_path}"], run=False)
