"""The pipeline's checks and plan on the embedded configs (no stage runs): bad input named before any
stage, each method's overrides, IPC override files, what the results collect, the results functions.
"""

from __future__ import annotations

import json
import math

import pytest

from tsgf_lightning.pipeline import BUILTIN_METHODS, Method, PipelineError, load_pipeline_config, plan, run_pipeline
from tsgf_lightning.results import aggregate, plot_accuracy_vs_ipc, write_results

from .pipeline_utils import FOUR, make_config_dir, run_cli


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
    ({"extra_methods": {"x": {"student": {"seed_everything": 3}}}}, r"`student` of `extra_methods.x`.*"
     r"\['seed_everything'\], which the pipeline sets per seed"),
    ({"extra_methods": {"x": {"student": {"model.init_args": {"seed": 1}, "data": {"ipc": 2}}}}},
     r"`student` of `extra_methods.x`.*\['data.ipc', 'model.init_args.seed'\]"),  # nested mappings too
    ({"extra_methods": {"x": {"synthesis": {"model.init_args.init_seed": 1, "model.init_args.ipc": 2}}},
      "synthesis_per_seed": True},
     r"`synthesis` of `extra_methods.x`.*\['model.init_args.init_seed', 'model.init_args.ipc'\]"),
    ({"extra_methods": {"x": {"synthesis": {"model.init_args.init_seed": 1, "model.init_args.ipc": 2}}}},
     r"`synthesis` of `extra_methods.x`.*\['model.init_args.ipc'\]"),  # a shared synthesis may pick its init
    ({"evaluate_on": "train"}, r"`evaluate_on`.*\['test', 'val'\] but got 'train'"),
    ({"split": "val"}, r"the key `split`, which is now `evaluate_on` \(test or val\): rename it"),
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
                "--model.init_args.seed=1", "--model.init_args.labels=hard", "--model.init_args.mix=none",
                "--model.init_args.teacher_ckpt=null",
                f"--trainer.logger.init_args.save_dir={out / 'students' / 'random' / 'ipc2'}",
                "--trainer.logger.init_args.name=seed1", "--trainer.logger.init_args.version=", "--resume", "--test"):
        assert arg in random
    assert random[random.index("--result") + 1] == str(out / "students" / "random" / "ipc2" / "seed1" / "result.json")
    rs = stages["student_random+student_ipc1_seed0"].command()
    assert "--data.train_set=random" in rs and not any("labels" in a or "mix" in a for a in rs) and ckpt in rs
    # hard labels ask the teacher nothing: those students neither read it nor wait for it
    assert ckpt not in random and stages["student_random_ipc2_seed1"].needs == ()
    assert stages["student_random+student_ipc1_seed0"].needs == ("teacher",)
    assert stages["student_tsgf-hard_ipc1_seed0"].needs == ("synthesis_ipc1",)

    # each stage composes data.yaml and its own file, and names its row (shared stages name none)
    assert stages["student_random_ipc2_seed1"].configs == (cfg / "data.yaml", cfg / "student.yaml")
    assert random[random.index("--config"):random.index("--config") + 4] == [
        "--config", str(cfg / "data.yaml"), "--config", str(cfg / "student.yaml")]
    assert random[random.index("--method") + 1] == "random"
    assert "--method" not in stages["synthesis_ipc2"].command() and "--method" not in stages["teacher"].command()
    assert stages["synthesis_sre2l_ipc2"].command()[stages["synthesis_sre2l_ipc2"].command().index("--method") + 1] \
        == "sre2l"
    assert stages["teacher"].configs == (cfg / "data.yaml", cfg / "teacher.yaml")

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


def test_ipc_override_files_are_composed_after_the_stage_file_at_their_ipc_only(tmp_path, tiny_dir):
    cfg = tiny_dir({"ipc": [1, 5], "seeds": 1, "methods": ["full", "random+student", "tsgf"]})
    (cfg / "synthesis_ipc5.yaml").write_text("model: {init_args: {lr: 0.5}}\n")
    (cfg / "student_ipc1.yaml").write_text("trainer: {max_epochs: 2}\n")
    stages = {st.name: st for st in plan(cfg, tmp_path / "out", load_pipeline_config(cfg / "pipeline.yaml"))}
    base = (cfg / "data.yaml",)
    assert stages["synthesis_ipc5"].configs == (*base, cfg / "synthesis.yaml", cfg / "synthesis_ipc5.yaml")
    assert stages["synthesis_ipc1"].configs == (*base, cfg / "synthesis.yaml")
    for name in ("student_tsgf_ipc1_seed0", "student_random+student_ipc1_seed0"):
        assert stages[name].configs == (*base, cfg / "student.yaml", cfg / "student_ipc1.yaml")
    assert stages["student_tsgf_ipc5_seed0"].configs == (*base, cfg / "student.yaml")
    assert stages["teacher"].configs == (*base, cfg / "teacher.yaml")
    cmd = stages["synthesis_ipc5"].command()
    assert cmd.index(str(cfg / "synthesis_ipc5.yaml")) < cmd.index("--model.init_args.ipc=5")  # files, then overrides
    # without data.yaml each stage is its own file, as before
    (cfg / "data.yaml").unlink()
    [teacher] = [st for st in plan(cfg, tmp_path / "out", load_pipeline_config(cfg / "pipeline.yaml"))
                 if st.kind == "teacher"]
    assert teacher.configs == (cfg / "teacher.yaml",)


def test_collect_runs_reports_what_each_stage_recorded(tmp_path):
    from tsgf_lightning.pipeline import PipelineConfig, Stage, collect_runs

    def stage(name, kind, method, ipc, seed, arch, top1):
        result = tmp_path / name / "result.json"
        result.parent.mkdir()
        result.write_text(json.dumps({"stage": {"kind": kind, "method": method, "ipc": ipc, "seed": seed,
                                                "arch": arch}, "test": {"test/acc_top1": top1, "test/acc_top5": 1.0},
                                      "fingerprint": {"digest": name * 12}}))
        return Stage(name, name, kind, (), (), result, method=method, ipc=3, seed=9)

    stages = [stage("t", "teacher", None, None, 0, "Wide", 0.9), stage("a", "student", "m", 2, 0, "GRU", 0.25),
              stage("b", "student", "m", 2, 1, "GRU", 0.75)]
    cfg = PipelineConfig((2,), 2, (BUILTIN_METHODS["full"], Method("m")))
    runs = collect_runs(cfg, stages)
    # the plan said ipc 3, seed 9: the records win (they are what the stage really ran)
    assert runs == [{"method": "full", "ipc": None, "arch": "Wide", "seed": 0, "top1": 0.9, "top5": 1.0,
                     "fingerprint": "tttttttttttt"},
                    {"method": "m", "ipc": 2, "arch": "GRU", "seed": 0, "top1": 0.25, "top5": 1.0,
                     "fingerprint": "aaaaaaaaaaaa"},
                    {"method": "m", "ipc": 2, "arch": "GRU", "seed": 1, "top1": 0.75, "top5": 1.0,
                     "fingerprint": "bbbbbbbbbbbb"}]
    assert [r["arch"] for r in aggregate(runs)] == ["Wide", "GRU"]


def test_plan_on_the_validation_split_with_a_given_teacher(tmp_path, tiny_dir):
    teacher = tmp_path / "elsewhere" / "last.ckpt"
    cfg = tiny_dir({"ipc": [1], "seeds": 2, "methods": ["random+student", "tsgf"], "evaluate_on": "val",
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


# ---------------------------------------------------------------------- paired comparisons
def test_synthesis_per_seed_gives_each_seed_its_own_initialisation_and_set(tmp_path, tiny_dir):
    cfg = tiny_dir({"ipc": [1], "seeds": 2, "methods": ["full", "tsgf"], "synthesis_per_seed": True,
                    "extra_methods": {"tsgf-O_off": {"synthesis": {"model.init_args.mask": "none"}},
                                      "tsgf-O_off-mix": {"synthesis": {"model.init_args.mask": "none"},
                                                "student": {"model.init_args.mix": "videomix"}}},
                    "pairs": [["tsgf", "tsgf-O_off"]]})
    out = tmp_path / "out"
    stages = {st.name: st for st in plan(cfg, out, load_pipeline_config(cfg / "pipeline.yaml"))}
    assert sorted(n for n in stages if n.startswith("synthesis")) == [
        "synthesis_ipc1_seed0", "synthesis_ipc1_seed1", "synthesis_tsgf-O_off_ipc1_seed0",
        "synthesis_tsgf-O_off_ipc1_seed1"]
    for s in (0, 1):
        for name, student in ((f"synthesis_ipc1_seed{s}", f"student_tsgf_ipc1_seed{s}"),
                              (f"synthesis_tsgf-O_off_ipc1_seed{s}", f"student_tsgf-O_off_ipc1_seed{s}")):
            syn = stages[name].command()
            assert {f"--seed_everything={s}", f"--model.init_args.init_seed={s}", f"--model.init_args.seed={s}"} \
                <= set(syn)
            assert stages[student].needs == ("teacher", name)
            assert f"--data.distilled_path={stages[name].outputs[0]}" in stages[student].command()
    # equal synthesis overrides share one run per seed, named after the first method (YAML keys sort)
    assert stages["student_tsgf-O_off-mix_ipc1_seed1"].needs == ("teacher", "synthesis_tsgf-O_off_ipc1_seed1")
    # seed s of the two variants starts from the same clips: only the mask differs between their synthesis commands
    a, b = stages["synthesis_ipc1_seed1"].command(), stages["synthesis_tsgf-O_off_ipc1_seed1"].command()
    assert {x for x in set(a) ^ set(b) if "save_dir" not in x and "export_dir" not in x and "result" not in x
            and "fingerprint" not in x and "logger.init_args.name" not in x and not x.endswith(".json")} == {
        "--model.init_args.mask=none", "--method", "tsgf-O_off"}


@pytest.mark.parametrize("pairs, message", [
    ([["tsgf", "nope"]], r"\[tsgf, nope\] must name two different methods"),
    ([["tsgf", "tsgf"]], r"two different methods"),
    ([["full", "tsgf"]], r"not `full`"),
    ([["tsgf"]], r"list of \[variant, baseline\]"),
])
def test_bad_pairs_are_named(tmp_path, tiny_dir, pairs, message):
    cfg = tiny_dir({"ipc": [1], "seeds": 1, "methods": FOUR, "pairs": pairs})
    with pytest.raises(PipelineError, match=message):
        load_pipeline_config(cfg / "pipeline.yaml")


def test_paired_differences_against_a_naive_computation(tmp_path):
    from tsgf_lightning.paired import paired_differences

    a = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.70}
    b = {0: 0.45, 1: 0.62, 2: 0.40, 4: 0.30}  # seed 3 only in a, seed 4 only in b
    runs = ([{"method": "a", "ipc": 1, "seed": s, "top1": v} for s, v in a.items()]
            + [{"method": "b", "ipc": 1, "seed": s, "top1": v} for s, v in b.items()])
    (row,) = paired_differences(runs, [("a", "b")])
    d = [a[s] - b[s] for s in (0, 1, 2)]
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
    assert row["pairs"] == 3 and row["seeds"] == [0, 1, 2] and row["unpaired"] == 2
    assert row["diff_mean"] == pytest.approx(mean) and row["diff_se"] == pytest.approx(se)
    (one,) = paired_differences(runs[:1] + runs[4:5], [("a", "b")])
    assert one["pairs"] == 1 and one["diff_se"] is None
    paths = write_results(tmp_path, aggregate(runs_with_top5(runs)), paired=[row])
    text = paths["md"].read_text()
    assert "## Paired differences" in text and f"{100 * mean:+.1f} ± {100 * se:.1f}" in text
    assert json.loads(paths["paired"].read_text())[0]["diffs"] == pytest.approx(d)
    assert paths["paired_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(paired.png)" in text


def runs_with_top5(runs):
    return [{**r, "arch": "MiniC3D", "top5": r["top1"]} for r in runs]
