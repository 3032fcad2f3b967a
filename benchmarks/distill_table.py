"""Real-video benchmark: TSGF against coreset and distillation baselines, with ablations and plots.

    python benchmarks/distill_table.py --data-root ../shared/datasets/ucf101-mini9 --layout ucf101 \\
        --frames 8 --size 64 --ipc 1 5 --seeds 3 --output-dir outputs/ucf101_mini9_table

writes ``OUT/configs/`` (the four pipeline configs it derived for this dataset), runs the pipeline
(teacher, syntheses, students: resumable, finished stages are skipped) and writes
``OUT/results.json`` (the pipeline's schema), ``OUT/results.md``, ``OUT/accuracy_vs_ipc.png`` (main
methods) and ``OUT/ablations.png`` (ablation rows beside ``tsgf`` at the smallest IPC).

Rows (see ``methods()``):

- main, at every ``--ipc``: ``full`` (the teacher), ``random`` (hard labels, no mixing),
  ``random+student`` (the student protocol used for TSGF), ``random+student-f2`` (random clips
  packed 2x2 like the TSGF set, when ``--factor 2``), ``herding`` and ``kcenter`` (coresets on the
  teacher's penultimate features, same student), ``sre2l`` (synthesis without TSGF_O, student
  without TSGF_A: plain VideoMix), ``tsgf``, and ``--baselines`` ``dm``, ``mtt`` (after ``--experts``
  expert trajectories) and ``vdsd`` as their published video code runs them, for their templates'
  iterations (or ``--baseline-steps``); with ``--protocol tsgf vdsd`` (the default) every row is evaluated
  a second time under the published VDSD evaluation, as ``<method>@vdsd``;
- ablations, at the smallest IPC with ``--ablation-seeds`` seeds: ``tsgf-O_off`` (no saliency mask
  in synthesis), ``tsgf-A_off`` (plain VideoMix in the student), ``tsgf-eq8`` / ``tsgf-eq8-signed``
  (the graded Eq. 8 mask on magnitude only / on magnitude and sign), ``tsgf-noise`` (noise
  initialisation), ``tsgf-ConvNet3D`` / ``-CNNLSTM`` / ``-CNNGRU`` (cross-architecture students on
  the TSGF set), and ``--ablation-ipc`` extra IPCs for
  ``random+student`` and ``tsgf``. ``--extra-frames 4 16`` runs ``random+student`` and ``tsgf`` again
  at those frame counts (own teacher each) and adds them as rows ``tsgf [4f]``.

Hyper-parameters are chosen on a validation split carved from the training set, never the test
split: ``--search`` first runs the pipeline with ``evaluate_on: val`` in ``OUT/search`` (its own
teacher, trained without a carve-out of ``--search-val-fraction`` of the training videos, by source
group), a grid of synthesis ``lr`` x ``bn_weight`` at the smallest IPC with ``--search-seeds``
students each, and takes the best mean validation top-1 (``OUT/search.json``, ``OUT/search.md``,
``OUT/search/results.md``). The table itself then trains on every training video
(``--val-fraction 0``). Without ``--search`` the given values are used, or those of an earlier
search in ``OUT``, and recorded in ``OUT/run.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import yaml

from tsgf_lightning.freshness import statuses
from tsgf_lightning.pipeline import (
    PipelineError,
    collect_runs,
    load_pipeline_config,
    plan,
    resolve_stages,
    run_pipeline,
)
from tsgf_lightning.results import aggregate, plot_accuracy_vs_ipc, read_results, write_results

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "configs" / "ucf101_mini9"
LAYOUTS = {
    "ucf101": "tsgf_lightning.data.sources.UCF101",
    "hmdb51": "tsgf_lightning.data.sources.HMDB51",
    "kinetics": "tsgf_lightning.data.sources.Kinetics",
    "ssv2": "tsgf_lightning.data.sources.SomethingSomethingV2",
    "folder": "tsgf_lightning.data.sources.VideoFolder",
}
ARCHS = {"ConvNet3D": "tsgf_lightning.models.ConvNet3D", "CNNLSTM": "tsgf_lightning.models.CNNLSTM",
         "CNNGRU": "tsgf_lightning.models.CNNGRU"}
ABLATIONS = ("mask", "mix", "signed", "init", "arch")
BASELINES = ("dm", "mtt", "vdsd")
SYN = "model.init_args."


def _load(name: str) -> dict:
    return yaml.safe_load((TEMPLATES / name).read_text()) or {}


def templates() -> dict[str, dict]:
    """The teacher / synthesis / student templates, each whole: ``data.yaml``'s block under its own data keys.

    The template dir holds ``data.yaml`` beside stage files with only their own data keys (the
    pipeline's composed layout), or stage files with the whole ``data:`` block and
    ``synthesis_ipc1.yaml`` in place of ``synthesis.yaml``; both give the same configs.
    """
    shared = _load("data.yaml").get("data") or {} if (TEMPLATES / "data.yaml").is_file() else {}
    synthesis = "synthesis.yaml" if (TEMPLATES / "synthesis.yaml").is_file() else "synthesis_ipc1.yaml"
    out = {}
    pairs = [("teacher.yaml", "teacher.yaml"), ("synthesis.yaml", synthesis), ("student.yaml", "student.yaml")]
    pairs += [(f"{b}.yaml", f"{b}.yaml") for b in (*BASELINES, "experts") if (TEMPLATES / f"{b}.yaml").is_file()]
    for name, template in pairs:
        cfg = _load(template)
        cfg["data"] = {**shared, **(cfg.get("data") or {})}
        out[name] = cfg
    return out


def stage_configs(args, frames: int, val_fraction: float) -> dict[str, dict]:
    """teacher / synthesis / student configs for this dataset, from the ucf101_mini9 CPU templates.

    Each is one whole file (the templates' ``data.yaml`` merged in), so ``OUT/configs`` reads alone.
    """
    data = {"source": {"class_path": LAYOUTS[args.layout], "init_args": {"root": str(Path(args.data_root).resolve())}},
            "frames": frames, "size": args.size, "resize": [args.size, round(args.size * 4 / 3)],
            "val_fraction": val_fraction}
    if args.cache_dir:
        data["cache_dir"] = str(Path(args.cache_dir).resolve())
    found = templates()
    teacher, synthesis, student = found["teacher.yaml"], found["synthesis.yaml"], found["student.yaml"]
    baselines = {f"{b}.yaml": found[f"{b}.yaml"] for b in (*args.baselines, *(["experts"] if "mtt" in args.baselines
                                                                               else []))}
    for cfg in (teacher, synthesis, student, *baselines.values()):
        cfg["data"].update(data)
        cfg["trainer"]["enable_progress_bar"] = False  # the pipeline shows its own progress
    teacher["trainer"]["max_epochs"] = args.teacher_epochs
    synthesis["model"]["init_args"].update(factor=args.factor, lr=args.synthesis_lr, bn_weight=args.bn_weight,
                                           mask_source="init", init_select="random")
    synthesis["trainer"]["max_steps"] = args.synthesis_steps
    student["trainer"]["max_steps"] = args.student_steps
    student["data"]["distilled_path"] = None  # the pipeline names each set
    steps = args.baseline_steps  # None: each template's own budget (MTT's is a third of the others', for cost)
    for name, cfg in baselines.items():
        if name == "experts.yaml":
            cfg["trainer"]["max_epochs"] = args.expert_epochs
        elif steps:
            cfg["trainer"]["max_steps"] = steps
            if name == "vdsd.yaml":  # the published split: 1 static iteration for every 5 dynamic ones
                cfg["model"]["init_args"].update(static_steps=steps // 6, dynamic_steps=steps - steps // 6)
    return {"teacher.yaml": teacher, "synthesis.yaml": synthesis, "student.yaml": student, **baselines}


def methods(args) -> dict[str, dict]:
    """``extra_methods`` of pipeline.yaml: the baselines and ablation rows (the built-ins need none)."""
    coreset = {f"{SYN}factor": 1, "trainer.max_steps": 0}  # real clips exported unchanged: no optimisation
    extra: dict[str, dict] = {}
    if args.factor > 1:
        extra[f"random+student-f{args.factor}"] = {"select": "random", "student": {"data.subset_factor": args.factor}}
    extra["herding"] = {"synthesis": {**coreset, f"{SYN}init_select": "herding"}}
    extra["kcenter"] = {"synthesis": {**coreset, f"{SYN}init_select": "kcenter"}}
    extra["sre2l"] = {"synthesis": {f"{SYN}mask": "none"}, "student": {f"{SYN}mix": "videomix"}}
    low = [min(args.ipc)]
    ab = {"ipc": low, "seeds": args.ablation_seeds}
    if "mask" in args.ablations:
        extra["tsgf-O_off"] = {**ab, "synthesis": {f"{SYN}mask": "none"}}
    if "mix" in args.ablations:
        extra["tsgf-A_off"] = {**ab, "student": {f"{SYN}mix": "videomix"}}
    if "signed" in args.ablations:  # the graded Eq. 8 mask on magnitude only vs magnitude and sign
        extra["tsgf-eq8"] = {**ab, "synthesis": {f"{SYN}mask": "eq8"}}
        extra["tsgf-eq8-signed"] = {**ab, "synthesis": {f"{SYN}mask": "eq8", f"{SYN}signed_mask": True}}
    if "init" in args.ablations:
        extra["tsgf-noise"] = {**ab, "synthesis": {f"{SYN}init": "noise"}}
    if "arch" in args.ablations:
        for arch, path in ARCHS.items():
            # the TSGF set of the `tsgf` row (no synthesis overrides: the shared run), another student
            extra[f"tsgf-{arch}"] = {**ab, "student": {f"{SYN}backbone": {"class_path": path}}}
    if args.ablation_ipc:
        more = sorted(set(args.ablation_ipc) - set(args.ipc))
        if more:
            extra["random+student-more"] = {"select": "random", "ipc": more, "seeds": args.ablation_seeds}
            extra["tsgf-more"] = {"ipc": more, "seeds": args.ablation_seeds}
    return extra


def write_config_dir(config_dir: Path, args, frames: int, pipeline: dict, val_fraction: float | None = None) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    val_fraction = args.val_fraction if val_fraction is None else val_fraction
    for name, cfg in {**stage_configs(args, frames, val_fraction), "pipeline.yaml": pipeline}.items():
        text = yaml.safe_dump(cfg, sort_keys=False)
        (config_dir / name).write_text(f"# written by benchmarks/distill_table.py\n{text}")


# ---------------------------------------------------------------------- validation search
def search_name(lr: float, bn: float) -> str:
    return f"tsgf-lr{lr}-bn{bn}"


def search(args, out: Path) -> tuple[float, float]:
    """Choose synthesis ``lr`` x ``bn_weight`` on a validation carve-out: a pipeline run with ``evaluate_on: val``.

    ``OUT/search`` holds its own teacher, trained without the carve-out (``--search-val-fraction``),
    one synthesis per grid point at the smallest IPC, and ``--search-seeds`` students each, scored on
    the carve-out; ``random+student`` (and its packed variant) run beside them for reference. The
    test split is never evaluated there. Returns the grid point with the best mean validation top-1.
    """
    work, k = out / "search", min(args.ipc)
    grid = {search_name(lr, bn): (lr, bn) for lr, bn in itertools.product(args.search_lr, args.search_bn)}
    extra = {name: {"synthesis": {f"{SYN}lr": lr, f"{SYN}bn_weight": bn}} for name, (lr, bn) in grid.items()}
    if args.factor > 1:
        extra[f"random+student-f{args.factor}"] = {"select": "random", "student": {"data.subset_factor": args.factor}}
    pipeline = {"ipc": [k], "seeds": args.search_seeds, "jobs": args.jobs, "evaluate_on": "val",
                "methods": ["full", "random+student"], "extra_methods": extra}
    write_config_dir(work / "configs", args, args.frames, pipeline, val_fraction=args.search_val_fraction)
    rows = run_pipeline(work / "configs", work, bar=False)
    by_name = {r["method"]: r for r in rows}
    trials = [{"lr": lr, "bn_weight": bn, "val_top1": by_name[name]["top1_mean"],
               "val_top1_std": by_name[name]["top1_std"], "seeds": by_name[name]["seeds"]}
              for name, (lr, bn) in grid.items()]
    best = max(trials, key=lambda t: t["val_top1"])
    reference = {name: by_name[name]["top1_mean"] for name in by_name if not name.startswith("tsgf-")}
    record = {"ipc": k, "val_fraction": args.search_val_fraction, "trials": trials, "reference": reference,
              "chosen": best, "table": str((work / "results.md").relative_to(out))}
    (out / "search.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["| lr | bn_weight | val top-1 (%) |", "|---|---|---|"]
    lines += [f"| {t['lr']} | {t['bn_weight']} | {100 * t['val_top1']:.1f} ± {100 * t['val_top1_std']:.1f} |"
              for t in trials]
    lines += [f"| {name} | | {100 * v:.1f} |" for name, v in reference.items()]
    (out / "search.md").write_text(
        f"Validation search at IPC {k}: synthesis lr x bn_weight, {args.search_seeds} student seed(s) each, scored "
        f"on a carve-out of {args.search_val_fraction:.0%} of the training videos (by source group; its own teacher "
        f"trained on the rest). Chosen: lr {best['lr']}, bn_weight {best['bn_weight']}. Full table: "
        f"search/results.md\n\n" + "\n".join(lines) + "\n")
    print(f"search: chose lr {best['lr']}, bn_weight {best['bn_weight']} (val top-1 {best['val_top1']:.3f})",
          flush=True)
    return best["lr"], best["bn_weight"]


def finished_rows(config_dir: Path, out: Path) -> list[dict]:
    """The table from the stages finished so far (``--report-only``): rows with fewer seeds, or none."""
    cfg = load_pipeline_config(config_dir / "pipeline.yaml")
    stages = plan(config_dir, out, cfg)
    status = statuses(stages, resolve_stages(stages))  # finished *and* current: a stale number is never reported
    done = [st for st in stages if status[st.name].state == "done"]
    if not any(st.kind == "teacher" for st in done):
        raise PipelineError(f"no finished, current teacher under {out}: nothing to report yet")
    missing = [f"{st.title} ({status[st.name].state})" for st in stages if status[st.name].state != "done"]
    if missing:
        print(f"{len(missing)} of {len(stages)} stages not finished or stale, left out: {', '.join(missing)}",
              flush=True)
    return aggregate(collect_runs(cfg, done))


# ---------------------------------------------------------------------- plots
def plot_ablations(rows: list[dict], path: Path, ipc: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = [r for r in rows if r["ipc"] == ipc and (r["method"].startswith("tsgf") or r["method"] in
                                                    ("sre2l", "random+student") or "[" in r["method"])]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(keep) + 2), 4))
    names = [r["method"] for r in keep]
    ax.bar(range(len(keep)), [100 * r["top1_mean"] for r in keep], yerr=[100 * r["top1_std"] for r in keep],
           color=["tab:red" if r["method"] == "tsgf" else "tab:gray" for r in keep], capsize=3)
    ax.set_xticks(range(len(keep)), names, rotation=35, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Ablations at IPC {ipc} (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="ucf101")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--jobs", type=int, default=2, help="stages at once (one thread each on a 2-core machine)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="training videos held out of the table's stages (default 0: all train the teacher)")
    p.add_argument("--cache-dir", default=None, help="decoded-clip cache (default: the DataModule's)")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--synthesis-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--factor", type=int, default=2, help="multi-formation factor of the synthetic sets")
    p.add_argument("--synthesis-lr", type=float, default=0.01)
    p.add_argument("--bn-weight", type=float, default=0.001)
    p.add_argument("--search", action="store_true", help="choose lr and bn_weight on a validation carve-out first")
    p.add_argument("--search-val-fraction", type=float, default=0.2,
                   help="training videos (by source group) the search holds out to score its students on")
    p.add_argument("--search-seeds", type=int, default=2, help="students per grid point in the search")
    p.add_argument("--search-lr", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--search-bn", type=float, nargs="+", default=[0.001, 0.01])
    p.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=ABLATIONS)
    p.add_argument("--ablation-seeds", type=int, default=None, help="seeds of ablation rows (default: --seeds)")
    p.add_argument("--ablation-ipc", type=int, nargs="*", default=[], help="extra IPCs for random+student and tsgf")
    p.add_argument("--extra-frames", type=int, nargs="*", default=[], help="frame counts for tsgf/random+student rows")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                   help="distillation methods the paper compares with, rows of their own (default: all three)")
    p.add_argument("--baseline-steps", type=int, default=None, help="their iterations (default: their templates')")
    p.add_argument("--experts", type=int, default=2, help="MTT's expert trajectories")
    p.add_argument("--expert-epochs", type=int, default=12, help="epochs of each expert (>= MTT's last read epoch)")
    p.add_argument("--protocol", nargs="+", default=["tsgf", "vdsd"], choices=["tsgf", "vdsd"],
                   help="student protocols; rows of the second are named <method>@vdsd (method.md's VDSD "
                        "evaluation: hard labels, SGD, no augmentation, MTT's learnt rate)")
    p.add_argument("--dry-run", action="store_true", help="write the configs and print the stages; run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the table from the stages finished so far (rows list their seeds)")
    args = p.parse_args(argv)
    args.ablation_seeds = args.ablation_seeds or args.seeds
    out = Path(args.output_dir).resolve()
    if not Path(args.data_root).is_dir():
        p.error(f"--data-root {args.data_root} is not a directory")
    start = time.time()
    if args.search and not args.dry_run and not args.report_only:
        args.synthesis_lr, args.bn_weight = search(args, out)
    elif (out / "search.json").is_file():  # a resumed or report-only run keeps the values chosen before
        chosen = json.loads((out / "search.json").read_text())["chosen"]
        args.synthesis_lr, args.bn_weight = chosen["lr"], chosen["bn_weight"]
    pipeline = {"ipc": args.ipc, "seeds": args.seeds, "jobs": args.jobs,
                "methods": ["full", "random", "random+student", "tsgf", *args.baselines],
                "extra_methods": methods(args), "protocols": args.protocol, "experts": args.experts}
    if not (args.report_only and (out / "configs" / "pipeline.yaml").is_file()):  # report what ran, as it ran
        write_config_dir(out / "configs", args, args.frames, pipeline)
    run = finished_rows if args.report_only else partial(run_pipeline, dry_run=args.dry_run, bar=False)
    try:
        rows = run(out / "configs", out)
        for frames in args.extra_frames:
            sub = out / f"frames{frames}"
            if not (args.report_only and (sub / "configs" / "pipeline.yaml").is_file()):
                sub_pipeline = {"ipc": [min(args.ipc)], "seeds": args.ablation_seeds, "jobs": args.jobs,
                                "methods": ["random+student", "tsgf"]}
                write_config_dir(sub / "configs", args, frames, sub_pipeline)
            rows += [{**r, "method": f"{r['method']} [{frames}f]"} for r in run(sub / "configs", sub)]
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.dry_run:
        return []
    rows = [{**r, "method": r["method"].replace("-more", "")} for r in rows]
    stages = [r for d in [out, *(out / f"frames{f}" for f in args.extra_frames)] if (d / "stages.json").is_file()
              for r in json.loads((d / "stages.json").read_text())]
    write_results(out, rows, stages or None)
    main = ("full", "random", "random+student", f"random+student-f{args.factor}", "herding", "kcenter", "sre2l", "tsgf",
            *BASELINES)
    main_rows = [r for r in rows if r["method"].split("@")[0] in main]
    plot_accuracy_vs_ipc(main_rows, out / "accuracy_vs_ipc.png")
    plot_ablations(rows, out / "ablations.png", min(args.ipc))
    wall = time.time() - start
    given = argv if argv is not None else sys.argv[1:]
    record = {"command": " ".join(["python", "benchmarks/distill_table.py", *given]),
              "wall_s": round(wall, 1), "threads_per_job": int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
              "synthesis_lr": args.synthesis_lr, "bn_weight": args.bn_weight, "searched": args.search,
              "report_only": args.report_only}
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out / 'results.md'} ({wall / 60:.1f} min)")
    return read_results(out / "results.json")


if __name__ == "__main__":
    main()
