"""Benchmark results: per-run accuracies -> ``results.json``, ``results.md``, an accuracy-vs-IPC plot, TensorBoard.

The pipeline and any later benchmark script share these functions:

- :func:`aggregate` turns per-run records ``{"method", "ipc", "arch", "seed", "top1", "top5"}``
  into one row per ``(method, ipc, arch)``: ``{"method", "ipc", "arch", "seeds", "top1_mean",
  "top1_std", "top5_mean", "top5_std"}``;
- :func:`write_results` writes ``results.json`` (those rows), ``results.md``, ``accuracy_vs_ipc.png``
  and a TensorBoard summary (the table as text, the plot as an image).

Accuracies are fractions in ``[0, 1]`` everywhere but the Markdown table and the plot (percent).
``std`` is the *sample* standard deviation over seeds (``n - 1`` in the denominator: the seeds are a
sample of the seed distribution, and it is what papers' "mean +- std over N runs" usually means),
0 for a single run. ``ipc`` is None for a method trained on all real data (the teacher row, ``full``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .atomic import write_text_atomic
from .paired import paired_markdown, plot_paired

ROW_KEYS = ("method", "ipc", "arch", "seeds", "top1_mean", "top1_std", "top5_mean", "top5_std")
#: Written when known: ``fingerprints``, the short fingerprint digest of each run aggregated in the row
#: (:mod:`~tsgf_lightning.fingerprint`), in seed order, so every number says which stage made it.
OPTIONAL_KEYS = ("fingerprints",)


def sample_std(values: Sequence[float]) -> float:
    """``sqrt(sum (x - mean)^2 / (n - 1))``; 0 for ``n = 1``."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(runs: Iterable[Mapping]) -> list[dict]:
    """One row per ``(method, ipc, arch)``, in order of first appearance, with mean and sample std over seeds.

    Args:
        runs: records with keys ``method``, ``ipc`` (int or None), ``arch``, ``top1``, ``top5``
            (fractions), optionally ``fingerprint`` (collected into the row's ``fingerprints``);
            other keys (``seed``) are ignored.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for run in runs:
        for key in ("method", "ipc", "arch", "top1", "top5"):
            if key not in run:
                raise ValueError(f"Expected every run record to have key `{key}` but got {dict(run)}")
        groups.setdefault((run["method"], run["ipc"], run["arch"]), []).append(run)
    rows = []
    for (method, ipc, arch), members in groups.items():
        top1 = [float(r["top1"]) for r in members]
        top5 = [float(r["top5"]) for r in members]
        row = {"method": method, "ipc": ipc, "arch": arch, "seeds": len(members),
               "top1_mean": sum(top1) / len(top1), "top1_std": sample_std(top1),
               "top5_mean": sum(top5) / len(top5), "top5_std": sample_std(top5)}
        if any(r.get("fingerprint") for r in members):
            row["fingerprints"] = [r.get("fingerprint") for r in members]
        rows.append(row)
    return rows


def read_results(path: str | Path) -> list[dict]:
    """Rows of a ``results.json`` (to merge several pipelines' results in one table)."""
    rows = json.loads(Path(path).read_text())
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}: row {row} lacks keys {missing}")
    return rows


# ---------------------------------------------------------------------- Markdown
def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _accuracy_table(rows: Sequence[Mapping], metric: str) -> list[str]:
    ipcs = sorted({r["ipc"] for r in rows if r["ipc"] is not None})
    has_full = any(r["ipc"] is None for r in rows)
    columns = (["all data"] if has_full else []) + [f"IPC {k}" for k in ipcs]
    lines = ["| method | arch | seeds | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    by_key: dict[tuple, dict] = {}
    for r in rows:
        by_key.setdefault((r["method"], r["arch"]), {})[r["ipc"]] = r
    for (method, arch), cells in by_key.items():
        seeds = "/".join(str(s) for s in sorted({c["seeds"] for c in cells.values()}))
        keys = ([None] if has_full else []) + ipcs
        values = [_pct(cells[k][f"{metric}_mean"], cells[k][f"{metric}_std"]) if k in cells else "" for k in keys]
        lines.append(f"| {method} | {arch} | {seeds} | " + " | ".join(values) + " |")
    return lines


EVALUATED_ON = {"test": "the real test split", "val": "the validation carve-out of the training split"}


def results_markdown(rows: Sequence[Mapping], stages: Sequence[Mapping] | None = None, evaluate_on: str = "test",
                     skipped: Mapping[str, Sequence[str]] | None = None) -> str:
    """The readable table: methods x IPC, ``mean ± std`` in %, top-1 then top-5, then stage wall times.

    Args:
        rows: aggregated rows (:func:`aggregate`).
        stages: optional ``{"stage", "status", "wall_s", "top1"}`` records, one per pipeline stage.
        evaluate_on: what the accuracies were measured on: ``test`` or ``val`` (named in the heading).
        skipped: unreadable videos left out of each decoded part (``{"fit": [paths], ...}``), listed
            under the table so that nobody reads a number without knowing what it lacks.
    """
    out = ["# Results" if evaluate_on == "test" else "# Validation results (for choosing settings; not test accuracy)",
           "", f"Accuracy on {EVALUATED_ON[evaluate_on]} in %: mean ± sample standard deviation over student seeds "
           "(0 for one run). `all data`: the teacher, trained on the real training split less any validation "
           "carve-out.", "",
           "## Top-1", "", *_accuracy_table(rows, "top1"), "",
           "## Top-5", "", *_accuracy_table(rows, "top5"), ""]
    skipped = {k: list(v) for k, v in (skipped or {}).items() if v}
    if skipped:
        out += ["## Unreadable videos", "",
                "These videos could not be decoded and are not in the splits every number above was computed on:", ""]
        for split_name, paths in skipped.items():
            more = f" and {len(paths) - 20} more" if len(paths) > 20 else ""
            shown = ", ".join(f"`{p}`" for p in paths[:20]) + more
            out.append(f"- `{split_name}`: {len(paths)} skipped: {shown}")
        out.append("")
    if stages:
        out += ["## Stages", "", "| # | stage | status | wall time | top-1 | fingerprint |",
                "|---|---|---|---|---|---|"]
        for i, s in enumerate(stages, 1):
            top1 = f"{100 * s['top1']:.1f}" if s.get("top1") is not None else ""
            fp = f"`{s['fingerprint']}`" if s.get("fingerprint") else ""
            out.append(f"| {i} | {s['stage']} | {s['status']} | {_duration(s.get('wall_s'))} | {top1} | {fp} |")
        known = [s["wall_s"] for s in stages if s.get("wall_s") is not None]
        ran = [s["wall_s"] for s in stages if s["status"] == "ran" and s.get("wall_s") is not None]
        out += ["", f"Sum of stage wall times: {_duration(sum(known))} (stages run by the last invocation: "
                    f"{_duration(sum(ran))}).", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------- plot
def plot_accuracy_vs_ipc(rows: Sequence[Mapping], path: str | Path, metric: str = "top1",
                         evaluate_on: str = "test") -> Path:
    """Line per ``(method, arch)`` of ``metric`` (%) against IPC with std error bars; ``ipc: None`` rows dashed.

    Uses matplotlib's object-oriented ``Figure`` (rendered by Agg) rather than pyplot, so no global
    backend or figure state is touched.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.subplots()
    series: dict[tuple, list[Mapping]] = {}
    for r in rows:
        series.setdefault((r["method"], r["arch"]), []).append(r)
    methods_with_archs = {}
    for method, arch in series:
        methods_with_archs.setdefault(method, set()).add(arch)
    ipcs = sorted({r["ipc"] for r in rows if r["ipc"] is not None})
    log_x = bool(ipcs) and ipcs[-1] / ipcs[0] >= 10
    lines = [key for key, members in series.items() if any(r["ipc"] is not None for r in members)]
    span = (ipcs[-1] - ipcs[0]) or 1.0 if ipcs else 1.0
    for (method, arch), members in series.items():
        label = method if len(methods_with_archs[method]) == 1 else f"{method} ({arch})"
        full = [r for r in members if r["ipc"] is None]
        points = sorted((r for r in members if r["ipc"] is not None), key=lambda r: r["ipc"])
        for r in full:
            ax.axhline(100 * r[f"{metric}_mean"], linestyle="--", color="gray", label=f"{label}: all data")
        if points:
            # dodge the lines sideways a little so error bars at the same IPC do not hide each other
            j = lines.index((method, arch)) - (len(lines) - 1) / 2
            xs = [r["ipc"] * 1.03 ** j if log_x else r["ipc"] + 0.03 * span * j for r in points]
            ax.errorbar(xs, [100 * r[f"{metric}_mean"] for r in points],
                        yerr=[100 * r[f"{metric}_std"] for r in points], marker="o", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    if ipcs:
        ax.set_xticks(ipcs, [str(k) for k in ipcs])
        pad = 0.5 if len(ipcs) == 1 else 0.0
        if pad:
            ax.set_xlim(ipcs[0] - pad, ipcs[0] + pad)
    ax.set_xlabel("videos per class (IPC)")
    ax.set_ylabel(f"{evaluate_on} {metric.replace('top', 'top-')} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------- files and TensorBoard
def log_summary_to_tensorboard(log_dir: str | Path, markdown: str, image_path: str | Path | None) -> None:
    """Replace the event files in ``log_dir`` by one holding the table (``add_text``) and the plot (``add_image``).

    Earlier summaries are deleted: the summary is recomputed in full each time, and TensorBoard
    would otherwise show stale tables next to the new one.
    """
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_text("results", markdown, global_step=0)
        if image_path is not None:
            image = imread(str(image_path))[..., :3]  # (H, W, 3) floats in [0, 1] (PNG, RGBA dropped)
            writer.add_image("accuracy_vs_ipc", image, global_step=0, dataformats="HWC")
    finally:
        writer.close()


def write_results(out_dir: str | Path, rows: Sequence[Mapping], stages: Sequence[Mapping] | None = None,
                  tensorboard: bool = True, evaluate_on: str = "test",
                  skipped: Mapping[str, Sequence[str]] | None = None,
                  paired: Sequence[Mapping] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``accuracy_vs_ipc.png`` and (optionally) ``summary/`` under ``out_dir``.

    ``evaluate_on`` names what the accuracies were measured on (``test``, or ``val`` for a settings search).
    ``paired`` rows (:func:`~tsgf_lightning.paired.paired_differences`) go to ``paired.json``, a
    section of ``results.md`` and ``paired.png`` (:func:`~tsgf_lightning.paired.plot_paired`).

    Returns:
        The written paths by name (``json``, ``md``, ``png``, and ``tensorboard`` when written).
    """
    out = Path(out_dir)
    rows = [{k: row[k] for k in (*ROW_KEYS, *OPTIONAL_KEYS) if k in row} for row in rows]
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "accuracy_vs_ipc.png"}
    write_text_atomic(paths["json"], json.dumps(rows, indent=2) + "\n")
    markdown = results_markdown(rows, stages, evaluate_on, skipped)
    if paired:
        paths["paired"], paths["paired_png"] = out / "paired.json", out / "paired.png"
        write_text_atomic(paths["paired"], json.dumps(list(paired), indent=2) + "\n")
        markdown += paired_markdown(paired, evaluate_on) + "\n![paired differences](paired.png)\n"
        plot_paired(paired, paths["paired_png"], evaluate_on)
    write_text_atomic(paths["md"], markdown)
    plot_accuracy_vs_ipc(rows, paths["png"], evaluate_on=evaluate_on)
    if tensorboard:
        paths["tensorboard"] = out / "summary"
        log_summary_to_tensorboard(paths["tensorboard"], markdown, paths["png"])
    return paths
