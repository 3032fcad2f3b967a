"""A wrong input never trains silently: config mistakes and unusable checkpoints stop with one line naming them.

Config errors go through ``cli.main`` in-process (``python -m tsgf_lightning`` and ``stage.py`` build the
same parser): each prints at most three lines on stderr, the first naming the bad key or class path,
and the parser's full output is one environment variable away. Checkpoint tests train the embedded
teacher config for two tiny epochs once (two checkpoints and ``last.ckpt`` linking the newest), copy
that run folder per test, and damage the copy.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tsgf_lightning import cli, stage

REPO = Path(__file__).resolve().parent.parent
TEACHER_YAML = REPO / "configs" / "embedded" / "teacher.yaml"
STUDENT_YAML = REPO / "configs" / "embedded" / "student.yaml"
FULL_ERRORS = "TSGF_FULL_ERRORS"  # the documented opt-in to the parser's full output


@pytest.fixture(autouse=True)
def _cli_sandbox(monkeypatch):
    """Undo what an in-process ``cli.main`` does to the test process (see test_teacher_cli.py), and
    start every test without the full-errors opt-in."""
    monkeypatch.setattr(sys, "argv", ["tsgf_lightning"])
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    monkeypatch.delenv(FULL_ERRORS, raising=False)
    with torch.random.fork_rng():
        yield


def _yaml(tmp_path: Path, node: dict) -> str:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(node))
    return str(path)


# ---------------------------------------------------------------------------------- config errors

#: id -> (command line given tmp_path, what the first stderr line starts with after "error: ", and contains)
CONFIG_ERRORS = {
    "unknown option in YAML": (
        lambda tmp: ["--config", str(STUDENT_YAML), "--config",
                     _yaml(tmp, {"model": {"class_path": "tsgf_lightning.modules.student.StudentModule",
                                           "init_args": {"bogus": 1}}})],
        "model.init_args.bogus: StudentModule has no argument 'bogus'", "override.yaml"),
    "unknown option on the command line": (
        lambda tmp: ["fit", "--config", str(STUDENT_YAML), "--model.init_args.bogus=1"],
        "model.init_args.bogus: StudentModule has no argument 'bogus'", "student.yaml or on the command line"),
    "unknown option of a nested class": (
        lambda tmp: ["--config", str(STUDENT_YAML), "--model.init_args.backbone.init_args.chanels=[4, 8, 8]"],
        "model.init_args.backbone.init_args.chanels: MiniC3D has no argument", "did you mean 'channels'?"),
    "unknown data option in YAML": (
        lambda tmp: ["fit", "--config", str(STUDENT_YAML), "--config", _yaml(tmp, {"data": {"framez": 8}})],
        "data.framez: no such option", "did you mean --data.frames?"),
    "abbreviated option": (  # argparse would read it as --trainer.max_steps and train
        lambda tmp: ["--config", str(STUDENT_YAML), "--trainer.max_step=3"],
        "trainer.max_step: no such option", "did you mean --trainer.max_steps?"),
    "unknown class path": (
        lambda tmp: ["--config", str(STUDENT_YAML), "--config",
                     _yaml(tmp, {"model": {"class_path": "tsgf_lightning.modules.NoSuch"}})],
        "model: cannot import class path 'tsgf_lightning.modules.NoSuch'", "has no attribute 'NoSuch'"),
    "bad value type": (
        lambda tmp: ["--config", str(STUDENT_YAML), "--trainer.max_steps=abc"],
        "trainer.max_steps: expected int, got 'abc'", "student.yaml"),
    "missing required argument": (
        lambda tmp: ["--model=tsgf_lightning.modules.teacher.TeacherModule",
                     "--model.init_args.backbone=tsgf_lightning.models.MiniC3D"],
        "data.source: required", "command line"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=str)
def test_a_config_error_is_one_line_naming_the_key(case, tmp_path, capsys):
    make_args, starts, contains = CONFIG_ERRORS[case]
    args = make_args(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args, run=args[0] == "fit")  # parsing fails before anything is built
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 3, "\n".join(lines)
    assert lines[0].startswith(f"error: {starts}"), lines[0]
    assert contains in lines[0]
    assert any(f"{FULL_ERRORS}=1" in line for line in lines)


def test_stage_reports_config_errors_the_same_way(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stage.run(["--config", str(STUDENT_YAML), "--trainer.max_step=3", "--resume"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 3 and lines[0].startswith("error: trainer.max_step: no such option"), lines


def test_the_full_parser_output_is_one_setting_away(monkeypatch, capsys):
    args = ["fit", "--config", str(STUDENT_YAML), "--model.init_args.bogus=1"]
    with pytest.raises(SystemExit):
        cli.main(args)
    short = capsys.readouterr().err
    assert f"run again with {FULL_ERRORS}=1" in short and "usage:" not in short

    monkeypatch.setenv(FULL_ERRORS, "1")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    full = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "usage:" in full and "Does not validate against any of the Union subtypes" in full
    assert "Option 'bogus' is not accepted" in full and len(full.splitlines()) > 20

    monkeypatch.delenv(FULL_ERRORS)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--help"])
    assert exit_info.value.code == 0 and "--trainer.max_steps" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- checkpoints

def teacher_args(tiny_embedded, cache_dir: str, runs: Path, *extra: str) -> list[str]:
    """The shipped embedded teacher config on the tiny set, a narrow network, logging under ``runs``."""
    return ["--config", str(TEACHER_YAML), *tiny_embedded.cli_args(),
            "--model.init_args.backbone.init_args.channels=[4, 8, 8]", f"--data.cache_dir={cache_dir}",
            "--data.num_workers=0", "--data.decode_workers=1", f"--trainer.logger.init_args.save_dir={runs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


def step_of(path: Path) -> int:
    return int(re.search(r"step=(\d+)", path.name)[1])


def epoch_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The run's checkpoint files (not links), oldest first."""
    return sorted((p for p in ckpt_dir.glob("epoch=*.ckpt") if not p.is_symlink()), key=step_of)


def truncate(path: Path) -> None:
    """What a run killed while saving leaves: the first half of the file."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def trained_runs(tiny_embedded, shared_cache_dir, tmp_path_factory) -> Path:
    """A ``runs`` folder after two epochs of the teacher config (read-only: tests copy it)."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng():
        mp.setattr(sys, "argv", ["tsgf_lightning"])
        mp.setenv("PL_GLOBAL_SEED", "0")
        cli.main(["fit", *teacher_args(tiny_embedded, shared_cache_dir, runs, "--trainer.max_epochs=2")])
    ckpt_dir = runs / "teacher" / "checkpoints"
    assert len(epoch_checkpoints(ckpt_dir)) == 2  # the configs keep the two newest
    assert (ckpt_dir / "last.ckpt").resolve() == epoch_checkpoints(ckpt_dir)[-1]
    return runs


@pytest.fixture
def runs_copy(trained_runs, tmp_path) -> Path:
    return Path(shutil.copytree(trained_runs, tmp_path / "runs", symlinks=True))


def test_fit_ckpt_path_last_continues_an_intact_run_and_moves_last(runs_copy, tiny_embedded, shared_cache_dir):
    """The older checkpoint kept on disk must not make the resumed run write ``last-v1.ckpt`` and leave
    ``last.ckpt`` (every later stage's teacher) on the old epoch."""
    ckpt_dir = runs_copy / "teacher" / "checkpoints"
    newest = epoch_checkpoints(ckpt_dir)[-1]
    args = teacher_args(tiny_embedded, shared_cache_dir, runs_copy, "--trainer.max_epochs=3", "--ckpt_path=last")
    built = cli.main(["fit", *args])
    assert built.trainer.ckpt_path == str(newest)
    assert (ckpt_dir / "last.ckpt").resolve() == epoch_checkpoints(ckpt_dir)[-1]
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == built.trainer.global_step
    assert not list(ckpt_dir.glob("last-v*")) and not list(ckpt_dir.glob("*.broken"))


def test_stage_resume_falls_back_past_a_truncated_newest_checkpoint(runs_copy, tiny_embedded, shared_cache_dir):
    ckpt_dir = runs_copy / "teacher" / "checkpoints"
    older, newest = epoch_checkpoints(ckpt_dir)
    truncate(newest)
    broken_size = newest.stat().st_size
    args = teacher_args(tiny_embedded, shared_cache_dir, runs_copy, "--trainer.max_epochs=3")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(newest))} is broken.*previous checkpoint "
                                         rf"{re.escape(str(older))}"):
        result = stage.run([*args, "--resume"])
    assert result["resumed_from"] == str(older)
    assert result["global_step"] == 3 * step_of(older)  # resumed after epoch 0, not restarted
    assert (ckpt_dir / f"{newest.name}.broken").stat().st_size == broken_size  # set aside, not deleted
    assert (ckpt_dir / "last.ckpt.broken").is_symlink()
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 * step_of(older)


@pytest.mark.parametrize("damage", ["truncated target", "dangling link"])
def test_fit_ckpt_path_last_falls_back_past_a_broken_last_link(damage, runs_copy, tiny_embedded, shared_cache_dir):
    ckpt_dir = runs_copy / "teacher" / "checkpoints"
    older, newest = epoch_checkpoints(ckpt_dir)
    if damage == "truncated target":
        truncate(newest)
        named = newest
    else:
        newest.unlink()
        named = ckpt_dir / "last.ckpt"
    args = teacher_args(tiny_embedded, shared_cache_dir, runs_copy, "--trainer.max_epochs=3", "--ckpt_path=last")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(named))} is broken.*resuming from the previous "
                                         rf"checkpoint {re.escape(str(older))}"):
        built = cli.main(["fit", *args])
    assert built.trainer.ckpt_path == str(older)
    assert built.trainer.global_step == 3 * step_of(older)
    assert (ckpt_dir / "last.ckpt.broken").is_symlink()


def test_when_no_checkpoint_is_readable_the_error_names_each(runs_copy, tiny_embedded, shared_cache_dir):
    ckpt_dir = runs_copy / "teacher" / "checkpoints"
    checkpoints = epoch_checkpoints(ckpt_dir)
    for path in checkpoints:
        truncate(path)
    with pytest.raises(SystemExit) as exit_info:
        stage.run([*teacher_args(tiny_embedded, shared_cache_dir, runs_copy), "--resume"])
    message = str(exit_info.value.code)
    assert all(str(path) in message for path in checkpoints) and "delete them" in message
    assert sorted(p.name for p in ckpt_dir.iterdir()) == sorted([p.name for p in checkpoints] + ["last.ckpt"])


def test_an_unreadable_explicit_ckpt_path_is_named(runs_copy, tiny_embedded, shared_cache_dir):
    newest = epoch_checkpoints(runs_copy / "teacher" / "checkpoints")[-1]
    truncate(newest)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", *teacher_args(tiny_embedded, shared_cache_dir, runs_copy, f"--ckpt_path={newest}")])
    assert str(newest) in str(exit_info.value.code) and "cannot read" in str(exit_info.value.code)


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_evaluating_last_without_a_checkpoint_is_an_error(subcommand, tiny_embedded, shared_cache_dir, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([subcommand, *teacher_args(tiny_embedded, shared_cache_dir, runs, "--ckpt_path=last")])
    message = str(exit_info.value.code)
    assert str(runs / "teacher" / "checkpoints") in message and "train first" in message


def test_fit_ckpt_path_last_without_a_checkpoint_starts_from_scratch(tiny_embedded, shared_cache_dir, tmp_path):
    runs = tmp_path / "runs"
    built = cli.main(["fit", *teacher_args(tiny_embedded, shared_cache_dir, runs, "--trainer.max_epochs=1",
                                           "--ckpt_path=last")])
    assert built.trainer.ckpt_path is None and built.trainer.global_step > 0
    assert (runs / "teacher" / "checkpoints" / "last.ckpt").exists()
