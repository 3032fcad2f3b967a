"""What a config dir holds and what ``pipeline.yaml`` says: the methods, IPCs and seeds, validated.

A config dir holds ``teacher.yaml``, ``synthesis.yaml``, ``student.yaml`` and ``pipeline.yaml``, and
optionally ``data.yaml`` (the dataset's ``data:`` block, which every stage reads) and override files
``synthesis_ipcK.yaml`` / ``student_ipcK.yaml`` (what differs at IPC K). A stage's config is the
composition of these files in that order (LightningCLI's repeated ``--config``, later files win):
:func:`stage_files`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

CONFIG_FILES = ("teacher.yaml", "synthesis.yaml", "student.yaml", "pipeline.yaml")
DATA_FILE = "data.yaml"
PIPELINE_KEYS = ("ipc", "seeds", "methods", "extra_methods", "jobs", "evaluate_on", "teacher", "synthesis_per_seed",
                 "pairs", "experts", "protocols")
EVALUATE_ON = ("test", "val")
METHOD_KEYS = ("select", "synthesis", "student", "ipc", "seeds", "distiller")
#: Distillation methods, each the stem of its stage config in the config dir (``dm.yaml``, ...).
DISTILLERS = ("synthesis", "dm", "mtt", "vdsd")
#: Student protocols, as overrides of student.yaml. ``tsgf``: student.yaml itself (soft labels by the
#: teacher, saliency-gated VideoMix). ``vdsd``: the published VDSD/DM/MTT evaluation (method.md): hard
#: labels, SGD lr 0.01 momentum 0.9 weight decay 5e-4, lr x0.1 at half, no augmentation, and MTT's
#: learnt learning rate where the set carries one; the step budget stays student.yaml's.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "tsgf": {},
    "vdsd": {"model.init_args.labels": "hard", "model.init_args.mix": "none",
             "model.init_args.optimizer": {"class_path": "torch.optim.SGD",
                                           "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}},
             "model.init_args.schedule": "step", "model.init_args.lr_from_set": True,
             "data.flip": False, "data.crop_scale": [1.0, 1.0], "data.crop_ratio": [1.0, 1.0]},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class PipelineError(ValueError):
    """Bad pipeline input (named), arguments that do not parse, or a stage that failed (with its log)."""


def contract() -> str:
    """The config dir's files, for error messages."""
    return (f"it must hold {', '.join(CONFIG_FILES)}; optionally {DATA_FILE} (the `data:` block every stage "
            "reads) and synthesis_ipcK.yaml / student_ipcK.yaml (applied on top at IPC K)")


def stage_files(config_dir: Path, kind: str, ipc: int | None = None) -> tuple[Path, ...]:
    """The files a ``kind`` stage composes, in order: ``data.yaml`` (if there), ``<kind>.yaml``, ``<kind>_ipcK.yaml``.

    The IPC file is added only for a distillation (``synthesis``, ``dm``, ...) or student stage at IPC
    ``ipc`` and only if it exists.
    """
    files = [config_dir / DATA_FILE] if (config_dir / DATA_FILE).is_file() else []
    files.append(config_dir / f"{kind}.yaml")
    if ipc is not None and kind in (*DISTILLERS, "student") and (config_dir / f"{kind}_ipc{ipc}.yaml").is_file():
        files.append(config_dir / f"{kind}_ipc{ipc}.yaml")
    return tuple(files)


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
        distiller: with ``select: synthesis``, the method that distils the set, by the stem of its
            config (:data:`DISTILLERS`): ``synthesis`` (TSGF / SRe2L, synthesis.yaml), ``dm``,
            ``mtt`` (after the expert stages, experts.yaml) or ``vdsd``.
        synthesis: overrides of the distiller's config (dotted keys); non-empty gets its own run
            ``OUT/synthesis/<name>_ipcK``, empty shares ``OUT/<distiller>_ipcK``.
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
    distiller: str = "synthesis"


BUILTIN_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", select="teacher"),
    # random real videos, hard labels, no mixing: the classic "random real" baseline
    Method("random", select="random", student={"model.init_args.labels": "hard", "model.init_args.mix": "none"}),
    # random real videos under student.yaml's own protocol (soft labels, TSGF_A, same epochs):
    # the strongest cheap baseline, which synthesis has to beat to be worth its cost
    Method("random+student", select="random"),
    Method("tsgf", select="synthesis"),
    # the methods the paper compares with, as their published video code runs them (method.md)
    Method("dm", distiller="dm"),
    Method("mtt", distiller="mtt"),
    Method("vdsd", distiller="vdsd"),
)}
#: What ``methods`` is when pipeline.yaml does not say.
DEFAULT_METHODS = ("full", "random", "random+student", "tsgf")


@dataclass(frozen=True)
class PipelineConfig:
    """``pipeline.yaml``, validated: IPCs, seeds per (method, IPC), and the methods in run order.

    Attributes:
        evaluate_on: ``test`` (students report the real test split) or ``val`` (the validation
            carve-out: for choosing settings; the test split is then never evaluated by a student).
        teacher: an existing TeacherModule checkpoint that every stage uses instead of a teacher
            trained by this pipeline (no teacher stage, so no ``full`` row).
        synthesis_per_seed: one synthesis per student seed ``s`` (``init_seed`` and ``seed`` = ``s``),
            each seed's students on their own set: the spread then covers the initial clips too, and
            seed ``s`` of two variants shares its initial clips (paired comparisons).
        pairs: ``(variant, baseline)`` method names whose per-seed differences are reported
            (:mod:`~tsgf_lightning.paired`).
        experts: how many expert trajectories MTT matches (expert stages, seeds 0 .. experts - 1).
        protocols: the student protocols every method is evaluated under (:data:`PROTOCOLS`); the
            first is the methods' own rows, each other one adds rows ``<method>@<protocol>``.
    """

    ipc: tuple[int, ...]
    seeds: int
    methods: tuple[Method, ...]
    jobs: int = 1
    evaluate_on: Literal["test", "val"] = "test"
    teacher: Path | None = None
    synthesis_per_seed: bool = False
    pairs: tuple[tuple[str, str], ...] = ()
    experts: int = 2
    protocols: tuple[str, ...] = ("tsgf",)


def _real_selections() -> tuple[str, ...]:
    """DataModule ``train_set`` modes that pick real clips per class (everything but real/distilled/none)."""
    import typing

    from ..data.datamodule import TrainSet
    return tuple(t for t in typing.get_args(TrainSet) if t not in ("real", "distilled", "none"))


def check_int(where: str, value, low: int) -> int:
    """``value`` if it is an integer >= ``low``, else a PipelineError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PipelineError(f"Expected {where} to be an integer >= {low} but got {value!r}")
    return value


#: Keys the pipeline sets per stage (seed s, IPC k): a method's override would give every seed (or IPC) one value,
#: so its rows would repeat one run under several labels and its paired differences would pair nothing. A
#: synthesis's seeds are the pipeline's only with ``synthesis_per_seed`` (else one shared run may set its own).
STUDENT_OWNED = ("seed_everything", "model.init_args.seed", "data.subset_seed", "data.ipc")
SYNTHESIS_OWNED = ("model.init_args.ipc", "seed_everything", "model.init_args.init_seed", "model.init_args.seed")


def _overrides(where: str, value, owned: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k and not k.startswith("-") for k in value):
        raise PipelineError(f"Expected {where} to be a mapping of dotted config keys (model.init_args.mix: none) "
                            f"to values but got {value!r}")
    hits = [k for k in _dotted_keys(value) if k in owned]
    if hits:
        raise PipelineError(f"{where} sets {hits}, which the pipeline sets per seed and "
                            "IPC (`seeds`, `ipc`, the method's own `seeds`/`ipc`): remove it")
    return dict(value)


def _dotted_keys(value: dict, prefix: str = ""):
    """Every key an override sets, nested mappings spelled out: ``{"model.init_args": {"seed": 1}}`` sets
    ``model.init_args`` and ``model.init_args.seed``."""
    for k, v in value.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _dotted_keys({str(sub): w for sub, w in v.items()}, f"{prefix}{k}.")


def _extra_method(path: Path, name, spec, selections: tuple[str, ...], per_seed: bool) -> Method:
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
    distiller = spec.get("distiller", "synthesis")
    if distiller not in DISTILLERS or (distiller != "synthesis" and select != "synthesis"):
        raise PipelineError(f"Expected `distiller` of {where} to be one of {list(DISTILLERS)} (with `select: "
                            f"synthesis`) but got {distiller!r} with select {select!r}")
    ipc = spec.get("ipc")
    if ipc is not None:
        ipc = [ipc] if isinstance(ipc, int) and not isinstance(ipc, bool) else ipc
        if not isinstance(ipc, list) or not ipc or len(set(map(str, ipc))) != len(ipc):
            raise PipelineError(f"Expected `ipc` of {where} to be a non-empty list of distinct integers >= 1 "
                                f"but got {spec.get('ipc')!r}")
        ipc = tuple(sorted(check_int(f"every `ipc` of {where}", k, 1) for k in ipc))
    seeds = None if spec.get("seeds") is None else check_int(f"`seeds` of {where}", spec["seeds"], 1)
    owned = SYNTHESIS_OWNED if per_seed else SYNTHESIS_OWNED[:1]
    return Method(name, select, _overrides(f"`synthesis` of {where}", spec.get("synthesis") or {}, owned),
                  _overrides(f"`student` of {where}", spec.get("student") or {}, STUDENT_OWNED), ipc, seeds, distiller)


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read and validate ``pipeline.yaml`` (every error names the key and the file).

    ``methods`` defaults to :data:`DEFAULT_METHODS`; every method of ``extra_methods`` runs too,
    after those listed in ``methods`` unless ``methods`` places it. Each protocol after the first
    adds a row ``<method>@<protocol>`` per method with students (:func:`_with_protocols`).
    """
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise PipelineError(f"Expected {path} to be a mapping with keys {list(PIPELINE_KEYS)} but got {raw!r}")
    if "split" in raw:
        raise PipelineError(f"{path} has the key `split`, which is now `evaluate_on` (test or val): rename it")
    unknown = sorted(set(raw) - set(PIPELINE_KEYS))
    if unknown:
        raise PipelineError(f"{path} has unknown key(s) {unknown}; known keys: {list(PIPELINE_KEYS)}")
    ipc = raw.get("ipc", [1])
    ipc = [ipc] if isinstance(ipc, int) and not isinstance(ipc, bool) else ipc
    if not isinstance(ipc, list) or not ipc:
        raise PipelineError(f"Expected `ipc` in {path} to be a non-empty list of integers >= 1 but got {ipc!r}")
    ipc = [check_int(f"every `ipc` in {path}", k, 1) for k in ipc]
    if len(set(ipc)) != len(ipc):
        raise PipelineError(f"Expected `ipc` in {path} to have no repeats but got {ipc}")
    seeds = check_int(f"`seeds` in {path}", raw.get("seeds", 3), 1)
    jobs = check_int(f"`jobs` in {path}", raw.get("jobs", 1), 1)
    extra_raw = raw.get("extra_methods") or {}
    if not isinstance(extra_raw, dict):
        raise PipelineError(f"Expected `extra_methods` in {path} to be a mapping name -> spec but got {extra_raw!r}")
    selections = _real_selections() if extra_raw else ()  # imports torch: only when there is something to check
    per_seed = raw.get("synthesis_per_seed", False)
    if not isinstance(per_seed, bool):
        raise PipelineError(f"Expected `synthesis_per_seed` in {path} to be true or false but got {per_seed!r}")
    extra = {name: _extra_method(path, name, spec, selections, per_seed) for name, spec in extra_raw.items()}
    known = {**BUILTIN_METHODS, **extra}
    names = raw.get("methods", list(DEFAULT_METHODS))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PipelineError(f"Expected `methods` in {path} to be a list of method names but got {names!r}")
    bad = [n for n in names if n not in known]
    if bad:
        raise PipelineError(f"unknown method(s) {bad} in `methods` of {path}; known methods: {list(known)} "
                            "(define new ones under `extra_methods`)")
    if len(set(names)) != len(names):
        raise PipelineError(f"Expected `methods` in {path} to have no repeats but got {names}")
    names += [n for n in extra if n not in names]
    evaluate_on = raw.get("evaluate_on", "test")
    if evaluate_on not in EVALUATE_ON:
        raise PipelineError(f"Expected `evaluate_on` in {path} to be one of {list(EVALUATE_ON)} but got "
                            f"{evaluate_on!r}")
    teacher = raw.get("teacher")
    if teacher is not None:
        if not isinstance(teacher, str) or not teacher:
            raise PipelineError(f"Expected `teacher` in {path} to be a checkpoint path but got {teacher!r}")
        if "full" in names:
            raise PipelineError(f"`teacher` in {path} reuses an existing teacher, so there is no teacher stage to "
                                "report as `full`: remove `full` from `methods`")
        teacher = Path(os.path.abspath(teacher))  # not resolve(): last.ckpt is a link that moves on
    protocols = raw.get("protocols", ["tsgf"])
    if (not isinstance(protocols, list) or not protocols or any(p not in PROTOCOLS for p in protocols)
            or len(set(protocols)) != len(protocols)):
        raise PipelineError(f"Expected `protocols` in {path} to be a non-empty list of distinct protocols from "
                            f"{list(PROTOCOLS)} but got {protocols!r}")
    methods = _with_protocols(tuple(known[n] for n in names), protocols)
    experts = check_int(f"`experts` in {path}", raw.get("experts", 2), 1)
    return PipelineConfig(tuple(sorted(ipc)), seeds, methods, jobs, evaluate_on, teacher, per_seed,
                          _pairs(path, raw.get("pairs") or [], [m.name for m in methods]), experts, tuple(protocols))


def _with_protocols(methods: tuple[Method, ...], protocols: list[str]) -> tuple[Method, ...]:
    """The methods under ``protocols[0]``, then under each other protocol as ``<name>@<protocol>`` rows.

    A protocol's overrides win over the method's own student overrides (a protocol without
    augmentation has none, whatever the method mixes). A protocol row distils nothing of its own: its
    overrides of the distiller are the method's, so it shares the method's run; only students differ.
    """
    rows = [replace(m, student={**m.student, **PROTOCOLS[protocols[0]]}) for m in methods]
    for p in protocols[1:]:
        rows += [replace(m, name=f"{m.name}@{p}", student={**m.student, **PROTOCOLS[p]})
                 for m in methods if m.select != "teacher"]
    return tuple(rows)


def _pairs(path: Path, raw, names: list[str]) -> tuple[tuple[str, str], ...]:
    """``pairs: [[variant, baseline], ...]``: two distinct methods of this pipeline, neither ``full``."""
    if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw):
        raise PipelineError(f"Expected `pairs` in {path} to be a list of [variant, baseline] method pairs but got "
                            f"{raw!r}")
    for variant, baseline in raw:
        bad = [n for n in (variant, baseline) if n not in names or n == "full"]
        if bad or variant == baseline:
            raise PipelineError(f"`pairs` in {path}: [{variant}, {baseline}] must name two different methods of "
                                f"this pipeline with students (not `full`); methods: {names}")
    return tuple((v, b) for v, b in raw)
