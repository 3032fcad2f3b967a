"""The pipeline end to end on a tiny embedded dataset: results files, skipping, resuming, parallel stages.

The configs are configs/embedded/*.yaml with overrides baked into the YAML (conftest's tiny
Embedded root and shared decode cache, one epoch, three synthesis steps, a narrow backbone), so every
stage is a real ``python -m tsgf_lightning.stage`` process that takes a few seconds (one torch thread
per process, conftest's ``subprocess_env``). One complete run is shared by the tests that only read
or resume it. Its checks and plan, with no stage run: tests/test_pipeline_plan.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tsgf_lightning.results import ROW_KEYS

from .pipeline_utils import FOUR, REPO, make_config_dir, pipeline_command, run_cli


def _mtimes(out: Path) -> dict[str, int]:
    files = [*out.glob("logs/*.log"), *out.rglob("result.json")]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.fixture
def finished(finished_pipeline):
    """One complete run of the four methods, IPC 1, two seeds: (config dir, OUT, the run's stdout)."""
    return finished_pipeline


# ---------------------------------------------------------------------- (1) a complete run
@pytest.mark.slow
def test_full_run_writes_results_table_plot_and_summary(finished):
    cfg, out, stdout = finished
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == FOUR
    for r in rows:
        assert tuple(r) == (*ROW_KEYS, "fingerprints")
        assert r["arch"] == "MiniC3D"
        assert 0.0 <= r["top1_mean"] <= 1.0 and 0.0 <= r["top5_mean"] <= 1.0
    full, *students = rows
    assert (full["ipc"], full["seeds"], full["top1_std"]) == (None, 1, 0.0)
    teacher = json.loads((out / "teacher" / "result.json").read_text())["test"]
    assert full["top1_mean"] == pytest.approx(teacher["test/acc_top1"])
    for r in students:
        assert (r["ipc"], r["seeds"]) == (1, 2)
        per_seed = [json.loads((out / "students" / r["method"] / "ipc1" / f"seed{s}" / "result.json").read_text())
                    ["test"]["test/acc_top1"] for s in (0, 1)]
        # sample std of two values is |a - b| / sqrt(2)
        assert r["top1_mean"] == pytest.approx((per_seed[0] + per_seed[1]) / 2)
        assert r["top1_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
        # each row names the stages its numbers came from
        digests = [json.loads((out / "students" / r["method"] / "ipc1" / f"seed{s}" / "result.json").read_text())
                   ["fingerprint"]["digest"][:12] for s in (0, 1)]
        assert r["fingerprints"] == digests and len(set(digests)) == 2
    assert (out / "synthesis_ipc1" / "distilled.pt").is_file()
    assert (out / "teacher" / "checkpoints" / "last.ckpt").exists()
    # every stage records what it was, read from its own run (the table is built from these)
    recorded = {path: json.loads((out / path / "result.json").read_text())["stage"] for path in
                ("teacher", "synthesis_ipc1", "students/random/ipc1/seed1", "students/tsgf/ipc1/seed0")}
    assert recorded == {
        "teacher": {"kind": "teacher", "method": None, "ipc": None, "seed": 0, "arch": "MiniC3D"},
        "synthesis_ipc1": {"kind": "synthesis", "method": None, "ipc": 1, "seed": 0, "arch": None},
        "students/random/ipc1/seed1": {"kind": "student", "method": "random", "ipc": 1, "seed": 1, "arch": "MiniC3D"},
        "students/tsgf/ipc1/seed0": {"kind": "student", "method": "tsgf", "ipc": 1, "seed": 0, "arch": "MiniC3D"}}

    md = (out / "results.md").read_text()
    for method in FOUR:
        assert f"| {method} | MiniC3D |" in md
    assert "## Top-5" in md and "## Stages" in md and f"{100 * full['top1_mean']:.1f} ± 0.0" in md
    assert (out / "accuracy_vs_ipc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "summary").glob("events.out.tfevents.*"))

    logs = sorted(p.name for p in (out / "logs").glob("*.log"))
    assert logs == sorted(["teacher.log", "synthesis_ipc1.log"]
                          + [f"student_{m}_ipc1_seed{s}.log" for m in FOUR[1:] for s in (0, 1)])
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 8 and all(" done in " in line for line in lines)
    assert lines[0].startswith("[1/8] teacher ... done in") and "top1 " in lines[0]
    # the random baseline really ran with hard labels and no mixing, random+student with student.yaml's
    hp = yaml.safe_load((out / "students" / "random" / "ipc1" / "seed1" / "hparams.yaml").read_text())
    assert (hp["labels"], hp["mix"], hp["seed"]) == ("hard", "none", 1)
    hp = yaml.safe_load((out / "students" / "random+student" / "ipc1" / "seed0" / "hparams.yaml").read_text())
    assert (hp["labels"], hp["mix"]) == ("soft", "tsgf")


# ---------------------------------------------------------------------- (2) skipping and resuming
@pytest.mark.slow
def test_rerun_skips_every_stage_then_redoes_exactly_a_deleted_one(finished, subprocess_env):
    cfg, out, _ = finished
    before = _mtimes(out)
    assert len(before) == 16  # 8 logs + 8 results
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 8 and all("skipped" in line for line in lines)
    assert _mtimes(out) == before

    gone = out / "students" / "tsgf" / "ipc1" / "seed1" / "result.json"
    gone.unlink()
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line for line in lines if "skipped" not in line] == [
        next(line for line in lines if line.startswith("[8/8] student tsgf ipc1 seed1 ... done in"))]
    after = _mtimes(out)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["logs/student_tsgf_ipc1_seed1.log", "students/tsgf/ipc1/seed1/result.json"]


@pytest.mark.slow
def test_interrupted_run_resumes_and_finishes(finished, tmp_path, tiny_embedded, shared_cache_dir, subprocess_env):
    _, done, _ = finished
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir,
                          {"ipc": [1], "seeds": 1, "methods": ["full", "tsgf"]})
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(done / "teacher", out / "teacher", symlinks=True)  # a finished teacher, to save its time
    teacher_mtime = (out / "teacher" / "result.json").stat().st_mtime_ns
    proc = subprocess.Popen(pipeline_command(cfg, out), cwd=REPO, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (out / "logs" / "synthesis_ipc1.log").exists():
            assert proc.poll() is None and time.time() < deadline, "the synthesis stage never started"
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "interrupted during stage synthesis ipc1" in stderr and "synthesis_ipc1.log" in stderr
    assert not (out / "synthesis_ipc1" / "result.json").exists()
    assert not (out / "results.json").exists()

    again = run_cli(cfg, out, subprocess_env)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/3] teacher ... skipped")
    assert lines[1].startswith("[2/3] synthesis ipc1 ... done") and lines[2].startswith("[3/3] student tsgf")
    assert (out / "teacher" / "result.json").stat().st_mtime_ns == teacher_mtime
    assert [r["method"] for r in json.loads((out / "results.json").read_text())] == ["full", "tsgf"]
    # the log keeps both attempts, each headed by its command
    assert (out / "logs" / "synthesis_ipc1.log").read_text().count("\n=== ") == 2


@pytest.mark.slow
def test_a_validation_run_scores_students_on_the_carve_out_and_never_tests(finished, tmp_path, tiny_embedded,
                                                                            shared_cache_dir, subprocess_env):
    _, done, _ = finished
    teacher = done / "teacher" / "checkpoints" / "last.ckpt"
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir,
                          {"ipc": [1], "seeds": 1, "methods": ["random+student"], "evaluate_on": "val",
                           "teacher": str(teacher)})
    out = tmp_path / "out"
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / "teacher").exists()
    result = json.loads((out / "students" / "random+student" / "ipc1" / "seed0" / "result.json").read_text())
    assert "test" not in result  # the test split was never evaluated
    [row] = json.loads((out / "results.json").read_text())
    assert row["top1_mean"] == pytest.approx(result["val"]["val/acc_top1"])
    assert row["top5_mean"] == pytest.approx(result["val"]["val/acc_top5"])
    md = (out / "results.md").read_text()
    assert md.startswith("# Validation results") and "validation carve-out" in md
    hp = yaml.safe_load((out / "students" / "random+student" / "ipc1" / "seed0" / "hparams.yaml").read_text())
    assert hp["teacher_ckpt"] == str(teacher)


# ---------------------------------------------------------------------- (4) independent stages at once
@pytest.mark.slow
def test_parallel_run_respects_stage_dependencies(tmp_path, tiny_embedded, shared_cache_dir, subprocess_env):
    methods = ["full", "random+student", "tsgf"]
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir,
                          {"ipc": [1], "seeds": 1, "methods": methods, "jobs": 2})
    out = tmp_path / "out"
    env = {k: v for k, v in subprocess_env.items() if k != "OMP_NUM_THREADS"}  # the pipeline chooses
    proc = run_cli(cfg, out, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]

    def at(stage: str, event: str) -> int:
        return next(i for i, line in enumerate(lines) if f"] {stage} ... {event}" in line)

    # Nothing starts before the teacher is done; the tsgf student waits for its distilled set; the
    # random+student student does not (it may run beside synthesis).
    assert at("teacher", "done") < min(at(s, "started") for s in ("synthesis ipc1", "student tsgf ipc1 seed0",
                                                                    "student random+student ipc1 seed0"))
    assert at("synthesis ipc1", "done") < at("student tsgf ipc1 seed0", "started")
    assert "2 stages at once" in proc.stdout
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == methods
    # the teacher runs alone on every core; stages that run two at once share them
    cores = os.cpu_count() or 1
    assert f"OMP_NUM_THREADS={cores} " in (out / "logs" / "teacher.log").read_text()
    assert f"OMP_NUM_THREADS={max(1, cores // 2)} " in (out / "logs" / "synthesis_ipc1.log").read_text()
