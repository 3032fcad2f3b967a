"""A rerun never reports a stale number: fingerprints, stale stages, superseded outputs kept aside.

Each test works on a copy of conftest's ``finished_pipeline`` (teacher, synthesis and six students
on the tiny embedded set), so the copy itself checks that a moved output dir is still the same set
of stages (paths are not part of a fingerprint; contents are).
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tsgf_lightning.fingerprint import IGNORED_KEYS, fingerprint, flatten, resolve_config
from tsgf_lightning.freshness import FINGERPRINT_FILE, prepare_launch, statuses
from tsgf_lightning.pipeline import PipelineError, load_pipeline_config, plan, resolve_stages, run_pipeline

from .pipeline_utils import FOUR, make_config_dir, run_cli

STUDENTS = [f"student_{m}_ipc1_seed{s}" for m in FOUR[1:] for s in (0, 1)]
TSGF_STUDENTS = ["student_tsgf_ipc1_seed0", "student_tsgf_ipc1_seed1"]
#: The students that read the teacher: `random`'s hard labels ask it nothing, so a new teacher leaves them done.
SOFT_STUDENTS = [n for n in STUDENTS if not n.startswith("student_random_")]


@pytest.fixture
def copied(finished_pipeline, tmp_path):
    """``(config dir, OUT)``: a private copy of the finished run."""
    cfg, out, _ = finished_pipeline
    shutil.copytree(cfg, tmp_path / "cfg")
    shutil.copytree(out, tmp_path / "out", symlinks=True)
    return tmp_path / "cfg", tmp_path / "out"


def edit(path: Path, key: str, value) -> None:
    cfg = yaml.safe_load(path.read_text())
    *head, last = key.split(".")
    node = cfg
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value
    path.write_text(yaml.safe_dump(cfg))


def current_statuses(cfg: Path, out: Path) -> dict:
    stages = plan(cfg, out, load_pipeline_config(cfg / "pipeline.yaml"))
    return statuses(stages, resolve_stages(stages))


def stage_lines(stdout: str) -> dict[str, str]:
    """``{stage title: what happened}`` from the pipeline's ``[i/n] title ... event`` lines."""
    lines = [line.split("] ", 1)[1] for line in stdout.splitlines() if line.startswith("[")]
    return dict(line.split(" ... ", 1) for line in lines)


def test_the_fingerprint_hashes_the_resolved_config_and_the_inputs_contents(finished_pipeline):
    cfg, out, _ = finished_pipeline
    teacher = out / "teacher" / "checkpoints" / "last.ckpt"
    resolved = resolve_config([cfg / "data.yaml", cfg / "student.yaml"], [f"--model.init_args.teacher_ckpt={teacher}",
                                                                          "--data.train_set=random"])
    fp = fingerprint(resolved)
    # defaults the YAML never states are part of it; paths and speed knobs are not
    assert fp["config"]["model.init_args.temperature"] == 4.0 and fp["config"]["model.init_args.mix_alpha"] == 1.0
    assert not [k for k in fp["config"] if any(k == i or k.startswith(i + ".") for i in IGNORED_KEYS)]
    import hashlib
    assert fp["inputs"]["teacher"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert set(fp["inputs"]["data"]) == {"fit", "val", "test"}
    # the recorded fingerprint is the one the pipeline computed at launch
    result = json.loads((out / "students" / "tsgf" / "ipc1" / "seed0" / "result.json").read_text())
    assert result["fingerprint"]["digest"] == json.loads(
        (out / "students" / "tsgf" / "ipc1" / "seed0" / FINGERPRINT_FILE).read_text())["digest"]
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def merged(base: dict, top: dict) -> dict:
    """``top`` over ``base``, key by key (how a later --config file composes with an earlier one)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_a_composed_config_has_the_fingerprint_of_one_file_holding_the_same_values(tmp_path, tiny_embedded,
                                                                                    shared_cache_dir):
    (tmp_path / "t.ckpt").write_bytes(b"a teacher")
    composed = make_config_dir(tmp_path / "composed", tiny_embedded, shared_cache_dir,
                               {"ipc": [1, 2], "seeds": 1, "methods": ["tsgf"], "teacher": str(tmp_path / "t.ckpt")})
    at_ipc2 = {"synthesis": {"model": {"init_args": {"lr": 0.5}}},
               "student": {"trainer": {"max_epochs": 2}, "data": {"crop_scale": [0.9, 1.0]}}}
    for stage, cfg in at_ipc2.items():
        (composed / f"{stage}_ipc2.yaml").write_text(yaml.safe_dump(cfg))
    data = yaml.safe_load((composed / "data.yaml").read_text())

    def whole(k: int) -> Path:
        """A dir of the old layout: each stage one file holding what the composed dir gives at IPC ``k``."""
        d = tmp_path / f"whole{k}"
        d.mkdir()
        shutil.copy(composed / "pipeline.yaml", d)
        for stage in ("synthesis", "student"):
            cfg = merged(data, yaml.safe_load((composed / f"{stage}.yaml").read_text()))
            (d / f"{stage}.yaml").write_text(yaml.safe_dump(merged(cfg, at_ipc2[stage]) if k == 2 else cfg))
        return d

    out = tmp_path / "out"
    pipeline = load_pipeline_config(composed / "pipeline.yaml")
    stages = plan(composed, out, pipeline)
    for p in (p for st in stages for p in st.outputs):  # the distilled sets the students fingerprint
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"a distilled set")
    resolved = resolve_stages(stages)
    alike = {k: {st.name: st for st in plan(whole(k), out, pipeline)} for k in (1, 2)}
    for st in stages:
        one = alike[st.ipc][st.name]
        assert len(one.configs) == 1 and len(st.configs) == (3 if st.ipc == 2 else 2)
        assert fingerprint(resolved[st.name]) == fingerprint(resolve_stages([one])[one.name]), st.name
    lr = [fingerprint(resolved[f"synthesis_ipc{k}"])["config"]["model.init_args.lr"] for k in (1, 2)]
    assert lr == [0.01, 0.5]  # the IPC file applies at its IPC only


@pytest.mark.parametrize("file, key, value, stale, reason", [
    ("teacher.yaml", "trainer.max_epochs", 2, ["teacher", "synthesis_ipc1", *SOFT_STUDENTS],
     "trainer.max_epochs: 1 -> 2"),
    ("synthesis.yaml", "trainer.max_steps", 4, ["synthesis_ipc1", *TSGF_STUDENTS], "trainer.max_steps: 3 -> 4"),
    ("synthesis.yaml", "model.init_args.lr", 0.5, ["synthesis_ipc1", *TSGF_STUDENTS],
     "model.init_args.lr: 0.01 -> 0.5"),
    ("student.yaml", "model.init_args.temperature", 2.0, STUDENTS, "model.init_args.temperature: 4.0 -> 2.0"),
    ("student.yaml", "data.num_workers", 1, [], None),  # speed, not results: nothing reruns
    ("data.yaml", "data.val_seed", 7, ["teacher", "synthesis_ipc1", *STUDENTS], "data.val_seed: 0 -> 7"),
])
def test_a_changed_key_makes_its_stage_and_everything_downstream_stale(copied, file, key, value, stale, reason):
    cfg, out = copied
    assert {s.state for s in current_statuses(cfg, out).values()} == {"done"}
    edit(cfg / file, key, value)
    status = current_statuses(cfg, out)
    assert sorted(n for n, s in status.items() if s.state != "done") == sorted(stale)
    assert {status[n].state for n in stale} <= {"stale"}
    if reason:
        assert reason in status[stale[0]].reasons  # the stage whose config changed names the key
        for name in stale[1:]:  # and every other stale stage is downstream of it, or changed the same way
            assert reason in status[name].reasons or any("runs again" in r for r in status[name].reasons)


def test_a_dataset_with_new_timestamps_but_the_same_bytes_keeps_every_finished_stage(copied, tiny_embedded,
                                                                                      monkeypatch):
    """A dataset extracted or copied again (every mtime new) is the same data: nothing reruns."""
    import os

    import tsgf_lightning.fingerprint as fp

    cfg, out = copied
    videos = [p for p in Path(tiny_embedded.root).rglob("*") if p.is_file()]
    assert videos
    later = 2_000_000_000 * 10**9
    for p in videos:
        os.utime(p, ns=(later, later))
    monkeypatch.setattr(fp, "_DATA_KEYS", {})  # this process's memo would hide a changed key
    status = current_statuses(cfg, out)
    assert {n: s.state for n, s in status.items()} == {n: "done" for n in status}


def _forget_in_record(result: Path, key: str) -> str:
    """Make ``result``'s recorded fingerprint predate the option ``key`` (as a run by an older version); its digest."""
    return _rewrite_record(result, lambda record: record["config"].pop(key))


def _rewrite_record(result: Path, change) -> str:
    """Apply ``change`` to ``result``'s recorded fingerprint (as an older version would have written it); its digest."""
    import hashlib

    data = json.loads(result.read_text())
    record = data["fingerprint"]
    change(record)
    body = {"config": record["config"], "inputs": record["inputs"]}
    record["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    result.write_text(json.dumps(data))
    return record["digest"]


def test_a_new_option_at_its_default_keeps_finished_stages_and_away_from_it_reruns_them(copied):
    """A record that lacks an option (it predates it) ran what the option's default does; any other value reruns."""
    cfg, out = copied
    key = "model.init_args.max_saturated_fraction"  # a SynthesisModule option whose value here is its default
    result = out / "synthesis_ipc1" / "result.json"
    recorded = _forget_in_record(result, key)
    status = current_statuses(cfg, out)
    assert {s.state for s in status.values()} == {"done"}
    assert status["synthesis_ipc1"].reasons == [f"new option(s) at their default: {key}"]
    assert status["synthesis_ipc1"].digest == recorded  # the result keeps the provenance it was made with
    edit(cfg / "synthesis.yaml", key, 0.6)
    status = current_statuses(cfg, out)
    assert status["synthesis_ipc1"].state == "stale" and f"{key}: <unset> -> 0.6" in status["synthesis_ipc1"].reasons
    assert all(status[n].state == "stale" for n in TSGF_STUDENTS)


def test_a_hard_label_student_that_recorded_a_teacher_stays_done_and_a_soft_one_without_it_reruns(copied):
    """Older versions passed (and fingerprinted) the teacher to hard-label students, which ask it nothing."""
    cfg, out = copied
    hard, soft = "student_random_ipc1_seed0", "student_random+student_ipc1_seed0"
    stages = {st.name: st for st in plan(cfg, out, load_pipeline_config(cfg / "pipeline.yaml"))}
    assert "teacher" not in json.loads(stages[hard].result.read_text())["fingerprint"]["inputs"]
    recorded = _rewrite_record(stages[hard].result, lambda r: r["inputs"].update(teacher="0" * 64))
    _rewrite_record(stages[soft].result, lambda r: r["inputs"].pop("teacher"))
    status = current_statuses(cfg, out)
    assert status[hard].state == "done" and status[hard].digest == recorded
    assert status[hard].reasons == ["no longer reads the teacher checkpoint (hard labels)"]
    assert status[soft].state == "stale" and "teacher checkpoint changed" in status[soft].reasons
    assert {status[n].state for n in status if n not in (soft,)} == {"done"}


def test_new_at_default_against_the_signatures():
    from tsgf_lightning.config_defaults import code_default, new_at_default

    resolved = {"model": {"class_path": "tsgf_lightning.modules.synthesis.SynthesisModule",
                          "init_args": {"eps": 0.5, "betas": [0.5, 0.9]}},
                "data": {"frames": 8, "source": {"class_path": "tsgf_lightning.data.sources.UCF101",
                                                 "init_args": {"fold": 1}}}}
    assert code_default(resolved, "model.init_args.eps") == 0.5
    assert code_default(resolved, "data.source.init_args.fold") == 1
    assert code_default(resolved, "data.frames") == 8
    assert code_default(resolved, "trainer.max_steps") == -1  # Lightning's Trainer
    old = {"model.init_args.eps": 0.5, "data.frames": 8}
    assert new_at_default(old, dict(old), resolved) == []
    assert new_at_default(old, {**old, "model.init_args.betas": [0.5, 0.9]}, resolved) == ["model.init_args.betas"]
    assert new_at_default(old, {**old, "model.init_args.betas": [0.9, 0.9]}, resolved) is None  # new, not default
    assert new_at_default(old, {**old, "data.frames": 16}, resolved) is None  # a changed value
    assert new_at_default(old, {"data.frames": 8}, resolved) is None  # a removed option
    assert new_at_default(old, {**old, "seed_everything": 0}, resolved) is None  # no class declares it
    assert new_at_default(old, {**old, "model.init_args.nonexistent": 1}, resolved) is None


@pytest.mark.slow
def test_rerun_after_changes_reruns_exactly_the_stale_stages_and_keeps_the_old_outputs(copied, subprocess_env):
    cfg, out = copied
    old_rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    old_set = out / "synthesis_ipc1" / "distilled.pt"
    kept_copy = out.parent / "old_distilled.pt"
    shutil.copy(old_set, kept_copy)

    # a synthesis key: synthesis and the tsgf students run again, nothing else
    edit(cfg / "synthesis.yaml", "trainer.max_steps", 4)
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 stage(s) are stale" in proc.stdout and "synthesis ipc1: trainer.max_steps: 3 -> 4" in proc.stdout
    events = stage_lines(proc.stdout)
    ran = sorted(t for t, e in events.items() if e.startswith("done in"))
    assert ran == ["student tsgf ipc1 seed0", "student tsgf ipc1 seed1", "synthesis ipc1"]
    assert all(e.startswith("skipped") for t, e in events.items() if t not in ran)
    assert json.loads((out / "synthesis_ipc1" / "result.json").read_text())["global_step"] == 4
    [aside] = list((out / "superseded").iterdir())
    assert filecmp.cmp(aside / "synthesis_ipc1" / "distilled.pt", kept_copy, shallow=False)  # nothing lost
    assert (aside / "students" / "tsgf" / "ipc1" / "seed1" / "result.json").is_file()
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["tsgf"]["fingerprints"] != old_rows["tsgf"]["fingerprints"]
    for method in ("full", "random", "random+student"):
        assert rows[method]["fingerprints"] == old_rows[method]["fingerprints"]

    # a student key: only the students run again
    edit(cfg / "student.yaml", "model.init_args.temperature", 2.0)
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = stage_lines(proc.stdout)
    assert sorted(t for t, e in events.items() if e.startswith("done in")) == sorted(
        f"student {m} ipc1 seed{s}" for m in FOUR[1:] for s in (0, 1))
    assert events["teacher"].startswith("skipped") and events["synthesis ipc1"].startswith("skipped")
    hp = yaml.safe_load((out / "students" / "random" / "ipc1" / "seed0" / "hparams.yaml").read_text())
    assert hp["temperature"] == 2.0


@pytest.mark.slow
def test_an_unreadable_result_is_named_and_its_stage_reruns(copied, subprocess_env):
    cfg, out = copied
    broken = out / "students" / "random" / "ipc1" / "seed0" / "result.json"
    broken.write_text("")
    status = current_statuses(cfg, out)
    assert status["student_random_ipc1_seed0"].state == "stale"
    [reason] = status["student_random_ipc1_seed0"].reasons
    assert str(broken) in reason and "cannot be read" in reason and "JSONDecodeError" in reason
    assert [n for n, s in status.items() if s.state != "done"] == ["student_random_ipc1_seed0"]
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(broken) in proc.stdout
    assert "test" in json.loads(broken.read_text())
    [aside] = list((out / "superseded").iterdir())
    assert (aside / "students" / "random" / "ipc1" / "seed0" / "result.json").read_text() == ""


def test_an_interrupted_run_under_another_config_is_set_aside_not_resumed(copied):
    cfg, out = copied
    run = out / "synthesis_ipc1"
    (run / "result.json").unlink()
    status = current_statuses(cfg, out)
    assert status["synthesis_ipc1"].state == "resume"  # same fingerprint: it continues where it stopped
    edit(cfg / "synthesis.yaml", "model.init_args.bn_weight", 0.5)
    stages = {st.name: st for st in plan(cfg, out, load_pipeline_config(cfg / "pipeline.yaml"))}
    resolved = resolve_stages(list(stages.values()))
    status = statuses(list(stages.values()), resolved)
    assert status["synthesis_ipc1"].state == "stale"
    assert "model.init_args.bn_weight: 0.001 -> 0.5" in status["synthesis_ipc1"].reasons[0]
    old_ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    fp, moved = prepare_launch(stages["synthesis_ipc1"], resolved["synthesis_ipc1"], out, out / "superseded" / "t")
    assert moved == [out / "superseded" / "t" / "synthesis_ipc1"]
    assert sorted(p.name for p in (moved[0] / "checkpoints").iterdir()) == old_ckpts  # kept, not deleted
    assert sorted(p.name for p in run.iterdir()) == [FINGERPRINT_FILE]  # nothing left to resume from
    assert json.loads((run / FINGERPRINT_FILE).read_text())["digest"] == fp["digest"]


def test_an_output_dir_that_cannot_be_written_is_refused_before_anything(tmp_path, finished_pipeline):
    cfg, _, _ = finished_pipeline
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PipelineError, match=r"cannot write the output dir .*a-file/out: .*a-file is not a directory"):
        run_pipeline(cfg, blocker / "out")


@pytest.mark.slow
def test_unreadable_videos_are_reported_on_every_run_in_the_console_and_results_md(tmp_path, tiny_embedded,
                                                                                   shared_cache_dir, subprocess_env):
    root = tiny_embedded.copy_to(tmp_path / "videos")  # VideoFolder layout: root/{train,test}/<class>/*.mkv
    bad = sorted((root / "train").rglob("*.mkv"))[5]
    bad.write_bytes(b"not a video")
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir, {"ipc": [1], "seeds": 1,
                                                                            "methods": ["full"]})
    edit(cfg / "data.yaml", "data.source", {"class_path": "tsgf_lightning.data.sources.VideoFolder",
                                            "init_args": {"root": str(root)}})
    out = tmp_path / "out"
    for attempt in ("first run", "rerun, every stage skipped"):
        proc = run_cli(cfg, out, subprocess_env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"warning: 1 unreadable video(s) left out of the 'fit' part: {bad}" in proc.stdout, attempt
    assert "skipped" in stage_lines(proc.stdout)["teacher"]
    md = (out / "results.md").read_text()
    assert "## Unreadable videos" in md and f"`fit`: 1 skipped: `{bad}`" in md


def test_a_config_edited_while_the_pipeline_runs_is_what_the_stage_records(copied, capsys, monkeypatch):
    """Edited after planning, before the stage starts: the stage reads the new file, so its fingerprint must say so."""
    import tsgf_lightning.pipeline.run as run_module

    cfg, out = copied
    (out / "students" / "random" / "ipc1" / "seed0" / "result.json").unlink()  # this stage runs again
    planned = run_module._statuses

    def statuses_then_edit(stages, resolved):
        status = planned(stages, resolved)
        edit(cfg / "student.yaml", "model.init_args.temperature", 2.0)  # after every stage was resolved
        return status

    monkeypatch.setattr(run_module, "_statuses", statuses_then_edit)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_pipeline(cfg, out, bar=False)
    assert "student random ipc1 seed0 changed since this run started" in capsys.readouterr().out
    result = json.loads((out / "students" / "random" / "ipc1" / "seed0" / "result.json").read_text())
    assert result["fingerprint"]["config"]["model.init_args.temperature"] == 2.0
    hp = yaml.safe_load((out / "students" / "random" / "ipc1" / "seed0" / "hparams.yaml").read_text())
    assert hp["temperature"] == 2.0
