"""Interim results of a pipeline run that has not finished: the table and the paired differences of the
stages that are done and current, written to another folder, with every missing stage listed.

    python benchmarks/interim_results.py --config-dir benchmarks/experiments/mini9_val_parts \\
        --output-dir outputs/mini9_val_parts --to benchmarks/results/mini9_val_search/step1

The pipeline writes ``results.md`` only when every stage has run. A run of many CPU-hours is often
stopped and resumed across sessions, and what it has measured so far is worth reading (and committing,
saying plainly what is missing). Nothing is run and the output dir is only read, so this works beside
the running pipeline. A stage counts only if it is ``done`` by the pipeline's own freshness check (same
fingerprint as its config and inputs give now): a stale result is never reported.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def interim(config_dir: Path, out: Path, to: Path, argv: list[str]) -> dict:
    from tsgf_lightning.freshness import statuses
    from tsgf_lightning.paired import paired_differences
    from tsgf_lightning.pipeline import load_pipeline_config, plan, resolve_stages
    from tsgf_lightning.pipeline.collect import collect_runs
    from tsgf_lightning.pipeline.run import _read_stages
    from tsgf_lightning.results import aggregate, write_results

    cfg = load_pipeline_config(config_dir / "pipeline.yaml")
    stages = plan(config_dir, out, cfg)
    status = statuses(stages, resolve_stages(stages))
    done = [st for st in stages if status[st.name].state == "done"]
    missing = [st for st in stages if status[st.name].state != "done"]
    runs = collect_runs(cfg, done)
    recorded = _read_stages(out / "stages.json")  # the pipeline's own reader of its stage records
    records = [recorded[st.name] for st in done if st.name in recorded]
    paths = write_results(to, aggregate(runs), records, tensorboard=False, evaluate_on=cfg.evaluate_on,
                          paired=paired_differences(runs, cfg.pairs))
    lines = ["", f"## Interim: {len(done)} of {len(stages)} stages done", "",
             f"Written by `{shlex.join(['python', 'benchmarks/interim_results.py', *argv])}` from a run that has "
             "not finished. The rows and pairs above hold only the stages that are done and current (same "
             "fingerprint as their config and inputs give now); a method's row may have fewer seeds than "
             "`pipeline.yaml` asks for.", ""]
    lines += [f"- missing: {st.title} ({status[st.name].state})" for st in missing] or ["- nothing is missing"]
    with open(paths["md"], "a") as f:
        f.write("\n".join(lines) + "\n")
    return {"done": len(done), "stages": len(stages), "missing": [st.name for st in missing], **paths}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-dir", type=Path, required=True, help="the pipeline's config dir")
    p.add_argument("--output-dir", type=Path, required=True, help="the pipeline's output dir (only read)")
    p.add_argument("--to", type=Path, required=True, help="where results.md, results.json and the plots go")
    args = p.parse_args(argv)
    found = interim(args.config_dir.resolve(), args.output_dir.resolve(), args.to, argv)
    print(f"{found['done']} of {found['stages']} stages done; wrote {found['md']}")


if __name__ == "__main__":
    main()
