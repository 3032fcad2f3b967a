"""The pipeline end to end on a tiny embedded dataset: results files, skipping/resuming, bad input.

The configs are configs/embedded/*.yaml with overrides baked into the YAML (conftest's tiny
Embedded root and shared decode cache, one epoch, three synthesis steps, a narrow backbone), so every
stage is a real ``python -m tsgf_lightning.stage`` process that takes a few seconds (one torch thread
per process, conftest's ``subprocess_env``). One complete run is shared by the tests that only read
or resume it.
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

from tsgf_lightning.pipeline import PipelineError, load_pipeline_config, plan, run_pipeline
from tsgf_lightning.results import ROW_KEYS, aggregate, plot_accuracy_vs_ipc, write_results

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
                          {"ipc": [1], "seeds": 1, "methods": ["random+student"], "split": "val",
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


# ---------------------------------------------------------------------- (3) bad input, before any stage
@pytest.fixture
def tiny_dir(tmp_path, tiny_embedded, shared_cache_dir):
    """``make(pipeline) -> config dir`` in ``tmp_path`` (no stage reads the data in these tests)."""
    return lambda pipeline: make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir, pipeline)


@pytest.mark.parametrize("missing", ["student.yaml", "synthesis.yaml", "teacher.yaml", "pipeline.yaml"])
def test_config_dir_lacking_a_config_is_named(tmp_path, tiny_dir, missing):
    cfg = tiny_dir({"ipc": [1], "seeds": 1, "methods": FOUR})
    (cfg / missing).unlink()
    with pytest.raises(PipelineError, match=missing.replace(".", r"\.")):
        run_pipeline(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pipeline, message", [
    ({"ipc": [1], "methods": ["full", "tsfg"]},
     r"unknown method\(s\) \['tsfg'\].*'full', 'random', 'random\+student', 'tsgf'"),
    ({"ipc": [0]}, r"`ipc`.*>= 1 but got 0"),
    ({"ipc": [1, -2]}, r"`ipc`.*>= 1 but got -2"),
    ({"ipc": []}, r"`ipc`"),
    ({"seeds": 0}, r"`seeds`.*>= 1 but got 0"),
    ({"ipcs": [1]}, r"unknown key\(s\) \['ipcs'\]"),
    ({"extra_methods": {"full": {"select": "random"}}}, r"'full' is a built-in method"),
    ({"extra_methods": {"x": {"select": "herd"}}}, r"`select` of `extra_methods.x`.*'synthesis', 'random'.*'herd'"),
    ({"extra_methods": {"x": {"student": {"model.init_args.mix": "none"}, "lr": 1}}}, r"unknown key\(s\) \['lr'\]"),
    ({"extra_methods": {"x": {"select": "random", "synthesis": {"model.init_args.mask": "none"}}}},
     r"gives `synthesis` overrides but selects 'random'"),
    ({"extra_methods": {"x": {"ipc": [1, 0]}}}, r"`ipc` of `extra_methods.x`.*>= 1 but got 0"),
    ({"extra_methods": {"x": {"ipc": [2, 2]}}}, r"`ipc` of `extra_methods.x`.*distinct"),
    ({"extra_methods": {"x": {"seeds": 0}}}, r"`seeds` of `extra_methods.x`.*>= 1 but got 0"),
    ({"split": "train"}, r"`split`.*\['test', 'val'\] but got 'train'"),
    ({"teacher": "t.ckpt", "methods": ["full", "tsgf"]}, r"`teacher`.*remove `full`"),
    ({"teacher": "no/such/teacher.ckpt", "methods": ["tsgf"]}, r"`teacher` of .*no/such/teacher.ckpt.*does not exist"),
])
def test_bad_pipeline_yaml_is_named_before_any_stage(tmp_path, tiny_dir, pipeline, message):
    cfg = tiny_dir(pipeline)
    with pytest.raises(PipelineError, match=message):
        run_pipeline(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_override_typo_fails_before_any_stage(tmp_path, tiny_dir):
    cfg = tiny_dir({"ipc": [1], "seeds": 1, "methods": ["full"],
                               "extra_methods": {"nomix": {"student": {"model.init_args.maks": "none"}}}})
    with pytest.raises(PipelineError, match=r"student nomix ipc1 seed0.*\n(.|\n)*maks"):
        run_pipeline(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "logs").exists()


def test_cli_reports_bad_input_with_exit_code_1(tmp_path, tiny_dir, subprocess_env):
    cfg = tiny_dir({"ipc": [1], "methods": ["nope"]})
    proc = run_cli(cfg, tmp_path / "out", subprocess_env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unknown method(s) ['nope']") and "known methods" in proc.stderr


# ---------------------------------------------------------------------- plan and results functions
def test_plan_applies_each_methods_overrides_and_gives_custom_synthesis_its_own_dir(tmp_path, tiny_dir):
    cfg = tiny_dir({"ipc": [2, 1], "seeds": 2, "methods": FOUR, "extra_methods": {
        "sre2l": {"synthesis": {"model.init_args.mask": "none"}, "student": {"model.init_args.mix": "videomix"}},
        "tsgf-hard": {"student": {"model.init_args.labels": "hard"}}}})
    out = tmp_path / "out"
    stages = {st.name: st for st in plan(cfg, out, load_pipeline_config(cfg / "pipeline.yaml"))}
    # teacher, 2 IPCs x (shared synthesis + sre2l synthesis + 5 student methods x 2 seeds)
    assert len(stages) == 1 + 2 * (2 + 5 * 2)
    assert list(stages)[:2] == ["teacher", "student_random_ipc1_seed0"]  # IPCs run in increasing order
    ckpt = f"--model.init_args.teacher_ckpt={out / 'teacher' / 'checkpoints' / 'last.ckpt'}"

    random = stages["student_random_ipc2_seed1"].command()
    for arg in ("--data.train_set=random", "--data.ipc=2", "--data.subset_seed=1", "--seed_everything=1",
                "--model.init_args.seed=1", "--model.init_args.labels=hard", "--model.init_args.mix=none", ckpt,
                f"--trainer.logger.init_args.save_dir={out / 'students' / 'random' / 'ipc2'}",
                "--trainer.logger.init_args.name=seed1", "--trainer.logger.init_args.version=", "--resume", "--test"):
        assert arg in random
    assert random[random.index("--result") + 1] == str(out / "students" / "random" / "ipc2" / "seed1" / "result.json")
    rs = stages["student_random+student_ipc1_seed0"].command()
    assert "--data.train_set=random" in rs and not any("labels" in a or "mix" in a for a in rs)

    shared = stages["synthesis_ipc2"]
    assert "--model.init_args.ipc=2" in shared.command() and ckpt in shared.command() and not shared.test
    assert shared.outputs == (out / "synthesis_ipc2" / "distilled.pt",)
    own = stages["synthesis_sre2l_ipc2"]
    assert "--model.init_args.mask=none" in own.command()
    assert own.outputs == (out / "synthesis" / "sre2l_ipc2" / "distilled.pt",)
    assert f"--data.distilled_path={own.outputs[0]}" in stages["student_sre2l_ipc2_seed0"].command()
    assert "--model.init_args.mix=videomix" in stages["student_sre2l_ipc2_seed0"].command()
    hard = stages["student_tsgf-hard_ipc2_seed0"].command()
    assert f"--data.distilled_path={shared.outputs[0]}" in hard and "--model.init_args.labels=hard" in hard


def test_plan_on_the_validation_split_with_a_given_teacher(tmp_path, tiny_dir):
    teacher = tmp_path / "elsewhere" / "last.ckpt"
    cfg = tiny_dir({"ipc": [1], "seeds": 2, "methods": ["random+student", "tsgf"], "split": "val",
                    "teacher": str(teacher)})
    stages = plan(cfg, tmp_path / "out", load_pipeline_config(cfg / "pipeline.yaml"))
    assert sorted(st.kind for st in stages) == ["student"] * 4 + ["synthesis"]  # no teacher stage
    for st in stages:
        cmd = st.command()
        assert f"--model.init_args.teacher_ckpt={teacher}" in cmd and "--test" not in cmd
        assert ("--validate" in cmd) == (st.kind == "student")
        assert "teacher" not in st.needs
    assert stages[-1].needs == ("synthesis_ipc1",)


def test_aggregate_mean_and_sample_std_against_a_naive_loop():
    runs = [{"method": "m", "ipc": 1, "arch": "A", "seed": s, "top1": t1, "top5": t5}
            for s, (t1, t5) in enumerate([(0.2, 0.5), (0.5, 0.9), (0.35, 0.7)])]
    runs.append({"method": "full", "ipc": None, "arch": "A", "seed": None, "top1": 0.9, "top5": 1.0})
    rows = aggregate(runs)
    assert [r["method"] for r in rows] == ["m", "full"]
    m, full = rows
    mean = (0.2 + 0.5 + 0.35) / 3
    var = ((0.2 - mean) ** 2 + (0.5 - mean) ** 2 + (0.35 - mean) ** 2) / (3 - 1)
    assert m["seeds"] == 3
    assert m["top1_mean"] == pytest.approx(mean) and m["top1_std"] == pytest.approx(math.sqrt(var))
    assert m["top5_std"] == pytest.approx(0.2)  # 0.5, 0.9, 0.7: deviations -0.2, 0.2, 0 -> sqrt(0.08 / 2)
    assert (full["seeds"], full["top1_std"], full["ipc"]) == (1, 0.0, None)


def test_write_results_for_several_ipcs(tmp_path):
    rows = [{"method": "full", "ipc": None, "arch": "A", "seeds": 1, "top1_mean": 0.8, "top1_std": 0.0,
             "top5_mean": 1.0, "top5_std": 0.0}]
    rows += [{"method": "tsgf", "ipc": k, "arch": "A", "seeds": 3, "top1_mean": 0.1 * k, "top1_std": 0.01,
              "top5_mean": 0.5, "top5_std": 0.02} for k in (1, 5, 10)]
    paths = write_results(tmp_path, rows, tensorboard=False)
    assert json.loads(paths["json"].read_text()) == rows
    md = paths["md"].read_text()
    assert "| method | arch | seeds | all data | IPC 1 | IPC 5 | IPC 10 |" in md
    assert "| tsgf | A | 3 |  | 10.0 ± 1.0 | 50.0 ± 1.0 | 100.0 ± 1.0 |" in md
    assert "| full | A | 1 | 80.0 ± 0.0 |  |  |  |" in md
    assert plot_accuracy_vs_ipc(rows, tmp_path / "p.png").stat().st_size > 1000


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
