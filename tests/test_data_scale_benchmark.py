"""benchmarks/data_scale.py: its summary of repeated pairs against a naive computation, and one real small run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from data_scale import summary  # noqa: E402


def side(videos, seconds, parent, total):
    return {"videos": videos, "seconds": seconds, "peak_parent_rss_anon_mib": parent, "peak_total_pss_anon_mib": total}


def test_summary_takes_medians_over_pairs_and_the_ratio_range():
    pairs = [{"project": side(100, 2.0, 10, 300), "plain": side(100, 1.0, 5, 200)},   # 50 vs 100 clips/s: 0.5
             {"project": side(100, 1.0, 12, 900), "plain": side(100, 1.0, 6, 210)},   # 1.0
             {"project": side(100, 1.25, 11, 310), "plain": side(100, 1.0, 7, 220)}]  # 80 vs 100: 0.8
    s = summary({"videos": 100, "pairs": pairs})
    assert s["pairs"] == 3
    assert s["project"] == 80 and s["plain"] == 100
    assert (s["ratio"], s["low"], s["high"]) == (0.8, 0.5, 1.0)
    # The one pair that peaked high does not set the size's peak (a maximum would grow with the pairs run).
    assert s["project_total_pss_anon"] == 310 and s["project_parent_rss_anon"] == 11
    assert s["plain_total_pss_anon"] == 210 and s["plain_parent_rss_anon"] == 6


def test_a_small_run_repeats_the_short_size_and_writes_its_table(tmp_path, subprocess_env):
    out = tmp_path / "data_scale.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_scale.py"), "--sizes", "12", "--workers",
                           "2", "--root", str(tmp_path / "root"), "--min-seconds", "1000", "--max-pairs", "2",
                           "--out", str(out)], cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["videos"] == 12 and len(row["pairs"]) == 2  # 1000 s never reached: stopped at --max-pairs
    assert all(p["project"]["videos"] == 12 and p["plain"]["videos"] == 12 for p in row["pairs"])
    assert all(p["project"]["skipped"] == 0 for p in row["pairs"])
    table = out.read_text()
    assert "| 12 | " in table and "--max-pairs 2" in table
    assert not (tmp_path / "root" / "cache-12").exists()  # every measured cache is removed
