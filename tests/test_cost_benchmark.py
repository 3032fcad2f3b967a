"""benchmarks/cost.py and its report: the ratios and Figure 1's points against naive sums, and one real run.

The real run measures tsgf and dm on the tiny embedded dataset (each in its own child process, as
the benchmark does), then draws Figure 1 from an accuracy table the test writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .pipeline_utils import make_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from cost_report import EXPERTS_ROW, figure1, figure1_points, markdown, synthesis_wall  # noqa: E402

META = {"config_dir": "cfg", "command": "python benchmarks/cost.py", "torch": "t", "lightning": "l", "cpu_count": 2,
        "threads": 2, "accelerator": "cpu", "steps": 6}


def row(method, ipc, frames, s_per_iter, wall, peak=1000.0, **extra):
    return {"method": method, "ipc": ipc, "frames": frames, "s_per_iter": s_per_iter, "cpu_s_per_iter": 2 * s_per_iter,
            "peak_rss_mb": peak, "growth_mb": peak / 2, "setup_s": 1.0, "wall_to_budget_s": wall,
            "budget": {"max_steps": 10}, **extra}


def run_cost(cfg: Path, out: Path, env: dict, *args: str) -> None:
    """benchmarks/cost.py at IPC 1 and the tiny dataset's 8 frames, as a user runs it."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cost.py"), "--config-dir", str(cfg), "--ipc", "1",
                           "--frames", "8", "--output-dir", str(out), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_committed_reports_are_what_their_committed_rows_give():
    for name in ("embedded", "ucf101_mini9"):
        results = REPO / "benchmarks" / "results" / "cost" / name
        data = json.loads((results / "cost.json").read_text())
        assert markdown(data["rows"], data, data["experts_for_mtt"]) == (results / "cost.md").read_text()


def test_ratios_are_against_tsgf_at_the_same_ipc_and_frames():
    rows = [row("tsgf", 1, 8, 2.0, 100.0), row("tsgf", 5, 8, 4.0, 300.0), row("dm", 1, 8, 6.0, 250.0),
            row("dm", 5, 8, 5.0, 600.0), {"method": "mtt", "ipc": 1, "frames": 8, "error": "killed"}]
    lines = {tuple(line.split(" | ")[:3]): line.split(" | ") for line in markdown(rows, META, 2).splitlines()
             if line.startswith("| dm") or line.startswith("| tsgf") or line.startswith("| mtt")}
    assert lines[("| dm", "1", "8")][4] == f"{6.0 / 2.0:.2f}x" and lines[("| dm", "5", "8")][4] == f"{5.0 / 4.0:.2f}x"
    assert lines[("| dm", "1", "8")][6] == f"{12.0 / 4.0:.2f}x"  # CPU time against tsgf's CPU time
    assert lines[("| dm", "5", "8")][11] == f"{600.0 / 300.0:.2f}x"  # wall to budget
    assert lines[("| tsgf", "1", "8")][4] == "1.00x"
    assert lines[("| mtt", "1", "8")][3].startswith("failed: killed")


def test_mtt_pays_for_its_experts_and_the_figure_takes_one_frame_count():
    rows = [row("tsgf", 1, 8, 2.0, 100.0, peak=800.0), row("mtt", 1, 8, 9.0, 400.0, peak=1600.0),
            row(EXPERTS_ROW, None, 8, 1.0, 50.0), row("dm", 1, 8, 3.0, 200.0, cuda_max_allocated_mb=123.0),
            row("tsgf", 1, 16, 4.0, 900.0), row("vdsd", 1, 8, 3.0, 10.0) | {"error": "killed"}]
    walls = synthesis_wall(rows, n_experts=3)
    assert walls[("mtt", 1, 8)] == 400.0 + 3 * 50.0 and walls[("tsgf", 1, 8)] == 100.0
    assert ("vdsd", 1, 8) not in walls and not any(m == EXPERTS_ROW for m, _, _ in walls)
    accuracy = [{"method": "tsgf", "ipc": 1, "top1_mean": 0.5}, {"method": "tsgf", "ipc": 1, "top1_mean": 0.1},
                {"method": "mtt", "ipc": 1, "top1_mean": 0.25}, {"method": "dm", "ipc": 1, "top1_mean": 0.2},
                {"method": "vdsd", "ipc": 1, "top1_mean": 0.3}, {"method": "sre2l", "ipc": 1, "top1_mean": 0.4}]
    points = {p["method"]: p for p in figure1_points(rows, accuracy, n_experts=3)}
    assert sorted(points) == ["dm", "mtt", "tsgf"]  # measured and in the accuracy table; the failed vdsd is not
    assert points["tsgf"] == {"method": "tsgf", "ipc": 1, "frames": 8, "wall_s": 100.0, "top1": 50.0,
                              "memory_mb": 800.0}  # the smallest frame count, the first row of a method
    assert points["mtt"]["wall_s"] == 550.0 and points["dm"]["memory_mb"] == 123.0  # CUDA's peak when measured
    assert [p["wall_s"] for p in figure1_points(rows, accuracy, 3, frames=16)] == [900.0]
    assert figure1(rows, [{"method": "herding", "ipc": 1, "top1_mean": 0.3}], "unused.png") is None
    # without its experts' row MTT's cost is unknown: no wall time, no point (not a cheaper-looking one)
    no_experts = [r for r in rows if r["method"] != EXPERTS_ROW]
    assert ("mtt", 1, 8) not in synthesis_wall(no_experts, 3)
    assert sorted(p["method"] for p in figure1_points(no_experts, accuracy, 3)) == ["dm", "tsgf"]


def test_a_real_run_measures_each_method_in_its_own_process_and_draws_figure1(tmp_path, tiny_embedded,
                                                                             shared_cache_dir, subprocess_env):
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir, {"ipc": [1]}, baselines=True)
    dm = yaml.safe_load((cfg / "dm.yaml").read_text())
    dm["trainer"]["max_steps"] = 3  # room for the 3 measured iterations
    (cfg / "dm.yaml").write_text(yaml.safe_dump(dm))
    accuracy = tmp_path / "results.json"
    keys = {"arch": "ConvNet3D", "top1_std": 0.0, "top5_mean": 1.0, "top5_std": 0.0, "seeds": 1}
    accuracy.write_text(json.dumps([{"method": "tsgf", "ipc": 1, "top1_mean": 0.6, **keys},
                                    {"method": "dm", "ipc": 1, "top1_mean": 0.3, **keys}]))
    out = tmp_path / "cost"
    run_cost(cfg, out, subprocess_env, "--methods", "tsgf", "dm", "--steps", "3", "--accuracy", str(accuracy))
    data = json.loads((out / "cost.json").read_text())
    assert [(r["method"], r["ipc"], r["frames"]) for r in data["rows"]] == [("tsgf", 1, 8), ("dm", 1, 8)]
    for r in data["rows"]:
        assert "error" not in r, r
        assert len(r["iterations_s"]) == 3 and r["s_per_iter"] == sorted(r["iterations_s"][2:])[0]
        assert r["peak_rss_mb"] >= r["rss_before_fit_mb"] > 100  # a real process that imported torch
        assert r["wall_to_budget_s"] == pytest.approx(r["setup_s"] + r["s_per_iter"] * r["budget"]["max_steps"])
    assert markdown(data["rows"], data, data["experts_for_mtt"]) == (out / "cost.md").read_text()
    assert (out / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "f8" / "teacher" / "checkpoints" / "last.ckpt").is_file()  # the throwaway teacher
    # a budget shorter than the measured iterations is a failed row that says so, not a median of nothing
    run_cost(cfg, tmp_path / "short", subprocess_env, "--methods", "dm", "--steps", "4")
    (failed,) = json.loads((tmp_path / "short" / "cost.json").read_text())["rows"]
    assert "stopped after 3 of the 4 measured iterations" in failed["error"]
