"""The report of benchmarks/cost.py: the Markdown table (ratios against tsgf) and the Figure-1 plot."""

from __future__ import annotations

from pathlib import Path

#: The row of MTT's expert stage (counted apart from MTT's iterations).
EXPERTS_ROW = "mtt experts"
#: Iterations (the expert stage: epochs) measured but left out of the median: the first ones pay one-off costs.
WARMUP = 2


def _mb(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def _seconds(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 100 else (f"{value:.0f}" if value < 3600 else f"{value / 3600:.1f} h")


def _ratio(a, b) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def markdown(rows: list[dict], meta: dict, n_experts: int) -> str:
    """The cost table: one line per row, ratios against tsgf at the same IPC and frame count."""
    tsgf = {(r["ipc"], r["frames"]): r for r in rows if r["method"] == "tsgf" and "error" not in r}
    gpu = any("cuda_max_allocated_mb" in r for r in rows)
    lines = [f"# Cost of the distillation methods ({meta['config_dir']})", "",
             f"Command: `{meta['command']}`", "",
             f"torch {meta['torch']}, lightning {meta['lightning']}, {meta['cpu_count']} CPUs, "
             f"{meta['threads']} intra-op threads, accelerator {meta['accelerator']}; {meta['steps']} iterations per "
             f"child, the first {WARMUP} discarded. Each row is its own fresh process, run one after another.", "",
             "s/iter: median time per iteration. Wall to budget: **extrapolated**, setup + s/iter x the config's "
             "`trainer.max_steps` (VDSD: each stage's median x its steps; experts: the 2nd epoch x `max_epochs` x "
             f"{n_experts} experts, the pipeline's count; MTT's own rows leave them out, the figure adds them); "
             "checkpoints and the final export are not in it. Peak RSS: "
             "the child's `ru_maxrss`; growth: peak minus the RSS right before `trainer.fit` (so torch's import is "
             "not counted, the data, teacher/experts, set and activations are). tsgf/sre2l use a 1-step throwaway "
             "teacher: a step costs the same whatever its weights.", "",
             "CPU s/iter: the process's CPU time (all threads) per iteration, less sensitive than wall time to "
             "other work on a shared machine (but not immune: contended threads spin).", "",
             "| method | IPC | frames | s/iter | s/iter ÷ tsgf | CPU s/iter | CPU ÷ tsgf | peak RSS MB | growth MB |"
             + (" CUDA peak MB |" if gpu else "") + " setup s | wall to budget (extrapolated) | wall ÷ tsgf | budget |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---:|---:|---|"]
    for r in rows:
        ipc = "—" if r["ipc"] is None else r["ipc"]
        if "error" in r:
            lines.append(f"| {r['method']} | {ipc} | {r['frames']} | failed: {r['error'][:200]} |")
            continue
        ref = tsgf.get((r["ipc"], r["frames"])) or next((t for (_, f), t in tsgf.items() if f == r["frames"]), None)
        experts = r["method"] == EXPERTS_ROW
        per_iter = "—" if experts else _ratio(r["s_per_iter"], ref and ref["s_per_iter"])
        cpu = "—" if experts else _ratio(r["cpu_s_per_iter"], ref and ref["cpu_s_per_iter"])
        budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items())
        wall = r["wall_to_budget_s"] * (n_experts if r["method"] == EXPERTS_ROW else 1)
        if r["method"] == EXPERTS_ROW:
            budget += f", {n_experts} experts, {r['s_per_epoch']:.3g} s/epoch"
        if r["method"] == "vdsd":
            budget += f"; s/iter static {r['s_per_iter_static']:.3g}, dynamic {r['s_per_iter_dynamic']:.3g}"
        lines.append(f"| {r['method']} | {ipc} | {r['frames']} | {r['s_per_iter']:.3g} | {per_iter} | "
                     f"{r['cpu_s_per_iter']:.3g} | {cpu} | "
                     f"{_mb(r['peak_rss_mb'])} | {_mb(r['growth_mb'])} |"
                     + (f" {_mb(r.get('cuda_max_allocated_mb'))} |" if gpu else "")
                     + f" {r['setup_s']:.1f} | {_seconds(wall)} | "
                       f"{'—' if experts else _ratio(wall, ref and ref['wall_to_budget_s'])} | "
                       f"{budget} |")
    return "\n".join(lines) + "\n"


def synthesis_wall(rows: list[dict], n_experts: int) -> dict[tuple, float]:
    """Extrapolated wall time per (method, ipc, frames); MTT's includes its experts (they are part of its cost),
    so an MTT row whose frame count has no measured experts row has none (it would look cheaper than it is)."""
    experts = {r["frames"]: r["wall_to_budget_s"] * n_experts for r in rows
               if r["method"] == EXPERTS_ROW and "error" not in r}
    return {(r["method"], r["ipc"], r["frames"]): r["wall_to_budget_s"] + (experts[r["frames"]]
                                                                            if r["method"] == "mtt" else 0.0)
            for r in rows if r["method"] != EXPERTS_ROW and "error" not in r
            and (r["method"] != "mtt" or r["frames"] in experts)}


def figure1_points(cost_rows, accuracy_rows, n_experts: int = 2, frames: int | None = None) -> list[dict]:
    """Figure 1's markers: one per (method, IPC) found in both tables, at one frame count.

    Accuracy rows are a pipeline's ``results.json`` (``method``, ``ipc``, ``top1_mean``; the first
    ``arch`` of a method is used), which carries no frame count, so the cost rows of one frame count
    are used (``frames``; default the smallest measured). Each point: ``method``, ``ipc``, ``wall_s``
    (:func:`synthesis_wall`: MTT's includes its experts), ``top1`` (%) and ``memory_mb`` (CUDA's
    peak when measured, else the peak RSS).
    """
    walls = synthesis_wall(cost_rows, n_experts)  # from every row: MTT's wall takes the experts' row's
    cost_rows = [r for r in cost_rows if "error" not in r and r["method"] != EXPERTS_ROW]
    if not cost_rows:
        return []
    frames = frames or min(r["frames"] for r in cost_rows)
    accuracy: dict[tuple, float] = {}
    for a in accuracy_rows:
        accuracy.setdefault((a["method"], a["ipc"]), 100 * float(a["top1_mean"]))
    return [{"method": r["method"], "ipc": r["ipc"], "frames": frames, "wall_s": walls[(r["method"], r["ipc"], frames)],
             "top1": accuracy[(r["method"], r["ipc"])], "memory_mb": r.get("cuda_max_allocated_mb", r["peak_rss_mb"])}
            for r in cost_rows if r["frames"] == frames and (r["method"], r["ipc"]) in accuracy
            and (r["method"], r["ipc"], frames) in walls]


def figure1(cost_rows, accuracy_rows, path, n_experts: int = 2, frames: int | None = None) -> Path | None:
    """Test top-1 (%) against the extrapolated synthesis wall time (log x); marker area follows peak memory.

    The markers are :func:`figure1_points`', one colour per method, labelled with IPC and memory; None
    (nothing drawn) when no (method, IPC) is in both tables. Drawn with matplotlib's object-oriented
    ``Figure``, as ``results.py`` draws its plot.
    """
    from matplotlib.figure import Figure

    points = figure1_points(cost_rows, accuracy_rows, n_experts, frames)
    if not points:
        return None
    largest = max(p["memory_mb"] for p in points)
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.subplots()
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(p["method"] for p in points))}
    labelled: set[str] = set()
    for p in points:
        label = None if p["method"] in labelled else p["method"]
        labelled.add(p["method"])
        ax.scatter([p["wall_s"]], [p["top1"]], s=40 + 400 * p["memory_mb"] / largest, alpha=0.6, label=label,
                   color=colours[p["method"]])
        ax.annotate(f"IPC {p['ipc']}, {p['memory_mb']:.0f} MB", (p["wall_s"], p["top1"]), textcoords="offset points",
                    xytext=(6, 4), fontsize="x-small")
    ax.set_xscale("log")
    ax.set_xlabel(f"synthesis wall time to budget, s (extrapolated; {points[0]['frames']} frames)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="marker area: peak memory", title_fontsize="x-small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
