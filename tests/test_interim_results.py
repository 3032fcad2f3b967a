"""benchmarks/interim_results.py: the table of a run that has not finished holds its done stages only."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_interim_results_report_done_stages_and_list_the_rest(finished_pipeline, tmp_path):
    cfg, out, _ = finished_pipeline
    shutil.copytree(cfg, tmp_path / "cfg")
    shutil.copytree(out, tmp_path / "out", symlinks=True)
    cfg, out = tmp_path / "cfg", tmp_path / "out"
    (out / "students" / "tsgf" / "ipc1" / "seed1" / "result.json").unlink()  # not finished
    (out / "results.json").unlink()
    spec = importlib.util.spec_from_file_location("interim_results", REPO / "benchmarks" / "interim_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = module.interim(cfg, out, tmp_path / "interim", [])
    assert "student_tsgf_ipc1_seed1" in found["missing"] and found["done"] == found["stages"] - 1
    rows = {r["method"]: r for r in json.loads((tmp_path / "interim" / "results.json").read_text())}
    assert rows["tsgf"]["seeds"] == 1 and rows["random"]["seeds"] == 2
    text = (tmp_path / "interim" / "results.md").read_text()
    assert f"## Interim: {found['done']} of {found['stages']} stages done" in text
    assert "- missing: student tsgf ipc1 seed1" in text
    assert not (out / "results.json").exists()  # the run's own dir is only read

    student = yaml.safe_load((cfg / "student.yaml").read_text())
    student["model"]["init_args"]["temperature"] = 2.0  # every student's result is now stale: none is reported
    (cfg / "student.yaml").write_text(yaml.safe_dump(student))
    found = module.interim(cfg, out, tmp_path / "interim", [])
    assert [r["method"] for r in json.loads((tmp_path / "interim" / "results.json").read_text())] == ["full"]
    assert "- missing: student random ipc1 seed0 (stale)" in (tmp_path / "interim" / "results.md").read_text()
