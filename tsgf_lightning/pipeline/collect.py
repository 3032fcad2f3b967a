"""What finished stages report: per-run accuracies for the table, one-line summaries, skipped videos.

Everything is read from the stages' ``result.json`` (through :func:`result_of`), whose ``stage``
entry records what the stage was (kind, method, IPC, seed, architecture: :mod:`tsgf_lightning.stage`).
"""

from __future__ import annotations

from ..fingerprint import short
from ..freshness import read_result
from .config import PipelineConfig, PipelineError
from .plan import Stage


def result_of(stage: Stage) -> dict:
    """The stage's ``result.json``; a PipelineError naming the file if it cannot be read."""
    result, why = read_result(stage)
    if result is None:
        raise PipelineError(f"stage {stage.title}: {why}; run the pipeline again to redo the stage")
    return result


def summary(stage: Stage) -> tuple[str, float | None]:
    """``("top1 0.412", 0.412)`` (``val top1`` for a validation run), or ``("300 steps", None)`` for synthesis."""
    result = result_of(stage)
    part = "val" if stage.validate else "test"
    top1 = result.get(part, {}).get(f"{part}/acc_top1")
    if top1 is not None:
        return f"{part} top1 {top1:.3f}" if stage.validate else f"top1 {top1:.3f}", top1
    return f"{result.get('global_step', '?')} steps", None


def collect_runs(cfg: PipelineConfig, stages: list[Stage]) -> list[dict]:
    """Per-run records ``{"method", "ipc", "arch", "seed", "top1", "top5", "fingerprint"}``, in method order.

    Within a method, runs follow ``stages`` (IPC, then seed). The method is the row the pipeline
    planned the stage for; IPC, seed and architecture are what the stage recorded about itself.
    Accuracies are those of ``cfg.evaluate_on`` (the test split, or the validation carve-out).
    """
    runs = []
    part = cfg.evaluate_on
    for m in cfg.methods:
        if m.select == "teacher":
            mine = [st for st in stages if st.kind == "teacher"]
        else:
            mine = [st for st in stages if st.kind == "student" and st.method == m.name]
        for st in mine:
            result = result_of(st)
            entry, metrics = result["stage"], result[part]
            runs.append({"method": m.name, "ipc": entry["ipc"], "arch": entry["arch"], "seed": entry["seed"],
                         "top1": metrics[f"{part}/acc_top1"], "top5": metrics[f"{part}/acc_top5"],
                         "fingerprint": short((result.get("fingerprint") or {}).get("digest"))})
    return runs


def skipped_videos(stages: list[Stage]) -> dict[str, list[str]]:
    """Unreadable videos the stages' parts (fit / val / test) left out, from their ``result.json`` (sorted)."""
    found: dict[str, set[str]] = {}
    for st in stages:
        result, _ = read_result(st) if st.result.exists() else (None, None)
        for part, paths in ((result or {}).get("skipped_videos") or {}).items():
            found.setdefault(part, set()).update(paths)
    return {part: sorted(paths) for part, paths in sorted(found.items())}
