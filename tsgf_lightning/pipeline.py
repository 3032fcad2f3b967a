"""``python -m tsgf_lightning.pipeline --config-dir DIR --output-dir OUT``: every stage, then one results table.

``DIR`` holds ``teacher.yaml``, ``synthesis.yaml``, ``student.yaml`` and ``pipeline.yaml``::

    ipc: [1]              # IPCs to distil
    seeds: 3              # student seeds per (method, ipc): 0, 1, ..., seeds - 1
    jobs: 1               # stages run at once (independent ones only), each on cores / jobs threads
    methods: [full, random, random+student, tsgf]
    extra_methods: {}     # name -> {select: synthesis|random, synthesis: {key: value}, student: {key: value}}
    split: test           # what students are scored on: `test` (the table) or `val` (the carve-out)
    teacher: null         # an existing teacher checkpoint to use instead of training one

``split: val`` is how settings are chosen without touching the test split: the same methods, each
student scored on the validation carve-out (``data.val_fraction`` > 0) and the table headed so.

Stages (each ``python -m tsgf_lightning.stage`` in its own process, with ``--resume`` and ``--result``):

- ``teacher`` -> ``OUT/teacher`` (``checkpoints/last.ckpt`` is every later stage's ``teacher_ckpt``);
- ``synthesis_ipcK`` -> ``OUT/synthesis_ipcK/distilled.pt`` for methods without synthesis
  overrides; a method with its own (``sre2l: {synthesis: {model.init_args.mask: none}}``) gets
  ``OUT/synthesis/<method>_ipcK``;
- students -> ``OUT/students/<method>/ipcK/seedS`` with ``--seed_everything=S --model.init_args.seed=S``.

A stage is skipped only if it is done *and the same stage*: its ``result.json`` records the
fingerprint of its resolved config and of the content of its inputs (teacher checkpoint, distilled
set, decoded data; :mod:`~tsgf_lightning.fingerprint`), and that fingerprint is still what the
configs and inputs give. Running the same command again redoes no finished stage and resumes an
interrupted one from its ``last.ckpt``; after a config change the changed stages and everything
downstream of them run again (the pipeline lists them with the keys that changed), and their old
outputs are moved to ``OUT/superseded/<time>/``, never deleted. Logs go to
``OUT/logs/<stage>.log``; results to ``OUT/results.{json,md}``, ``OUT/accuracy_vs_ipc.png`` and
``OUT/summary`` (TensorBoard); ``OUT/stages.json`` records each stage's command and wall time.
"""

from __future__ import annotations

import argparse
import codecs
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .atomic import unwritable, write_json_atomic
from .fingerprint import ConfigResolveError, resolve_config, short
from .freshness import FINGERPRINT_FILE, incomplete, prepare_launch, read_result, statuses, superseded_root
from .results import aggregate, write_results

CONFIG_FILES = ("teacher.yaml", "synthesis.yaml", "student.yaml", "pipeline.yaml")
PIPELINE_KEYS = ("ipc", "seeds", "methods", "extra_methods", "jobs", "split", "teacher")
SPLITS = ("test", "val")
METHOD_KEYS = ("select", "synthesis", "student", "ipc", "seeds")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class PipelineError(ValueError):
    """Bad pipeline input (named), arguments that do not parse, or a stage that failed (with its log)."""


# ---------------------------------------------------------------------- methods as data
@dataclass(frozen=True)
class Method:
    """One row of the results table: what its students train on and what it changes in the configs.

    Attributes:
        name: the row's name (also a directory name under ``OUT/students``).
        select: ``teacher`` (report the teacher's own test metrics: ``full``), ``synthesis``
            (students on a distilled set), or a DataModule ``train_set`` that picks real clips
            (``random``; any such mode added to the DataModule later works too), run with
            ``--data.ipc=K --data.subset_seed=SEED``.
        synthesis: overrides of synthesis.yaml (dotted keys); non-empty gets its own synthesis run
            ``OUT/synthesis/<name>_ipcK``, empty shares ``OUT/synthesis_ipcK``.
        student: overrides of student.yaml, applied after the pipeline's own.
        ipc: the IPCs this method runs at (None: ``pipeline.yaml``'s ``ipc``); may name IPCs the
            others skip (an ablation row at IPC 10 only).
        seeds: student seeds of this method (None: ``pipeline.yaml``'s ``seeds``); fewer for
            ablation rows where compute is short.
    """

    name: str
    select: str = "synthesis"
    synthesis: Mapping[str, Any] = field(default_factory=dict)
    student: Mapping[str, Any] = field(default_factory=dict)
    ipc: tuple[int, ...] | None = None
    seeds: int | None = None


BUILTIN_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", select="teacher"),
    # random real videos, hard labels, no mixing: the classic "random real" baseline
    Method("random", select="random", student={"model.init_args.labels": "hard", "model.init_args.mix": "none"}),
    # random real videos under student.yaml's own protocol (soft labels, TSGF_A, same epochs):
    # the strongest cheap baseline, which synthesis has to beat to be worth its cost
    Method("random+student", select="random"),
    Method("tsgf", select="synthesis"),
)}


@dataclass(frozen=True)
class PipelineConfig:
    """``pipeline.yaml``, validated: IPCs, seeds per (method, IPC), and the methods in run order.

    Attributes:
        split: ``test`` (students report the real test split) or ``val`` (the validation carve-out:
            for choosing settings; the test split is then never evaluated by a student).
        teacher: an existing TeacherModule checkpoint that every stage uses instead of a teacher
            trained by this pipeline (no teacher stage, so no ``full`` row).
    """

    ipc: tuple[int, ...]
    seeds: int
    methods: tuple[Method, ...]
    jobs: int = 1
    split: Literal["test", "val"] = "test"
    teacher: Path | None = None


def _real_selections() -> tuple[str, ...]:
    """DataModule ``train_set`` modes that pick real clips per class (everything but real/distilled/none)."""
    import typing

    from .data.datamodule import TrainSet
    return tuple(t for t in typing.get_args(TrainSet) if t not in ("real", "distilled", "none"))


def _int(where: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PipelineError(f"Expected {where} to be an integer >= {low} but got {value!r}")
    return value


def _overrides(where: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k and not k.startswith("-") for k in value):
        raise PipelineError(f"Expected {where} to be a mapping of dotted config keys (model.init_args.mix: none) "
                            f"to values but got {value!r}")
    return dict(value)


def _extra_method(path: Path, name, spec, selections: tuple[str, ...]) -> Method:
    where = f"`extra_methods.{name}` in {path}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise PipelineError(f"Expected method names in `extra_methods` of {path} to be file-name safe "
                            f"(letters, digits, _ . + -) but got {name!r}")
    if name in BUILTIN_METHODS:
        raise PipelineError(f"{where}: {name!r} is a built-in method; give the variant another name")
    if not isinstance(spec, dict):
        raise PipelineError(f"Expected {where} to be a mapping with keys {list(METHOD_KEYS)} but got {spec!r}")
    unknown = sorted(set(spec) - set(METHOD_KEYS))
    if unknown:
        raise PipelineError(f"{where} has unknown key(s) {unknown}; known keys: {list(METHOD_KEYS)}")
    select = spec.get("select", "synthesis")
    if select not in ("synthesis", *selections):
        raise PipelineError(f"Expected `select` of {where} to be one of {['synthesis', *selections]} but got "
                            f"{select!r}")
    if spec.get("synthesis") and select != "synthesis":
        raise PipelineError(f"{where} gives `synthesis` overrides but selects {select!r} (no synthesis stage)")
    ipc = spec.get("ipc")
    if ipc is not None:
        ipc = [ipc] if isinstance(ipc, int) and not isinstance(ipc, bool) else ipc
        if not isinstance(ipc, list) or not ipc or len(set(map(str, ipc))) != len(ipc):
            raise PipelineError(f"Expected `ipc` of {where} to be a non-empty list of distinct integers >= 1 "
                                f"but got {spec.get('ipc')!r}")
        ipc = tuple(sorted(_int(f"every `ipc` of {where}", k, 1) for k in ipc))
    seeds = None if spec.get("seeds") is None else _int(f"`seeds` of {where}", spec["seeds"], 1)
    return Method(name, select, _overrides(f"`synthesis` of {where}", spec.get("synthesis") or {}),
                  _overrides(f"`student` of {where}", spec.get("student") or {}), ipc, seeds)


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read and validate ``pipeline.yaml`` (every error names the key and the file).

    ``methods`` defaults to the four built-ins; every method of ``extra_methods`` runs too, after
    those listed in ``methods`` unless ``methods`` places it.
    """
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise PipelineError(f"Expected {path} to be a mapping with keys {list(PIPELINE_KEYS)} but got {raw!r}")
    unknown = sorted(set(raw) - set(PIPELINE_KEYS))
    if unknown:
        raise PipelineError(f"{path} has unknown key(s) {unknown}; known keys: {list(PIPELINE_KEYS)}")
    ipc = raw.get("ipc", [1])
    ipc = [ipc] if isinstance(ipc, int) and not isinstance(ipc, bool) else ipc
    if not isinstance(ipc, list) or not ipc:
        raise PipelineError(f"Expected `ipc` in {path} to be a non-empty list of integers >= 1 but got {ipc!r}")
    ipc = [_int(f"every `ipc` in {path}", k, 1) for k in ipc]
    if len(set(ipc)) != len(ipc):
        raise PipelineError(f"Expected `ipc` in {path} to have no repeats but got {ipc}")
    seeds = _int(f"`seeds` in {path}", raw.get("seeds", 3), 1)
    jobs = _int(f"`jobs` in {path}", raw.get("jobs", 1), 1)
    extra_raw = raw.get("extra_methods") or {}
    if not isinstance(extra_raw, dict):
        raise PipelineError(f"Expected `extra_methods` in {path} to be a mapping name -> spec but got {extra_raw!r}")
    selections = _real_selections() if extra_raw else ()  # imports torch: only when there is something to check
    extra = {name: _extra_method(path, name, spec, selections) for name, spec in extra_raw.items()}
    known = {**BUILTIN_METHODS, **extra}
    names = raw.get("methods", list(BUILTIN_METHODS))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PipelineError(f"Expected `methods` in {path} to be a list of method names but got {names!r}")
    bad = [n for n in names if n not in known]
    if bad:
        raise PipelineError(f"unknown method(s) {bad} in `methods` of {path}; known methods: {list(known)} "
                            "(define new ones under `extra_methods`)")
    if len(set(names)) != len(names):
        raise PipelineError(f"Expected `methods` in {path} to have no repeats but got {names}")
    names += [n for n in extra if n not in names]
    split = raw.get("split", "test")
    if split not in SPLITS:
        raise PipelineError(f"Expected `split` in {path} to be one of {list(SPLITS)} but got {split!r}")
    teacher = raw.get("teacher")
    if teacher is not None:
        if not isinstance(teacher, str) or not teacher:
            raise PipelineError(f"Expected `teacher` in {path} to be a checkpoint path but got {teacher!r}")
        if "full" in names:
            raise PipelineError(f"`teacher` in {path} reuses an existing teacher, so there is no teacher stage to "
                                "report as `full`: remove `full` from `methods`")
        teacher = Path(os.path.abspath(teacher))  # not resolve(): last.ckpt is a link that moves on
    return PipelineConfig(tuple(sorted(ipc)), seeds, tuple(known[n] for n in names), jobs, split, teacher)


# ---------------------------------------------------------------------- progress
class StageProgress:
    """``[i/n] stage ...`` now and `` done in 21s: top1 0.41`` at the end, on one line.

    On a terminal the stage's own tqdm bar (the last bar line of its output, escape codes
    stripped) is shown after the head while it runs; elsewhere (logs, CI) only the two halves are.
    """

    _BAR = re.compile(r"\d+%\||\d+/\d+ \[|\d+it \[")
    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, head: str, bar: bool | None = None):
        self.head, self.bar = head, sys.stdout.isatty() if bar is None else bar
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        print(head, end="", flush=True)

    def feed(self, chunk: bytes) -> None:
        if not self.bar:
            return
        *segments, self._pending = re.split(r"[\r\n]", self._pending + self._decoder.decode(chunk))
        self._pending = self._pending[-4096:]
        bars = [s for s in (self._ANSI.sub("", s).strip() for s in segments) if self._BAR.search(s)]
        if bars:
            width = shutil.get_terminal_size().columns
            sys.stdout.write(f"\r{self.head} {bars[-1]}"[:width] + "\x1b[K")
            sys.stdout.flush()

    def finish(self, text: str) -> None:
        if self.bar:
            sys.stdout.write(f"\r{self.head}\x1b[K")
        print(f" {text}", flush=True)


@dataclass(frozen=True)
class Stage:
    """One ``tsgf_lightning.stage`` process: what it runs, where it writes, how to tell it is done."""

    name: str                  # file-safe id, also the log's name: "student_random+student_ipc1_seed0"
    title: str                 # for people: "student random+student ipc1 seed0"
    kind: Literal["teacher", "synthesis", "student"]
    config: Path
    overrides: tuple[str, ...]
    result: Path
    outputs: tuple[Path, ...] = ()   # must exist besides the result (teacher checkpoint, distilled.pt)
    test: bool = True
    validate: bool = False
    method: str | None = None
    ipc: int | None = None
    seed: int | None = None
    needs: tuple[str, ...] = ()      # names of the stages whose outputs this one reads

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tsgf_lightning.stage", "--config", str(self.config), *self.overrides,
                "--resume", *(["--validate"] if self.validate else []), *(["--test"] if self.test else []),
                "--result", str(self.result), "--fingerprint", str(self.result.parent / FINGERPRINT_FILE)]

    def done(self) -> bool:
        """The result (holding every split this stage evaluates) and the outputs exist.

        Complete, not necessarily current: :func:`~tsgf_lightning.freshness.statuses` also compares
        the fingerprint the result records with the one the stage's config and inputs give now.
        """
        return incomplete(self) is None


def override(key: str, value) -> str:
    """``--key=value`` as LightningCLI parses it (YAML/JSON flow for lists and dicts)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"--{key}={text}"


def logger_dir(save_dir: Path, name: str) -> list[str]:
    # An empty version ("--...version=" with nothing after "=" parses as "") puts the run in
    # save_dir/name/ itself, not save_dir/name/version_N/, so --resume finds checkpoints/last.ckpt there.
    return [override("trainer.logger.init_args.save_dir", save_dir), override("trainer.logger.init_args.name", name),
            "--trainer.logger.init_args.version="]


def plan(config_dir: Path, out: Path, cfg: PipelineConfig) -> list[Stage]:
    """The stages, in run order: teacher, then per IPC each method's synthesis (once) and students.

    With ``cfg.teacher`` there is no teacher stage: every stage reads that checkpoint.
    """
    val = cfg.split == "val"
    if cfg.teacher is None:
        teacher_ckpt = out / "teacher" / "checkpoints" / "last.ckpt"
        stages = [Stage("teacher", "teacher", "teacher", config_dir / "teacher.yaml", tuple(logger_dir(out, "teacher")),
                        out / "teacher" / "result.json", outputs=(teacher_ckpt,), test=not val, validate=val)]
        teacher_needs: tuple[str, ...] = ("teacher",)
    else:
        teacher_ckpt, stages, teacher_needs = cfg.teacher, [], ()
    synthesis: dict[tuple, Stage] = {}
    for k in sorted({*cfg.ipc, *(i for m in cfg.methods for i in (m.ipc or ()))}):
        for m in cfg.methods:
            if m.select == "teacher" or k not in (m.ipc or cfg.ipc):
                continue
            distilled = None
            if m.select == "synthesis":
                key = (m.name if m.synthesis else "", k)  # methods without synthesis overrides share one run
                if key not in synthesis:
                    synthesis[key] = _synthesis_stage(config_dir, out, m, k, teacher_ckpt, teacher_needs)
                    stages.append(synthesis[key])
                distilled = synthesis[key].outputs[0]
            for s in range(m.seeds or cfg.seeds):
                if distilled is not None:
                    select = [override("data.train_set", "distilled"), override("data.distilled_path", distilled)]
                else:  # a fresh random draw per seed: the spread then covers the choice of real videos too
                    select = [override("data.train_set", m.select), override("data.ipc", k),
                              override("data.subset_seed", s)]
                run = out / "students" / m.name / f"ipc{k}"
                overrides = [override("seed_everything", s), override("model.init_args.seed", s),
                             override("model.init_args.teacher_ckpt", teacher_ckpt),
                             *logger_dir(run, f"seed{s}"), *select,
                             *(override(key, v) for key, v in m.student.items())]
                needs = teacher_needs if distilled is None else (*teacher_needs, synthesis[key].name)
                stages.append(Stage(f"student_{m.name}_ipc{k}_seed{s}", f"student {m.name} ipc{k} seed{s}", "student",
                                    config_dir / "student.yaml", tuple(overrides),
                                    run / f"seed{s}" / "result.json", test=not val, validate=val,
                                    method=m.name, ipc=k, seed=s, needs=needs))
    return stages


def _synthesis_stage(config_dir: Path, out: Path, m: Method, k: int, teacher_ckpt: Path,
                     needs: tuple[str, ...]) -> Stage:
    save_dir, name = (out / "synthesis", f"{m.name}_ipc{k}") if m.synthesis else (out, f"synthesis_ipc{k}")
    export = Path(m.synthesis.get("model.init_args.export_dir", save_dir / name))
    overrides = [override("model.init_args.teacher_ckpt", teacher_ckpt), override("model.init_args.ipc", k),
                 *logger_dir(save_dir, name), override("model.init_args.export_dir", save_dir / name),
                 *(override(key, v) for key, v in m.synthesis.items())]
    stage_name = f"synthesis_{m.name}_ipc{k}" if m.synthesis else f"synthesis_ipc{k}"
    return Stage(stage_name, stage_name.replace("_", " "), "synthesis", config_dir / "synthesis.yaml",
                 tuple(overrides), save_dir / name / "result.json", outputs=(export / "distilled.pt",),
                 test=False, method=m.name if m.synthesis else None, ipc=k, needs=needs)


# ---------------------------------------------------------------------- checks before running
def check_config_dir(config_dir: Path, methods: tuple[Method, ...]) -> None:
    """Every config the methods need is in ``config_dir`` (synthesis.yaml only if a method distils)."""
    needed = {"teacher.yaml", "pipeline.yaml"}
    needed |= {"student.yaml" for m in methods if m.select != "teacher"}
    needed |= {"synthesis.yaml" for m in methods if m.select == "synthesis"}
    missing = [f for f in CONFIG_FILES if f in needed and not (config_dir / f).is_file()]
    if missing:
        raise PipelineError(f"config dir {config_dir} lacks {', '.join(missing)} (it must hold "
                            f"{', '.join(CONFIG_FILES)})")


def resolve_stages(stages: list[Stage]) -> dict[str, dict]:
    """Every stage's resolved config (parsed, never instantiated), so a typo fails before any training.

    LightningCLI's ``--print_config`` parses the config with every override; jsonargparse names an
    unknown option or a bad value. The resolved configs are what the stages' fingerprints hash.
    """
    resolved = {}
    for st in stages:
        try:
            resolved[st.name] = resolve_config(st.config, st.overrides)
        except ConfigResolveError as err:
            raise PipelineError(f"stage {st.title} would fail: its arguments do not parse against {st.config}:\n"
                                f"{err.text}\ncommand: {shlex.join(st.command())}") from None
    return resolved


def student_arch(config: Path, overrides: dict) -> str:
    """The backbone's class name (``MiniC3D``) from the config, unless an override names another."""
    import yaml

    backbone = yaml.safe_load(config.read_text())["model"]["init_args"].get("backbone", {})
    backbone = overrides.get("model.init_args.backbone", backbone)
    path = overrides.get("model.init_args.backbone.class_path",
                         backbone.get("class_path", "?") if isinstance(backbone, dict) else backbone)
    return str(path).rsplit(".", 1)[-1]


# ---------------------------------------------------------------------- running
class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def _lock(out: Path):
    """An exclusive lock on ``OUT`` for this process and its stage (passed down), so two pipelines never share OUT."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".pipeline.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise PipelineError(f"{out} is in use by another pipeline (or a stage it started is still running)") from None
    return f


def run_stage(stage: Stage, log_path: Path, progress: StageProgress, lock_fd: int) -> int:
    """Run one stage, its output appended to ``log_path`` and its progress bar shown; returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(stage.command())}\n".encode())
        log.flush()
        proc = subprocess.Popen(stage.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, pass_fds=(lock_fd,))
        try:
            for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
                log.write(chunk)
                progress.feed(chunk)
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def _launch(stage: Stage, log_path: Path, lock_fd: int, slots: int):
    """Start a stage writing straight to its log (no progress bar: several run at once).

    ``slots``: how many stages share the cores from now on (those running and those starting with it).
    """
    # Small convolutions gain little from a second thread and lose much to contention: give each
    # of the concurrent stages its share of the cores (unless the user chose a thread count).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(_threads_per_job(slots)))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} OMP_NUM_THREADS={env['OMP_NUM_THREADS']} "
              f"{shlex.join(stage.command())}\n".encode())
    log.flush()
    proc = subprocess.Popen(stage.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, pass_fds=(lock_fd,))
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # Lightning stops at the next batch and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _summary(stage: Stage) -> tuple[str, float | None]:
    result = json.loads(stage.result.read_text())
    split = "val" if stage.validate else "test"
    top1 = result.get(split, {}).get(f"{split}/acc_top1")
    if top1 is not None:
        return f"{split} top1 {top1:.3f}" if stage.validate else f"top1 {top1:.3f}", top1
    return f"{result.get('global_step', '?')} steps", None


def _tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join("  " + line for line in lines[-n:])


def run_pipeline(config_dir: str | Path, output_dir: str | Path, dry_run: bool = False,
                 bar: bool | None = None, jobs: int | None = None) -> list[dict]:
    """Run (or resume) every stage that is not done and current, then write the results; returns the rows.

    ``jobs`` (default: ``pipeline.yaml``'s, else 1) stages run at once when their inputs are ready.
    A finished stage whose config or inputs changed since it ran is stale: it and every stage
    downstream of it run again, and their old outputs are moved to ``OUT/superseded/<time>/``
    (:mod:`~tsgf_lightning.freshness`).

    Raises:
        PipelineError: bad config dir or pipeline.yaml, arguments that do not parse, an output dir
            that cannot be written, or a failed stage.
    """
    config_dir, out = Path(config_dir).resolve(), Path(output_dir).resolve()
    if not (config_dir / "pipeline.yaml").is_file():
        raise PipelineError(f"config dir {config_dir} lacks pipeline.yaml (it must hold {', '.join(CONFIG_FILES)})")
    cfg = load_pipeline_config(config_dir / "pipeline.yaml")
    jobs = _int("`--jobs`", jobs, 1) if jobs is not None else cfg.jobs
    check_config_dir(config_dir, cfg.methods)
    if cfg.teacher is not None and not cfg.teacher.is_file():
        raise PipelineError(f"`teacher` of {config_dir / 'pipeline.yaml'} is {cfg.teacher}, which does not exist")
    _require_writable(out)
    stages = plan(config_dir, out, cfg)
    resolved = resolve_stages(stages)
    status = _statuses(stages, resolved)
    if dry_run:
        for i, st in enumerate(stages, 1):
            s = status[st.name]
            print(f"[{i}/{len(stages)}] {st.title} ({s.state}{': ' + '; '.join(s.reasons) if s.reasons else ''})\n"
                  f"  {shlex.join(st.command())}")
        return []
    lock = _lock(out)
    previous = _read_stages(out / "stages.json")
    records: list[dict] = []
    aside = superseded_root(out)
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        numbered = {st.name: f"[{i}/{len(stages)}] {st.title}" for i, st in enumerate(stages, 1)}
        _report_stale(stages, status, aside)
        for st in stages:
            if status[st.name].state == "done":
                text, top1 = _summary(st)
                digest = status[st.name].digest
                print(f"{numbered[st.name]} ... skipped (done, same fingerprint {short(digest)}): {text}", flush=True)
                wall = previous.get(st.name, {}).get("wall_s") or json.loads(st.result.read_text()).get("seconds")
                records.append(_record(st, "skipped", wall, top1, digest))
        todo = [st for st in stages if status[st.name].state != "done"]

        def save() -> None:
            _write_stages(out / "stages.json", {**previous, **{r["stage"]: r for r in records}})

        def prepare(st: Stage) -> str:
            fingerprint, moved = prepare_launch(st, resolved[st.name], out, aside)
            for path in moved:
                print(f"  (the superseded output of {st.title} is kept in {path})", flush=True)
            return fingerprint["digest"]

        if jobs == 1:
            _run_sequential(todo, numbered, out, bar, lock.fileno(), records, save, prepare)
        else:
            _run_parallel(todo, numbered, out, jobs, lock.fileno(), records, save, prepare)
        save()
        rows = aggregate(collect_runs(config_dir, cfg, stages))
        skipped = skipped_videos(stages)
        paths = write_results(out, rows, records, split=cfg.split, skipped=skipped)
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        lock.close()
    for split, videos in skipped.items():
        print(f"warning: {len(videos)} unreadable video(s) left out of the {split!r} split: "
              f"{', '.join(videos[:5])}{' ...' if len(videos) > 5 else ''} (all listed in {paths['md']})", flush=True)
    print(f"results: {paths['md']}, {paths['json']}, {paths['png']}; TensorBoard: {paths['tensorboard']}")
    return rows


def _require_writable(out: Path) -> None:
    why = unwritable(out)
    if why is not None:
        raise PipelineError(f"cannot write the output dir {out}: {why}; choose another --output-dir")


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


def skipped_videos(stages: list[Stage]) -> dict[str, list[str]]:
    """Unreadable videos the stages' splits left out, by split, from their ``result.json`` (sorted, unique)."""
    found: dict[str, set[str]] = {}
    for st in stages:
        result, _ = read_result(st) if st.result.exists() else (None, None)
        for split, paths in ((result or {}).get("skipped_videos") or {}).items():
            found.setdefault(split, set()).update(paths)
    return {split: sorted(paths) for split, paths in sorted(found.items())}


def _failed(st: Stage, rc: int, log_path: Path) -> PipelineError:
    return PipelineError(f"stage {st.title} failed (exit code {rc}); its log is {log_path}. Last lines:\n"
                         f"{_tail(log_path)}\nFix the cause and run the same command again: finished stages are "
                         "skipped.")


def _run_sequential(todo: list[Stage], numbered: dict, out: Path, bar, lock_fd: int, records: list, save,
                    prepare) -> None:
    """One stage at a time, its progress bar on the stage's line."""
    for st in todo:
        log_path = out / "logs" / f"{st.name}.log"
        digest = prepare(st)
        progress = StageProgress(numbered[st.name] + " ...", bar)
        start = time.time()
        try:
            rc = run_stage(st, log_path, progress, lock_fd)
        except (KeyboardInterrupt, _Terminated):
            progress.finish(f"interrupted after {time.time() - start:.0f}s")
            raise PipelineError(f"interrupted during stage {st.title} (log: {log_path}); run the same command "
                                "again to resume it from its last checkpoint") from None
        wall = time.time() - start
        if rc != 0 or not st.done():
            progress.finish(f"FAILED after {wall:.0f}s (exit code {rc})")
            raise _failed(st, rc, log_path)
        text, top1 = _summary(st)
        progress.finish(f"done in {wall:.0f}s: {text}")
        records.append(_record(st, "ran", wall, top1, digest))
        save()


def _run_parallel(todo: list[Stage], numbered: dict, out: Path, jobs: int, lock_fd: int, records: list,
                  save, prepare) -> None:
    """Up to ``jobs`` stages at once, each started when the stages it ``needs`` are done.

    Of the stages ready to start, smaller IPCs go first (their rows are complete early), and within
    an IPC synthesis goes before students (students wait for synthesis, not the other way round).
    """
    done = {r["stage"] for r in records}
    queue, running, digests = list(todo), {}, {}  # running: name -> (stage, proc, log, start)
    print(f"running up to {jobs} stages at once, {_threads_per_job(jobs)} thread(s) each (all cores for a stage that "
          f"runs alone); logs in {out / 'logs'}", flush=True)
    try:
        while queue or running:
            ready = [st for st in queue if all(n in done for n in st.needs)]
            ready.sort(key=lambda st: (st.ipc or 0, st.kind == "student"))  # stable; see the docstring
            starting = ready[: jobs - len(running)]
            slots = len(running) + len(starting)  # a stage that starts alone (the teacher) gets every core
            for st in starting:
                digests[st.name] = prepare(st)
                proc, log = _launch(st, out / "logs" / f"{st.name}.log", lock_fd, slots)
                running[st.name] = (st, proc, log, time.time())
                queue.remove(st)
                print(f"{numbered[st.name]} ... started", flush=True)
            if not running:  # nothing can start: a needed stage is missing from the plan
                raise PipelineError(f"stages {[st.title for st in queue]} wait for stages that never ran")
            time.sleep(0.2)
            for name, (st, proc, log, start) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[name]
                wall = time.time() - start
                if rc != 0 or not st.done():
                    print(f"{numbered[name]} ... FAILED after {wall:.0f}s (exit code {rc})", flush=True)
                    raise _failed(st, rc, out / "logs" / f"{name}.log")
                text, top1 = _summary(st)
                print(f"{numbered[name]} ... done in {wall:.0f}s: {text}", flush=True)
                records.append(_record(st, "ran", wall, top1, digests[name]))
                done.add(name)
                save()
    except (KeyboardInterrupt, _Terminated):
        names = [st.title for st, *_ in running.values()]
        raise PipelineError(f"interrupted during stages {names}; run the same command again to resume them "
                            "from their last checkpoints") from None
    finally:
        for _st, proc, log, _ in running.values():
            _stop(proc)
            log.close()


def _record(st: Stage, status: str, wall: float | None, top1: float | None, digest: str | None) -> dict:
    return {"stage": st.name, "status": status, "wall_s": None if wall is None else round(wall, 1), "top1": top1,
            "fingerprint": short(digest), "log": f"logs/{st.name}.log", "command": st.command()}


def _read_stages(path: Path) -> dict:
    return {r["stage"]: r for r in json.loads(path.read_text())} if path.is_file() else {}


def _write_stages(path: Path, by_name: dict) -> None:
    write_json_atomic(list(by_name.values()), path)


def collect_runs(config_dir: Path, cfg: PipelineConfig, stages: list[Stage]) -> list[dict]:
    """Per-run records ``{"method", "ipc", "arch", "seed", "top1", "top5"}`` in method order, then IPC, then seed.

    Accuracies are those of ``cfg.split`` (the test split, or the validation carve-out).
    """
    runs = []
    split = cfg.split
    teacher = next((st for st in stages if st.kind == "teacher"), None)
    students = [st for st in stages if st.kind == "student"]
    for m in cfg.methods:
        if m.select == "teacher":
            mine = [teacher]
            arch = student_arch(config_dir / "teacher.yaml", {})
        else:
            mine = [st for st in students if st.method == m.name]
            arch = student_arch(config_dir / "student.yaml", m.student)
        for st in mine:
            result = json.loads(st.result.read_text())
            metrics = result[split]
            runs.append({"method": m.name, "ipc": st.ipc, "arch": arch, "seed": st.seed,
                         "top1": metrics[f"{split}/acc_top1"], "top5": metrics[f"{split}/acc_top5"],
                         "fingerprint": short((result.get("fingerprint") or {}).get("digest"))})
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tsgf_lightning.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", required=True, help="holds teacher/synthesis/student/pipeline.yaml")
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


__all__ = ["BUILTIN_METHODS", "Method", "PipelineConfig", "PipelineError", "Stage", "collect_runs", "main",
           "plan", "run_pipeline"]

if __name__ == "__main__":
    main()
