"""The stages of a pipeline, in run order, and the checks made before any of them runs."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..fingerprint import ConfigResolveError, resolve_config
from ..freshness import FINGERPRINT_FILE, incomplete
from .config import Method, PipelineConfig, PipelineError, contract, stage_files


@dataclass(frozen=True)
class Stage:
    """One ``tsgf_lightning.stage`` process: what it runs, where it writes, how to tell it is done.

    ``configs`` are composed in order (repeated ``--config``: :func:`~.config.stage_files`), then
    ``overrides``. ``method`` is the row whose own stage this is; None for a stage several rows
    share (the teacher, a synthesis without overrides). The stage records it in its result
    (``--method``) beside what it reads from its own config (kind, IPC, seed, architecture).
    """

    name: str                  # file-safe id, also the log's name: "student_random+student_ipc1_seed0"
    title: str                 # for people: "student random+student ipc1 seed0"
    kind: Literal["teacher", "experts", "synthesis", "student"]   # synthesis: any distiller (dm, mtt, ...)
    configs: tuple[Path, ...]
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
        configs = [arg for path in self.configs for arg in ("--config", str(path))]
        return [sys.executable, "-m", "tsgf_lightning.stage", *configs, *self.overrides, "--resume",
                *(["--validate"] if self.validate else []), *(["--test"] if self.test else []),
                *(["--method", self.method] if self.method else []),
                "--result", str(self.result), "--fingerprint", str(self.result.parent / FINGERPRINT_FILE)]

    def done(self) -> bool:
        """The result (holding every part this stage evaluates) and the outputs exist.

        Complete, not necessarily current: :func:`~tsgf_lightning.freshness.statuses` also compares
        the fingerprint the result records with the one the stage's config and inputs give now.
        """
        return incomplete(self) is None

    def files(self) -> str:
        """The composed config files, for people: ``data.yaml + student.yaml in DIR``."""
        return f"{' + '.join(p.name for p in self.configs)} in {self.configs[-1].parent}"


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
    """Overrides that put a stage's run in ``save_dir/name/`` itself.

    An empty version (``--...version=`` with nothing after ``=`` parses as "") puts the run there,
    not in ``save_dir/name/version_N/``, so ``--resume`` finds ``checkpoints/last.ckpt`` there.
    """
    return [override("trainer.logger.init_args.save_dir", save_dir), override("trainer.logger.init_args.name", name),
            "--trainer.logger.init_args.version="]


def plan(config_dir: Path, out: Path, cfg: PipelineConfig) -> list[Stage]:
    """The stages, in run order: teacher, MTT's experts, then per IPC each method's distillation (once) and students.

    With ``cfg.teacher`` there is no teacher stage: every stage reads that checkpoint.
    """
    val = cfg.evaluate_on == "val"
    if cfg.teacher is None:
        teacher_ckpt = out / "teacher" / "checkpoints" / "last.ckpt"
        stages = [Stage("teacher", "teacher", "teacher", stage_files(config_dir, "teacher"),
                        tuple(logger_dir(out, "teacher")), out / "teacher" / "result.json", outputs=(teacher_ckpt,),
                        test=not val, validate=val)]
        teacher_needs: tuple[str, ...] = ("teacher",)
    else:
        teacher_ckpt, stages, teacher_needs = cfg.teacher, [], ()
    experts = _expert_stages(config_dir, out, cfg) if needs_experts(cfg.methods) else []
    stages += experts
    synthesis: dict[tuple, Stage] = {}
    for k in sorted({*cfg.ipc, *(i for m in cfg.methods for i in (m.ipc or ()))}):
        for m in cfg.methods:
            if m.select == "teacher" or k not in (m.ipc or cfg.ipc):
                continue
            for s in range(m.seeds or cfg.seeds):
                distilled, seed = None, s if cfg.synthesis_per_seed else None
                if m.select == "synthesis":
                    # Methods with equal synthesis overrides (none, most often) share one run, named after the first.
                    key = (m.distiller, json.dumps(sorted(m.synthesis.items()), sort_keys=True, default=str), k, seed)
                    if key not in synthesis:
                        synthesis[key] = _synthesis_stage(config_dir, out, m, k, teacher_ckpt, teacher_needs, seed,
                                                          experts)
                        stages.append(synthesis[key])
                    distilled = synthesis[key].outputs[0]
                if distilled is not None:
                    select = [override("data.train_set", "distilled"), override("data.distilled_path", distilled)]
                else:  # a fresh random draw per seed: the spread then covers the choice of real videos too
                    select = [override("data.train_set", m.select), override("data.ipc", k),
                              override("data.subset_seed", s)]
                run = out / "students" / m.name / f"ipc{k}"
                # A hard-label student never asks the teacher anything: it neither reads nor waits for it.
                hard = m.student.get("model.init_args.labels") == "hard"
                overrides = [override("seed_everything", s), override("model.init_args.seed", s),
                             override("model.init_args.teacher_ckpt", None if hard else teacher_ckpt),
                             *logger_dir(run, f"seed{s}"), *select,
                             *(override(key, v) for key, v in m.student.items())]
                needs = () if hard else teacher_needs
                needs = needs if distilled is None else (*needs, synthesis[key].name)
                stages.append(Stage(f"student_{m.name}_ipc{k}_seed{s}", f"student {m.name} ipc{k} seed{s}", "student",
                                    stage_files(config_dir, "student", k), tuple(overrides),
                                    run / f"seed{s}" / "result.json", test=not val, validate=val,
                                    method=m.name, ipc=k, seed=s, needs=needs))
    return stages


def _synthesis_stage(config_dir: Path, out: Path, m: Method, k: int, teacher_ckpt: Path,
                     teacher_needs: tuple[str, ...], seed: int | None = None, experts: list[Stage] = ()) -> Stage:
    """A distillation run of ``m.distiller`` at IPC ``k``; with ``seed``, initialised and drawn from that seed.

    TSGF / SRe2L synthesis reads the teacher; MTT reads the expert trajectories (and waits for them);
    DM and VDSD read neither.
    """
    tail = "" if seed is None else f"_seed{seed}"
    base = f"{m.distiller}_ipc{k}{tail}"
    save_dir, name = (out / "synthesis", f"{m.name}_ipc{k}{tail}") if m.synthesis else (out, base)
    export = Path(m.synthesis.get("model.init_args.export_dir", save_dir / name))
    seeded = [] if seed is None else [override(key, seed) for key in ("seed_everything", "model.init_args.init_seed",
                                                                       "model.init_args.seed")]
    reads, needs = [], ()
    if m.distiller == "synthesis":
        reads, needs = [override("model.init_args.teacher_ckpt", teacher_ckpt)], teacher_needs
    elif m.distiller == "mtt":
        reads = [override("model.init_args.experts", [str(e.outputs[0]) for e in experts])]
        needs = tuple(e.name for e in experts)
    overrides = [*reads, override("model.init_args.ipc", k), *seeded,
                 *logger_dir(save_dir, name), override("model.init_args.export_dir", save_dir / name),
                 *(override(key, v) for key, v in m.synthesis.items())]
    stage_name = f"synthesis_{m.name}_ipc{k}{tail}" if m.synthesis else base
    return Stage(stage_name, stage_name.replace("_", " "), "synthesis", stage_files(config_dir, m.distiller, k),
                 tuple(overrides), save_dir / name / "result.json", outputs=(export / "distilled.pt",),
                 test=False, method=m.name if m.synthesis else None, ipc=k, seed=seed, needs=needs)


def _expert_stages(config_dir: Path, out: Path, cfg: PipelineConfig) -> list[Stage]:
    """MTT's expert trajectories: experts.yaml fitted from seeds 0 .. ``cfg.experts`` - 1, IPC-free, run once.

    Each writes ``OUT/experts/expert_<i>/trajectory/`` (:class:`~tsgf_lightning.modules.experts.ExpertTrajectory`).
    """
    stages = []
    for i in range(cfg.experts):
        run = out / "experts" / f"expert_{i}"
        overrides = (override("seed_everything", i), *logger_dir(out / "experts", f"expert_{i}"))
        stages.append(Stage(f"experts_{i}", f"expert {i}", "experts", stage_files(config_dir, "experts"), overrides,
                            run / "result.json", outputs=(run / "trajectory",), test=False, seed=i))
    return stages


def needs_experts(methods: tuple[Method, ...]) -> bool:
    """Whether a method distils with MTT, which matches the expert trajectories (experts.yaml's stages)."""
    return any(m.select == "synthesis" and m.distiller == "mtt" for m in methods)


# ---------------------------------------------------------------------- checks before running
def check_config_dir(config_dir: Path, methods: tuple[Method, ...]) -> None:
    """Every config the methods need is in ``config_dir`` (a distiller's only if a method uses it)."""
    needed = {"teacher.yaml", "pipeline.yaml"}
    needed |= {"student.yaml" for m in methods if m.select != "teacher"}
    needed |= {f"{m.distiller}.yaml" for m in methods if m.select == "synthesis"}
    needed |= {"experts.yaml"} if needs_experts(methods) else set()
    missing = sorted(f for f in needed if not (config_dir / f).is_file())
    if missing:
        found = sorted(p.name for p in config_dir.glob("*.yaml")) if config_dir.is_dir() else []
        raise PipelineError(f"config dir {config_dir} lacks {', '.join(missing)} ({contract()}; found: "
                            f"{', '.join(found) or 'no YAML files'})")


def resolve_stages(stages: list[Stage]) -> dict[str, dict]:
    """Every stage's resolved config (parsed, never instantiated), so a typo fails before any training.

    LightningCLI's ``--print_config`` parses the composed config files with every override;
    jsonargparse names an unknown option or a bad value. The resolved configs are what the stages'
    fingerprints hash and what their GPU placement reads.
    """
    resolved = {}
    for st in stages:
        try:
            resolved[st.name] = resolve_config(st.configs, st.overrides)
        except ConfigResolveError as err:
            raise PipelineError(f"stage {st.title} would fail: its arguments do not parse against {st.files()}:\n"
                                f"{err.text}\ncommand: {shlex.join(st.command())}") from None
    return resolved
