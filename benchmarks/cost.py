"""What the distillation methods cost: time per iteration, memory, and wall time to their budget (Figure 1).

    python benchmarks/cost.py --config-dir configs/embedded --ipc 1 5 --frames 8

measures ``tsgf``, ``sre2l`` (synthesis with ``mask: none``), ``dm``, ``mtt`` and ``vdsd`` exactly as
their configs in ``--config-dir`` run them (``data.yaml`` + ``<method>.yaml``, through the project's
LightningCLI), at every ``--ipc`` and ``--frames``, and writes ``cost.json``, ``cost.md`` and, with
``--accuracy results.json``, ``figure1.png`` (test top-1 against synthesis wall time) into
``--output-dir`` (default ``benchmarks/results/cost/<config dir name>``).

Why it is measured this way:

- every (method, IPC, frames) runs in its own fresh process (``--child``), one after another in one
  invocation: a process's peak resident set is a lifetime high-water mark, so a shared process would
  report the largest method for all of them, and running them in turn on the same machine and load
  keeps their ratios comparable even when the absolute times are not (a shared 2-core machine);
- time per iteration is the median of ``--steps`` iterations (``on_train_batch_start`` to
  ``on_train_batch_end``) after the first :data:`WARMUP` (allocator and kernel warm-up); the fit is
  stopped there by the timing callback, so the config itself (learning-rate schedules over
  ``trainer.max_steps``, VDSD's ``max_steps`` check) is left as it is;
- the wall time to the configured budget is **extrapolated**: setup (building the CLI, reading the
  data, loading the teacher or experts, initialising the set: everything up to the first step) plus
  time per iteration x the config's ``trainer.max_steps``. Checkpoint writes during a long run and the
  export at the end of fit are not in it;
- VDSD's two stages do different work per step, so its child runs ``--steps`` steps of each (its
  ``static_steps`` is set to ``--steps``) and its budget is each stage's median x the config's step
  count of that stage;
- MTT's experts are a stage of their own (row ``mtt experts``): one expert fitted for 2 epochs
  (``experts.yaml``); its time is the second epoch's (the first is warm-up), extrapolated to the
  config's ``max_epochs`` x the pipeline's number of experts (``pipeline.yaml`` ``experts``). The MTT
  child then matches that trajectory with ``max_start_epoch 1, expert_epochs 1``: which epoch a step
  starts from does not change its cost, and ``expert_epochs`` 1 is the configs' own value;
- memory on CPU: the child's peak resident set (``getrusage(RUSAGE_SELF).ru_maxrss``) and its resident
  set right before ``trainer.fit``, so the growth the method causes (data, teacher or experts, the
  set, optimiser state, activations) is told apart from the ~400 MB of importing torch and Lightning.
  On a GPU (``--accelerator gpu``): ``torch.cuda.max_memory_allocated`` as well;
- tsgf and sre2l need a teacher checkpoint: a TeacherModule of ``teacher.yaml``'s architecture is
  trained for one step per frame count in the output dir. A synthesis step costs the same whatever
  the teacher's weights, so its quality does not matter here (and the accuracies in the figure come
  from a real pipeline's ``results.json``, not from these runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _report import write_report
from cost_report import EXPERTS_ROW, WARMUP, figure1, markdown
from synthesis_overhead import peak_rss_mib, rss_mib

ROOT = Path(__file__).resolve().parents[1]
# A script's sys.path starts at its own folder, so `tsgf_lightning` would otherwise be whichever checkout the
# environment has installed, not this one: measure the code next to this file (the children inherit it too).
sys.path.insert(0, str(ROOT))
METHODS = ("tsgf", "sre2l", "dm", "mtt", "vdsd")
CONFIGS = {"tsgf": "synthesis.yaml", "sre2l": "synthesis.yaml", "dm": "dm.yaml", "mtt": "mtt.yaml",
           "vdsd": "vdsd.yaml", "experts": "experts.yaml"}
EXPERT_EPOCHS = 2
CHILD_TIMEOUT_S = 3600
SYN = "--model.init_args."


# ------------------------------------------------------------------------------------------ child
def _sync(on_gpu: bool) -> None:
    if on_gpu:
        import torch

        torch.cuda.synchronize()


def _clock(stop_after: int | None, on_gpu: bool):
    """A Lightning callback timing every batch and epoch, which stops the fit after ``stop_after`` batches."""
    import lightning as L

    class Clock(L.Callback):
        def __init__(self):
            self.first_start = None
            self.batches: list[float] = []
            self.cpu: list[float] = []  # process CPU time (all threads) per batch
            self.epochs: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            _sync(on_gpu)
            self._epoch = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            _sync(on_gpu)
            self.epochs.append(time.perf_counter() - self._epoch)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(on_gpu)
            self._batch, self._cpu = time.perf_counter(), time.process_time()
            self.first_start = self.first_start or self._batch

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(on_gpu)
            self.last_end = time.perf_counter()
            self.batches.append(self.last_end - self._batch)
            self.cpu.append(time.process_time() - self._cpu)
            if stop_after is not None and len(self.batches) >= stop_after:
                trainer.should_stop = True

    return Clock()


def _stage_file(config_dir: Path, kind: str) -> dict:
    return yaml.safe_load((config_dir / CONFIGS[kind]).read_text()) or {}


def child_argv(args, kind: str) -> list[str]:
    """The LightningCLI arguments of one measured run: the method's own config, redirected into the output dir."""
    cfg_dir, out = Path(args.config_dir), Path(args.output_dir) / "runs" / f"f{args.frames}"
    argv = ["--config", str(cfg_dir / "data.yaml"), "--config", str(cfg_dir / CONFIGS[kind]),
            f"--data.frames={args.frames}", "--trainer.enable_progress_bar=false",
            f"--trainer.accelerator={'auto' if args.accelerator == 'gpu' else 'cpu'}"]
    if kind == "experts":
        return argv + [f"--trainer.logger.init_args.save_dir={out / 'experts'}", "--trainer.logger.init_args.name=",
                       "--trainer.logger.init_args.version=expert_0", f"--trainer.max_epochs={EXPERT_EPOCHS}"]
    argv += [f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={kind}_ipc{args.ipc}",
             f"{SYN}ipc={args.ipc}"]
    if kind in ("tsgf", "sre2l"):
        argv.append(f"{SYN}teacher_ckpt={teacher_path(args.output_dir, args.frames)}")
    if kind == "sre2l":
        argv.append(f"{SYN}mask=none")
    if kind == "mtt":
        argv += [f"{SYN}experts={experts_path(args.output_dir, args.frames)}", f"{SYN}max_start_epoch=1",
                 f"{SYN}expert_epochs=1"]
    if kind == "vdsd":
        dynamic = _stage_file(cfg_dir, "vdsd")["model"]["init_args"]["dynamic_steps"]
        argv += [f"{SYN}static_steps={args.steps}", f"--trainer.max_steps={args.steps + dynamic}"]
    return argv


def summarise(kind: str, times: list[float], steps: int, config_dir: Path, epochs: list[float] | None) -> dict:
    """``s_per_iter`` (median after the warm-up), ``to_budget_s`` (the config's budget at that rate) and the budget.

    The same summary serves wall and CPU times. Experts: the iterations of the last epoch (the first
    is warm-up), and the budget is ``max_epochs`` of it: the epoch's own duration when ``epochs`` (the
    wall times of the epochs) is given, which includes reading the batches; else the sum of its
    iterations. VDSD: each stage's median, weighted by the config's steps of that stage.
    """
    cfg = _stage_file(config_dir, kind)
    if kind == "experts":
        last = times[-(len(times) // EXPERT_EPOCHS):]
        per_epoch, max_epochs = epochs[-1] if epochs else sum(last), cfg["trainer"]["max_epochs"]
        return {"s_per_iter": statistics.median(last), "s_per_epoch": per_epoch,
                "to_budget_s": per_epoch * max_epochs, "budget": {"max_epochs": max_epochs}}
    if kind == "vdsd":
        init = cfg["model"]["init_args"]
        static, dynamic = statistics.median(times[WARMUP:steps]), statistics.median(times[steps + WARMUP:])
        total = init["static_steps"] + init["dynamic_steps"]
        to_budget = static * init["static_steps"] + dynamic * init["dynamic_steps"]
        return {"s_per_iter": to_budget / total, "s_per_iter_static": static, "s_per_iter_dynamic": dynamic,
                "to_budget_s": to_budget, "budget": {"max_steps": total, "static_steps": init["static_steps"],
                                                     "dynamic_steps": init["dynamic_steps"]}}
    per_iter, max_steps = statistics.median(times[WARMUP:]), cfg["trainer"]["max_steps"]
    return {"s_per_iter": per_iter, "to_budget_s": per_iter * max_steps, "budget": {"max_steps": max_steps}}


def child(args) -> None:
    """Run one measured fit in this (fresh) process and print its row as the last line of stdout."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from tsgf_lightning.cli import main as cli_main

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    kind, on_gpu = args.child, args.accelerator == "gpu"
    if args.steps <= WARMUP:
        raise SystemExit(f"--steps must exceed the {WARMUP} warm-up iterations")
    stop_after = None if kind == "experts" else args.steps * (2 if kind == "vdsd" else 1)
    start = time.perf_counter()
    cli = cli_main(child_argv(args, kind), run=False)
    clock = _clock(stop_after, on_gpu)
    cli.trainer.callbacks.append(clock)
    rss_before_fit = rss_mib()
    if on_gpu and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_end = time.perf_counter()
    if clock.first_start is None:
        raise SystemExit(f"{kind}: the fit ran no training step")
    if stop_after is not None and len(clock.batches) < stop_after:
        raise SystemExit(f"{kind}: the fit stopped after {len(clock.batches)} of the {stop_after} measured iterations "
                         f"(the config's trainer.max_steps is smaller): lower --steps or raise max_steps")
    row = {"method": EXPERTS_ROW if kind == "experts" else kind, "ipc": None if kind == "experts" else args.ipc,
           "frames": args.frames, "setup_s": clock.first_start - start, "fit_end_s": fit_end - clock.last_end,
           "iterations_s": clock.batches, "iterations_cpu_s": clock.cpu, "epochs_s": clock.epochs,
           "rss_before_fit_mb": rss_before_fit, "peak_rss_mb": peak_rss_mib(), "threads": torch.get_num_threads(),
           "device": str(cli.model.device)}
    row.update(summarise(kind, clock.batches, args.steps, Path(args.config_dir), clock.epochs))
    row.update({f"cpu_{k}": v for k, v in summarise(kind, clock.cpu, args.steps, Path(args.config_dir), None).items()
                if k.startswith("s_per")})
    row["wall_to_budget_s"] = row["setup_s"] + row.pop("to_budget_s")
    if on_gpu and torch.cuda.is_available():
        row["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    row["growth_mb"] = row["peak_rss_mb"] - row["rss_before_fit_mb"]
    print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------- parent
def teacher_path(output_dir, frames: int) -> Path:
    return Path(output_dir) / "runs" / f"f{frames}" / "teacher" / "checkpoints" / "last.ckpt"


def experts_path(output_dir, frames: int) -> Path:
    return Path(output_dir) / "runs" / f"f{frames}" / "experts" / "expert_0" / "trajectory"


def train_teacher(args, frames: int) -> Path:
    """A throwaway one-step TeacherModule of ``teacher.yaml``'s architecture (its quality does not change the cost).

    Run through :mod:`tsgf_lightning.stage` in its own process, before any measured child, so that it
    also generates or decodes the data into the cache, which the children then only read.
    """
    from tsgf_lightning.cli import checkpoint_problem

    path = teacher_path(args.output_dir, frames)
    if path.exists() and checkpoint_problem(path) is None:
        return path
    cfg = Path(args.config_dir)
    cmd = [sys.executable, "-m", "tsgf_lightning.stage", "--config", str(cfg / "data.yaml"), "--config",
           str(cfg / "teacher.yaml"), f"--data.frames={frames}", "--trainer.max_epochs=1",
           "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
           f"--trainer.logger.init_args.save_dir={path.parents[2]}", "--trainer.logger.init_args.name=teacher"]
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if out.returncode != 0 or not path.exists():
        raise SystemExit(f"the throwaway teacher failed ({shlex.join(cmd)}):\n{out.stderr[-3000:]}")
    print(f"teacher, {frames} frames (1 step, throwaway; includes reading the data): "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return path


def measure(args, kind: str, ipc: int, frames: int) -> dict:
    """One child process; its row, or a row with ``error`` (a crash or an out-of-memory kill is a result too)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config-dir", str(args.config_dir),
           "--ipc", str(ipc), "--frames", str(frames), "--steps", str(args.steps), "--output-dir",
           str(args.output_dir), "--accelerator", args.accelerator]
    started = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode == 0 and lines:
            row = json.loads(lines[-1])
        else:
            row = {"error": f"exit status {out.returncode}: " + " | ".join(out.stderr.strip().splitlines()[-3:])}
    except subprocess.TimeoutExpired:
        row = {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    row.setdefault("method", EXPERTS_ROW if kind == "experts" else kind)
    row.setdefault("ipc", None if kind == "experts" else ipc)
    row.setdefault("frames", frames)
    row["child_s"] = time.perf_counter() - started
    row["child_command"] = shlex.join(cmd)
    return row


def pipeline_experts(config_dir: Path) -> int:
    """How many expert trajectories the config dir's pipeline fits for MTT (the pipeline's default without one)."""
    from tsgf_lightning.pipeline.config import PipelineConfig

    path = config_dir / "pipeline.yaml"
    raw = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return int(raw.get("experts", PipelineConfig.__dataclass_fields__["experts"].default))


def parent(args, argv: list[str]) -> None:
    import lightning
    import torch

    import tsgf_lightning
    from tsgf_lightning.atomic import write_json_atomic
    from tsgf_lightning.results import read_results

    config_dir = Path(args.config_dir)
    n_experts = pipeline_experts(config_dir)
    meta = {"command": shlex.join(["python", "benchmarks/cost.py", *argv]), "config_dir": str(config_dir),
            "torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "accelerator": args.accelerator,
            "steps": args.steps, "warmup": WARMUP, "experts_for_mtt": n_experts,
            "package": str(Path(tsgf_lightning.__file__).parent)}
    rows: list[dict] = []
    for frames in args.frames:
        if {"tsgf", "sre2l"} & set(args.methods):
            train_teacher(args, frames)
        jobs = [("experts", None)] if "mtt" in args.methods else []
        jobs += [(m, ipc) for ipc in args.ipc for m in args.methods]
        for kind, ipc in jobs:
            if kind == "mtt" and any(r["method"] == EXPERTS_ROW and r["frames"] == frames and "error" in r
                                     for r in rows):
                rows.append({"method": "mtt", "ipc": ipc, "frames": frames, "error": "no expert trajectory"})
                continue
            row = measure(args, kind, ipc or args.ipc[0], frames)
            rows.append(row)
            head = f"{row['method']:<12} ipc {row['ipc'] or '-':>2} frames {frames:>2}: "
            print(head + (f"FAILED {row['error'][:300]}" if "error" in row else
                          f"{row['s_per_iter']:.3f} s/iter ({row['cpu_s_per_iter']:.3f} CPU s), peak RSS "
                          f"{row['peak_rss_mb']:.0f} MB (+"
                          f"{row['growth_mb']:.0f} in fit), setup {row['setup_s']:.1f} s, wall to budget "
                          f"{row['wall_to_budget_s']:.0f} s (extrapolated); child took {row['child_s']:.0f} s"),
                  flush=True)
    out = Path(args.output_dir)
    write_json_atomic({**meta, "rows": rows}, out / "cost.json")
    write_report(out / "cost.md", markdown(rows, meta, n_experts))
    if args.accuracy:
        png = figure1(rows, read_results(args.accuracy), out / "figure1.png", n_experts)
        print(f"figure: {png}" if png else "figure skipped: no (method, IPC) in both the cost and accuracy rows")
    print(f"wrote {out / 'cost.json'} and {out / 'cost.md'}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-dir", type=Path, default=Path("configs/embedded"))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 5])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    p.add_argument("--steps", type=int, default=6, help=f"measured iterations per child (the first {WARMUP} are "
                                                        "warm-up and not in the median)")
    p.add_argument("--output-dir", type=Path, help="default benchmarks/results/cost/<config dir name>")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--accuracy", type=Path, help="a pipeline results.json: also draw figure1.png")
    p.add_argument("--child", choices=[*METHODS, "experts"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config_dir = (ROOT / args.config_dir) if not args.config_dir.is_absolute() else args.config_dir
    args.output_dir = (args.output_dir or Path("benchmarks/results/cost") / args.config_dir.name).absolute()
    if args.child:
        args.ipc, args.frames = args.ipc[0], args.frames[0]
        return child(args)
    if args.steps <= WARMUP:
        p.error(f"--steps must exceed the {WARMUP} warm-up iterations")
    parent(args, argv)


if __name__ == "__main__":
    main()
