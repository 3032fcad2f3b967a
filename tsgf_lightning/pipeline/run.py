"""``run_pipeline``: check, plan, fingerprint, run what is not done and current, then write the results."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ..atomic import unwritable, write_json_atomic
from ..fingerprint import short
from ..freshness import prepare_launch, statuses, superseded_root
from ..paired import paired_differences
from ..results import aggregate, write_results
from .collect import collect_runs, result_of, skipped_videos, summary
from .config import PipelineError, check_int, contract, load_pipeline_config
from .devices import Want, detect_gpus, wanted
from .plan import Stage, check_config_dir, plan, resolve_stages
from .schedule import Scheduler, lock_output, sigterm_raises


def run_pipeline(config_dir: str | Path, output_dir: str | Path, dry_run: bool = False, bar: bool | None = None,
                 jobs: int | None = None, gpus: int | Sequence[str] | None = None) -> list[dict]:
    """Run (or resume) every stage that is not done and current, then write the results; returns the rows.

    ``jobs`` (default: ``pipeline.yaml``'s, else 1) stages run at once when their inputs are ready,
    each on GPUs of its own (``gpus``: the visible GPUs' ids, or their number; default: detected,
    :func:`~.devices.detect_gpus`). A finished stage whose config or inputs changed since it ran is
    stale: it and every stage downstream of it run again, and their old outputs are moved to
    ``OUT/superseded/<time>/`` (:mod:`~tsgf_lightning.freshness`).

    Raises:
        PipelineError: bad config dir or pipeline.yaml, arguments that do not parse, a stage that
            wants GPUs that are not there, an output dir that cannot be written, or a failed stage.
    """
    config_dir, out = Path(config_dir).resolve(), Path(output_dir).resolve()
    if not (config_dir / "pipeline.yaml").is_file():
        raise PipelineError(f"config dir {config_dir} lacks pipeline.yaml ({contract()})")
    cfg = load_pipeline_config(config_dir / "pipeline.yaml")
    jobs = check_int("`--jobs`", jobs, 1) if jobs is not None else cfg.jobs
    check_config_dir(config_dir, cfg.methods)
    if cfg.teacher is not None and not cfg.teacher.is_file():
        raise PipelineError(f"`teacher` of {config_dir / 'pipeline.yaml'} is {cfg.teacher}, which does not exist")
    _require_writable(out)
    stages = plan(config_dir, out, cfg)
    resolved = resolve_stages(stages)
    if gpus is None:
        gpu_ids = detect_gpus()
    else:
        gpu_ids = tuple(str(i) for i in range(gpus)) if isinstance(gpus, int) else tuple(map(str, gpus))
    wants = _wants(stages, resolved, gpu_ids)
    status = _statuses(stages, resolved)
    if dry_run:
        for i, st in enumerate(stages, 1):
            s = status[st.name]
            print(f"[{i}/{len(stages)}] {st.title} ({s.state}{': ' + '; '.join(s.reasons) if s.reasons else ''})\n"
                  f"  {shlex.join(st.command())}")
        return []
    lock = lock_output(out)
    previous = _read_stages(out / "stages.json")
    records: list[dict] = []
    aside = superseded_root(out)
    try:
        with sigterm_raises():
            heads = {st.name: f"[{i}/{len(stages)}] {st.title}" for i, st in enumerate(stages, 1)}
            _report_stale(stages, status, aside)
            for st in stages:
                if status[st.name].state == "done":
                    text, top1 = summary(st)
                    digest = status[st.name].digest
                    why = "".join(f"; {r}" for r in status[st.name].reasons)  # new options at their default
                    kind = "recorded" if why else "same"
                    print(f"{heads[st.name]} ... skipped (done, {kind} fingerprint {short(digest)}{why}): {text}",
                          flush=True)
                    wall = previous.get(st.name, {}).get("wall_s") or result_of(st).get("seconds")
                    records.append(_record(st, "skipped", wall, top1, digest))

            def save() -> None:
                write_json_atomic(list({**previous, **{r["stage"]: r for r in records}}.values()), out / "stages.json")

            def prepare(st: Stage) -> str:
                # Resolved again now: a config edited while earlier stages ran is what this stage reads,
                # so its fingerprint must be that config's, not the one planned at the start.
                now = resolve_stages([st])[st.name]
                if now != resolved[st.name]:
                    print(f"  (the configs of {st.title} changed since this run started; it runs and records "
                          f"them as they are now: {st.files()})", flush=True)
                    resolved[st.name] = now
                fingerprint, moved = prepare_launch(st, resolved[st.name], out, aside)
                for path in moved:
                    print(f"  (the superseded output of {st.title} is kept in {path})", flush=True)
                return fingerprint["digest"]

            def finished(st: Stage, wall: float, digest: str | None) -> None:
                records.append(_record(st, "ran", wall, summary(st)[1], digest))
                save()

            todo = [st for st in stages if status[st.name].state != "done"]
            Scheduler(out / "logs", jobs, gpu_ids, bar, prepare, finished, (lock.fileno(),)).run(todo, heads, wants)
            save()
            runs = collect_runs(cfg, stages)
            rows = aggregate(runs)
            skipped = skipped_videos(stages)
            paths = write_results(out, rows, records, evaluate_on=cfg.evaluate_on, skipped=skipped,
                                  paired=paired_differences(runs, cfg.pairs))
    finally:
        lock.close()
    for part, videos in skipped.items():
        print(f"warning: {len(videos)} unreadable video(s) left out of the {part!r} part: "
              f"{', '.join(videos[:5])}{' ...' if len(videos) > 5 else ''} (all listed in {paths['md']})", flush=True)
    print(f"results: {paths['md']}, {paths['json']}, {paths['png']}; TensorBoard: {paths['tensorboard']}")
    return rows


def _require_writable(out: Path) -> None:
    why = unwritable(out)
    if why is not None:
        raise PipelineError(f"cannot write the output dir {out}: {why}; choose another --output-dir")


def _wants(stages: list[Stage], resolved: dict[str, dict], gpu_ids: tuple[str, ...]) -> dict[str, Want]:
    """The GPUs each stage wants (:func:`~.devices.wanted`), or a PipelineError naming a want that cannot be met."""
    wants = {}
    for st in stages:
        try:
            wants[st.name] = wanted(resolved[st.name].get("trainer") or {}, len(gpu_ids))
        except ValueError as err:
            raise PipelineError(f"stage {st.title} cannot run here: {err} (CUDA_VISIBLE_DEVICES or nvidia-smi -L); "
                                f"set trainer.devices in {st.files()} to what this machine has") from None
    return wants


def _statuses(stages: list[Stage], resolved: dict[str, dict]) -> dict:
    try:
        return statuses(stages, resolved)
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot fingerprint the stages' inputs: {err}") from None


def _report_stale(stages: list[Stage], status: dict, aside: Path) -> None:
    stale = [st for st in stages if status[st.name].state == "stale"]
    if not stale:
        return
    print(f"{len(stale)} stage(s) are stale and run again (old outputs are moved to {aside}):", flush=True)
    for st in stale:
        print(f"  {st.title}: {'; '.join(status[st.name].reasons)}", flush=True)


def _record(st: Stage, status: str, wall: float | None, top1: float | None, digest: str | None) -> dict:
    return {"stage": st.name, "status": status, "wall_s": None if wall is None else round(wall, 1), "top1": top1,
            "fingerprint": short(digest), "log": f"logs/{st.name}.log", "command": st.command()}


def _read_stages(path: Path) -> dict:
    return {r["stage"]: r for r in json.loads(path.read_text())} if path.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    from . import __doc__ as doc

    parser = argparse.ArgumentParser(prog="python -m tsgf_lightning.pipeline", description=doc.split("\n\n")[0])
    parser.add_argument("--config-dir", required=True,
                        help="holds teacher/synthesis/student/pipeline.yaml (and optionally data.yaml)")
    parser.add_argument("--output-dir", required=True, help="every stage's run dir, logs and the results")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the stages, whether each is done, new, resumed or stale (and why), and their "
                             "commands")
    parser.add_argument("--jobs", type=int, default=None,
                        help="stages run at once (default: pipeline.yaml's `jobs`, else 1); each gets cores/jobs "
                             "threads")
    parser.add_argument("--bar", choices=["auto", "on", "off"], default="auto",
                        help="show the running stage's progress bar (auto: when stdout is a terminal)")
    args = parser.parse_args(argv)
    try:
        run_pipeline(args.config_dir, args.output_dir, args.dry_run,
                     {"auto": None, "on": True, "off": False}[args.bar], args.jobs)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
