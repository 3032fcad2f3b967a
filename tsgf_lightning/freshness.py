"""Is a finished stage still the same stage? Its status, the reasons, and setting superseded outputs aside.

A stage is ``done`` only if its ``result.json`` is readable and complete, its outputs exist, no stage
it reads from runs again, and the fingerprint recorded in the result equals the one its current
config and inputs give (:mod:`~tsgf_lightning.fingerprint`). Otherwise it is

- ``new``: never started;
- ``resume``: started with the same fingerprint (``fingerprint.json``, written at launch, matches)
  and interrupted: it continues from its last checkpoint;
- ``stale``: finished or started under another config or other inputs (or its result cannot be
  read): it runs again from scratch, after its old run directory is moved to
  ``OUT/superseded/<time>/`` (nothing is deleted).

Every stage passes through :func:`prepare_launch` right before it starts, when the stages it needs
have finished, so its fingerprint holds the hashes of the inputs it will really read.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_json_atomic
from .config_defaults import new_at_default
from .fingerprint import changes, fingerprint

FINGERPRINT_FILE = "fingerprint.json"


@dataclass
class Status:
    state: str                           # done | new | resume | stale
    reasons: list[str] = field(default_factory=list)
    digest: str | None = None            # the fingerprint's digest, when it was computed


def run_dir(stage) -> Path:
    """Where a stage writes: its ``result.json``'s folder (checkpoints, logs, exports)."""
    return stage.result.parent


def read_result(stage) -> tuple[dict | None, str | None]:
    """``(result, None)``, or ``(None, why it cannot be read)``."""
    try:
        result = json.loads(stage.result.read_text())
    except (OSError, ValueError) as err:
        return None, f"its result {stage.result} cannot be read ({type(err).__name__}: {err})"
    if not isinstance(result, dict):
        return None, f"its result {stage.result} holds a {type(result).__name__}, not a mapping"
    return result, None


def incomplete(stage) -> str | None:
    """Why the stage has not finished (no or unreadable result, a missing output or split), or None.

    A result without the ``stage`` entry (what the stage was: :func:`tsgf_lightning.stage.describe`)
    was written by an older version and counts as unfinished, since the table is built from it.
    """
    if not stage.result.exists():
        return f"it has no result {stage.result}"
    result, unreadable = read_result(stage)
    if unreadable:
        return unreadable
    if not isinstance(result.get("stage"), dict):
        return f"its result {stage.result} does not say what the stage was (written by an older version)"
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        return f"its output {missing[0]} is missing"
    for flag, split in ((stage.validate, "val"), (stage.test, "test")):
        if flag and split not in result:
            return f"its result has no {split} metrics"
    return None


def stage_status(stage, resolved: dict, rerun: set[str]) -> Status:
    """The status of ``stage`` given its resolved config and the names of the stages that will run."""
    upstream = [n for n in stage.needs if n in rerun]
    if stage.result.exists():
        why = incomplete(stage)
        if why:
            return Status("stale", [why])
        if upstream:
            return Status("stale", [f"stage {', '.join(upstream)} runs again"])
        current = fingerprint(resolved)
        recorded = (read_result(stage)[0] or {}).get("fingerprint")
        recorded = recorded if isinstance(recorded, dict) else None
        if recorded is not None and recorded.get("digest") == current["digest"]:
            return Status("done", [], current["digest"])
        still = _still_this_stage(recorded, current, resolved)
        if still is not None:  # the recorded digest stays the result's provenance
            return Status("done", still, recorded["digest"])
        return Status("stale", changes(recorded, current), current["digest"])
    here = run_dir(stage)
    if not (here / FINGERPRINT_FILE).exists():
        if here.is_dir() and any(here.iterdir()):
            return Status("stale", ["interrupted with no recorded fingerprint (an older version): starts over"])
        return Status("new")
    if upstream:
        return Status("stale", [f"interrupted, and stage {', '.join(upstream)} runs again"])
    recorded = _recorded(here / FINGERPRINT_FILE)
    current = fingerprint(resolved)
    if _same_stage(recorded, current, resolved):
        return Status("resume", [], current["digest"])
    return Status("stale", ["interrupted under another config or other inputs: "
                            + "; ".join(changes(recorded, current))], current["digest"])


def _same_stage(recorded: dict | None, current: dict, resolved: dict) -> bool:
    """Whether an interrupted run's recorded fingerprint is the current one's stage: equal, or only new options
    at their default."""
    return recorded is not None and (recorded.get("digest") == current["digest"]
                                     or _still_this_stage(recorded, current, resolved) is not None)


def _still_this_stage(recorded: dict | None, current: dict, resolved: dict) -> list[str] | None:
    """Why a recorded fingerprint other than the current one still describes this stage, or None if it does not.

    Two differences made by newer versions change nothing a stage computes: options ``current`` adds at
    their code default (:func:`~tsgf_lightning.config_defaults.new_at_default`), and a hard-label
    student's teacher checkpoint, which older versions passed it (and fingerprinted) though it asks the
    teacher nothing.
    """
    if not recorded or not isinstance(recorded.get("config"), dict):
        return None
    inputs, reasons = dict(recorded.get("inputs") or {}), []
    if ("teacher" in inputs and "teacher" not in current["inputs"]
            and (resolved.get("model") or {}).get("init_args", {}).get("labels") == "hard"):
        del inputs["teacher"]
        reasons.append("no longer reads the teacher checkpoint (hard labels)")
    added = new_at_default(recorded["config"], current["config"], resolved) if inputs == current["inputs"] else None
    if added is None:
        return None
    return ([f"new option(s) at their default: {', '.join(added)}"] if added else []) + reasons


def _recorded(path: Path) -> dict | None:
    """The fingerprint a ``fingerprint.json`` holds, or None when there is none to read."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def statuses(stages, resolved: dict[str, dict]) -> dict[str, Status]:
    """Every stage's status, in plan order (a stage's needs come before it)."""
    out: dict[str, Status] = {}
    rerun: set[str] = set()
    for st in stages:
        out[st.name] = stage_status(st, resolved[st.name], rerun)
        if out[st.name].state != "done":
            rerun.add(st.name)
    return out


def superseded_root(out: Path) -> Path:
    """``OUT/superseded/<YYYYmmdd-HHMMSS>``: where this invocation moves outputs it replaces."""
    return out / "superseded" / time.strftime("%Y%m%d-%H%M%S")


def set_aside(paths, out: Path, dest_root: Path) -> list[Path]:
    """Move existing ``paths`` under ``dest_root`` (keeping their path relative to ``out``); returns the new places."""
    moved = []
    for p in paths:
        if not (p.exists() or p.is_symlink()):
            continue
        try:
            rel = p.resolve().relative_to(out.resolve()) if not p.is_symlink() else p.relative_to(out)
        except ValueError:
            rel = Path("elsewhere", *p.absolute().parts[1:])
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dest))
        moved.append(dest)
    return moved


def prepare_launch(stage, resolved: dict, out: Path, dest_root: Path) -> tuple[dict, list[Path]]:
    """Right before ``stage`` starts: compute its fingerprint, set aside a superseded run, record the fingerprint.

    A run directory whose ``fingerprint.json`` matches and that has no result is an interrupted run
    of the same stage and is kept (the stage resumes it); anything else there is moved aside.

    Returns:
        The fingerprint and the paths things were moved to.
    """
    current = fingerprint(resolved)
    here = run_dir(stage)
    marker = here / FINGERPRINT_FILE
    recorded = None if stage.result.exists() else _recorded(marker)
    keep = _same_stage(recorded, current, resolved)
    moved = []
    if not keep:
        outside = [p for p in stage.outputs if here not in p.absolute().parents]
        moved = set_aside([here, *outside], out, dest_root)
    write_json_atomic(current, marker)
    return current, moved
