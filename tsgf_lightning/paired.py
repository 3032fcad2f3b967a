"""Paired comparisons of two methods: the mean per-seed difference and its standard error.

Student seeds swing a few points on a small test or validation part, so two means side by side
hide differences that a paired comparison sees. Runs are paired when they share the IPC and the
seed; with ``synthesis_per_seed`` in ``pipeline.yaml`` seed ``s`` also fixes the synthesis
initialisation (``init_seed``) and its augmentation, so a pair differs only in what the two methods
change. For pairs ``d_s = variant_s - baseline_s`` (top-1 fractions), ``n`` of them::

    mean = sum_s d_s / n,   se = sqrt(sum_s (d_s - mean)^2 / (n - 1)) / sqrt(n)

(``se`` is None for one pair). Seeds present for only one of the two methods are left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

PAIRED_KEYS = ("variant", "baseline", "ipc", "pairs", "diff_mean", "diff_se", "diffs", "seeds", "unpaired")


def paired_differences(runs: Iterable[Mapping], pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """One row per (variant, baseline, IPC) with at least one common seed (keys: :data:`PAIRED_KEYS`).

    Args:
        runs: per-run records with ``method``, ``ipc``, ``seed`` and ``top1`` (as the pipeline collects them).
        pairs: ``(variant, baseline)`` method names; the difference is variant minus baseline.
    """
    top1: dict[tuple, float] = {}
    for run in runs:
        top1[(run["method"], run["ipc"], run["seed"])] = float(run["top1"])
    rows = []
    for variant, baseline in pairs:
        ipcs = sorted({ipc for (m, ipc, _) in top1 if m == variant and ipc is not None})
        for ipc in ipcs:
            mine = {s for (m, i, s) in top1 if m == variant and i == ipc}
            theirs = {s for (m, i, s) in top1 if m == baseline and i == ipc}
            seeds = sorted(mine & theirs)
            if not seeds:
                continue
            diffs = [top1[(variant, ipc, s)] - top1[(baseline, ipc, s)] for s in seeds]
            mean = sum(diffs) / len(diffs)
            se = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) / math.sqrt(len(diffs))
                  if len(diffs) > 1 else None)
            rows.append({"variant": variant, "baseline": baseline, "ipc": ipc, "pairs": len(diffs),
                         "diff_mean": mean, "diff_se": se, "diffs": diffs, "seeds": seeds,
                         "unpaired": len(mine ^ theirs)})
    return rows


def paired_markdown(rows: Sequence[Mapping], evaluate_on: str) -> str:
    """A Markdown section: one line per paired comparison, differences in points (percent)."""
    if not rows:
        return ""
    lines = ["", f"## Paired differences ({evaluate_on} top-1, variant minus baseline, same IPC and seed)", "",
             "| variant | baseline | IPC | pairs | difference (points) | per seed |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        se = "n/a" if r["diff_se"] is None else f"{100 * r['diff_se']:.1f}"
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in r["diffs"])
        lines.append(f"| `{r['variant']}` | `{r['baseline']}` | {r['ipc']} | {r['pairs']} | "
                     f"{100 * r['diff_mean']:+.1f} ± {se} | {per_seed} |")
    lines += ["", "± is the standard error of the mean paired difference (sample std of the differences / "
              "sqrt(pairs))."]
    return "\n".join(lines) + "\n"


def plot_paired(rows: Sequence[Mapping], path: str | Path, evaluate_on: str) -> Path:
    """One line per comparison: the mean paired difference (points) with its standard error, and each seed's.

    Read at a glance: a bar clear of the zero line is a difference the seeds agree on. Drawn with
    matplotlib's object-oriented ``Figure``, as the other plots.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 0.9 + 0.42 * len(rows)), dpi=110)
    ax = fig.subplots()
    for y, r in enumerate(reversed(rows)):
        mean, se = 100 * r["diff_mean"], 100 * (r["diff_se"] or 0.0)
        ax.errorbar([mean], [y], xerr=[se], fmt="o", color="C0", capsize=3)
        ax.scatter([100 * d for d in r["diffs"]], [y] * len(r["diffs"]), s=10, color="C1", alpha=0.7, zorder=3)
    ax.axvline(0.0, color="gray", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{r['variant']} - {r['baseline']} (IPC {r['ipc']}, {r['pairs']} pairs)"
                                     for r in reversed(rows)], fontsize="small")
    ax.set_xlabel(f"{evaluate_on} top-1 difference, points (mean ± standard error; dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
