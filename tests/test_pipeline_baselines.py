"""DM, MTT and VDSD as pipeline methods: expert stages before MTT, every method under both student
protocols, one distillation per method shared by its protocol rows, a rerun that skips everything,
and an MTT stage that goes stale when an expert trajectory changes."""

from __future__ import annotations

import json
import shutil

import pytest

from tsgf_lightning.freshness import statuses
from tsgf_lightning.pipeline import load_pipeline_config, plan, resolve_stages
from tsgf_lightning.pipeline.config import PROTOCOLS

from .pipeline_utils import make_config_dir, run_cli

METHODS = ["dm", "mtt", "vdsd"]
PIPELINE = {"ipc": [1], "seeds": 1, "methods": METHODS, "experts": 2, "protocols": ["tsgf", "vdsd"],
            "pairs": [["dm@vdsd", "vdsd@vdsd"]]}


@pytest.fixture(scope="module")
def baselines_run(tmp_path_factory, tiny_embedded, shared_cache_dir, subprocess_env):
    base = tmp_path_factory.mktemp("pipeline_baselines")
    cfg = make_config_dir(base / "cfg", tiny_embedded, shared_cache_dir, PIPELINE, baselines=True)
    out = base / "out"
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cfg, out, proc


def test_the_plan_runs_experts_before_mtt_and_shares_each_distillation_between_protocols(tmp_path, tiny_embedded,
                                                                                         shared_cache_dir):
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir, PIPELINE, baselines=True)
    stages = plan(cfg, tmp_path / "out", load_pipeline_config(cfg / "pipeline.yaml"))
    by_name = {st.name: st for st in stages}
    names = list(by_name)
    assert [n for n in names if by_name[n].kind == "synthesis"] == ["dm_ipc1", "mtt_ipc1", "vdsd_ipc1"]
    assert [n for n in names if by_name[n].kind == "experts"] == ["experts_0", "experts_1"]
    assert by_name["mtt_ipc1"].needs == ("experts_0", "experts_1")
    assert by_name["dm_ipc1"].needs == by_name["vdsd_ipc1"].needs == ()  # no teacher, no experts
    for m in METHODS:  # both protocols' students read the same distilled set
        own, vdsd = by_name[f"student_{m}_ipc1_seed0"], by_name[f"student_{m}@vdsd_ipc1_seed0"]
        assert own.needs == ("teacher", f"{m}_ipc1") and vdsd.needs == (f"{m}_ipc1",)  # hard labels: no teacher
    resolved = resolve_stages(stages)
    student = resolved["student_mtt@vdsd_ipc1_seed0"]
    for key, value in PROTOCOLS["vdsd"].items():  # every protocol key reaches the parsed config
        node = student
        for part in key.split("."):
            node = node[part]
        if isinstance(value, dict):
            assert node["class_path"] == value["class_path"]
            assert {k: node["init_args"][k] for k in value["init_args"]} == value["init_args"]
        else:
            assert node == value, key
    assert resolved["student_mtt_ipc1_seed0"]["model"]["init_args"]["labels"] == "soft"  # the TSGF protocol
    assert student["model"]["init_args"]["teacher_ckpt"] is None
    assert resolved["mtt_ipc1"]["model"]["init_args"]["experts"] == [
        str(tmp_path / "out" / "experts" / f"expert_{i}" / "trajectory") for i in (0, 1)]


def test_every_method_and_protocol_is_a_row_and_a_rerun_skips_every_stage(baselines_run, subprocess_env):
    cfg, out, proc = baselines_run
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"] for r in results}
    assert rows == {*METHODS, *(f"{m}@vdsd" for m in METHODS)}
    for name, kind in (("experts/expert_0", "experts"), ("dm_ipc1", "synthesis"), ("mtt_ipc1", "synthesis"),
                       ("vdsd_ipc1", "synthesis")):
        assert json.loads((out / name / "result.json").read_text())["stage"]["kind"] == kind
    mtt_set = out / "mtt_ipc1" / "distilled.pt"
    assert mtt_set.is_file() and (out / "experts" / "expert_1" / "trajectory").is_dir()
    assert "dm@vdsd" in (out / "results.md").read_text()
    again = run_cli(cfg, out, subprocess_env)
    assert again.returncode == 0, again.stdout + again.stderr
    events = [line.split(" ... ", 1)[1] for line in again.stdout.splitlines() if line.startswith("[")]
    assert events and all(e.startswith("skipped") for e in events), again.stdout


def test_a_changed_expert_trajectory_makes_mtt_and_its_students_stale(baselines_run, tmp_path):
    cfg, out, _ = baselines_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    stages = plan(cfg, copy, load_pipeline_config(cfg / "pipeline.yaml"))
    assert {s.state for s in statuses(stages, resolve_stages(stages)).values()} == {"done"}
    epoch = sorted((copy / "experts" / "expert_1" / "trajectory").glob("epoch_*.pt"))[-1]
    epoch.write_bytes(epoch.read_bytes() + b"\0")  # other bytes, as a retrained expert would have
    status = statuses(stages, resolve_stages(stages))
    stale = sorted(n for n, s in status.items() if s.state != "done")
    assert stale == ["mtt_ipc1", "student_mtt@vdsd_ipc1_seed0", "student_mtt_ipc1_seed0"]
    assert any("expert trajectories" in r for r in status["mtt_ipc1"].reasons), status["mtt_ipc1"].reasons


@pytest.mark.parametrize("extra, message", [
    ({"protocols": ["tsgf", "hard"]}, "Expected `protocols`"),
    ({"protocols": []}, "Expected `protocols`"),
    ({"experts": 0}, "Expected `experts`"),
    ({"extra_methods": {"dm-x": {"distiller": "dmm"}}}, "Expected `distiller` of `extra_methods.dm-x`"),
    ({"extra_methods": {"dm-x": {"distiller": "dm", "select": "random"}}}, "with `select: synthesis`"),
    ({"pairs": [["dm@vdsd", "full@vdsd"]]}, "must name two different methods"),
])
def test_bad_protocols_experts_and_distillers_are_named(tmp_path, extra, message):
    from tsgf_lightning.pipeline import PipelineError

    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({**PIPELINE, **extra}))
    with pytest.raises(PipelineError, match=message.replace("`", ".").replace("@", ".")):
        load_pipeline_config(path)


def test_a_named_expert_folder_that_is_missing_is_refused_not_skipped(tmp_path):
    from tsgf_lightning.modules.experts import expand_experts

    (tmp_path / "expert_0").mkdir()
    assert expand_experts(str(tmp_path / "expert_*")) == [tmp_path / "expert_0"]
    with pytest.raises(FileNotFoundError, match="expert_1 does not exist"):
        expand_experts([str(tmp_path / "expert_0"), str(tmp_path / "expert_1")])
