"""``python -m tsgf_lightning {fit,validate,test} --config FILE``: one LightningCLI for every stage.

Subclass mode: the YAML's ``model.class_path`` picks TeacherModule, SynthesisModule or StudentModule;
all share :class:`~tsgf_lightning.data.datamodule.VideoDataModule`, whose ``num_classes`` and ``spec``
(class names, clip geometry, normalisation) are linked into the model, so a config never states them twice.

A wrong input stops the run before anything trains, with one line that names it: the parser's
errors are cut down to the bad key and the innermost reason (the full usage and jsonargparse's
nested Union text only with ``TSGF_FULL_ERRORS=1``), abbreviated options are refused (argparse
would silently read ``--trainer.max_step`` as ``--trainer.max_steps``), and ``--ckpt_path last``
checks the checkpoints it finds before using one (:func:`resume_checkpoint`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from . import strategy  # noqa: F401  (registers the `ddp_shards` strategy name)
from .data.datamodule import VideoDataModule

#: Set to 1 to get jsonargparse's own error output (usage and the whole nested message).
FULL_ERRORS_ENV = "TSGF_FULL_ERRORS"
DESCRIPTION = ("The stages: tsgf {fit,validate,test} --config FILE ... Also: tsgf decode --config DATA.yaml "
               "[--shard I --num-shards N] fills the decode cache before training, in shards (tsgf decode --help).")


class TSGFParser(LightningArgumentParser):
    """A parser whose error is one line naming the bad key, and one line saying how to see the rest.

    jsonargparse prints 60-80 lines of usage before the message, and nests the reason inside
    ``Does not validate against any of the Union subtypes`` blocks; the key and the reason are all a
    user needs to fix a config. Inner parsers (``exit_on_error=False``) raise as before: their
    message is what the outer parser reports.
    """

    #: The ``--config`` files of the command line being parsed, named in errors.
    sources: tuple[str, ...] = ()

    def error(self, message: str, ex: Exception | None = None):
        full = os.environ.get(FULL_ERRORS_ENV, "0") not in ("", "0") or os.environ.get("JSONARGPARSE_DEBUG")
        if full or not self.exit_on_error:
            super().error(message, ex)
        try:
            short = short_error(message, getattr(ex, "subcommand_parser", None) or self, self.sources)
        except Exception:  # noqa: BLE001  (a message of a shape not foreseen: jsonargparse's own output, not none)
            super().error(message, ex)
        self._logger.error(message)
        sys.stderr.write(f"error: {short}\n"
                         f"(for the parser's full output run again with {FULL_ERRORS_ENV}=1; --help lists every "
                         "option)\n")
        self.exit(2)


def short_error(message: str, parser, sources=()) -> str:
    """``KEY: reason (where)`` from a jsonargparse error message, with a "did you mean" when one is close."""
    keys: list[str] = []
    classes: list[str] = []
    reason = _innermost(message, keys, classes)
    key = ".".join(k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])
    key = _strip_subcommand(key, parser)
    where = f"(in {', '.join(sources)} or on the command line)" if sources else "(on the command line)"
    if (m := re.fullmatch(r"Option '([^']+)' is not accepted", reason)) and classes:
        name, owner = m[1], classes[-1]
        hint = _did_you_mean(name, _parameters(owner), quote="'")
        return f"{key}.{name}: {owner.rsplit('.', 1)[-1]} has no argument '{name}'{hint} {where}"
    if classes and re.search(r"has no attribute|No module named|\bimport", reason, re.IGNORECASE):
        path = classes[-1]
        key = key.removesuffix(".init_args")
        return f"{key}: cannot import class path '{path}': {reason}{_did_you_mean_import(path)} {where}"
    if m := re.fullmatch(r"the following arguments are required: (.*)", reason):
        names = ", ".join(_strip_subcommand(k, parser) for k in m[1].split(", "))
        given = f"in {', '.join(sources)}" if sources else "by a config file"
        return f"{names}: required, but given neither {given} nor on the command line"
    for unknown in (r"Subcommand '[^']+' does not accept option '(?P<name>[^']+)'",
                    r"Group '(?P<group>[^']+)' does not accept option '(?P<name>[^']+)'",
                    r"Option '(?P<name>[^']+)' is not accepted(?: before subcommand .*)?",
                    r"unrecognized arguments: -*(?P<name>[^\s=]+).*"):
        if m := re.fullmatch(unknown, reason):
            name = ".".join(filter(None, (m.groupdict().get("group"), m["name"])))
            return f"{name}: no such option{_did_you_mean(name, _option_names(parser), prefix='--')} {where}"
    if m := re.fullmatch(r"Expected a <class '(\w+)'>\. Got value: (.*)", reason):
        reason = f"expected {m[1]}, got {m[2]!r}"
    if not key:
        return reason
    return f"{key}: {reason}" + ("" if key == "config" else f" {where}")  # a missing config file names itself


def _innermost(text: str, keys: list[str], classes: list[str]) -> str:
    """The innermost reason of a nested message; appends the keys and class paths met on the way."""
    lines = [line for line in textwrap.dedent(text).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0].strip(), "\n".join(lines[1:])
    if m := re.fullmatch(r'Parser key "([^"]+)":\s*(.*)', head):
        keys.append(m[1])
        return _innermost("\n".join(filter(None, (m[2], textwrap.dedent(rest)))), keys, classes)
    if m := re.fullmatch(r"(?:- )?Problem with given class_path '([^']+)':", head):
        classes.append(m[1])
        keys.append("init_args")
        return _innermost(rest, keys, classes)
    items = _list_items(lines)
    if items:
        return _innermost(min(items, key=_rank), keys, classes)
    joined = " ".join(line.strip() for line in lines)
    if m := re.fullmatch(r"Type .+? expects a function or a callable class: (.*?)\. Got value: (.*)", joined):
        owner = re.search(r"class_path='([^']+)'", m[2])
        classes.append(owner[1] if owner else m[2].strip())
        if owner:
            keys.append("init_args")
        return _innermost(m[1], keys, classes)
    return joined


def _list_items(lines: list[str]) -> list[str]:
    """The ``- `` entries of a list of alternatives (a Union's errors), each with its indented lines."""
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- ")]
    if not starts:
        return []
    indent = min(len(lines[i]) - len(lines[i].lstrip()) for i in starts)
    items: list[list[str]] = []
    inside = False  # within an entry; a line back at the list's depth (`Given value: ...`) ends it
    for line in lines:
        depth = len(line) - len(line.lstrip())
        if depth == indent and line.lstrip().startswith("- "):
            items.append([line.lstrip()[2:]])
            inside = True
        elif depth > indent and inside:
            items[-1].append(line)
        else:
            inside = False
    return [item[0] + ("\n" + textwrap.dedent("\n".join(item[1:])) if item[1:] else "") for item in items]


def _rank(item: str) -> int:
    """Which alternative explains a failed Union best: a class path's problem, not ``Expected NoneType``."""
    if item.startswith("Problem with given class_path"):
        return 0
    for rank, start in enumerate(("Expected a path but", "Not a valid subclass", "Expected a <class 'NoneType'>"), 7):
        if item.startswith(start):
            return rank
    return 5


def _strip_subcommand(key: str, parser) -> str:
    """``fit.data.source`` -> ``data.source``: options are typed without the subcommand."""
    root = getattr(parser, "parent_parser", None) or parser
    head, _, tail = key.partition(".")
    action = getattr(root, "_subcommands_action", None)
    return tail if tail and action is not None and head in action.choices else key


def _did_you_mean(name: str, options, prefix: str = "", quote: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.75)
    return f" (did you mean {quote}{prefix}{close[0]}{quote}?)" if close else ""


def _did_you_mean_import(path: str) -> str:
    module, _, name = path.rpartition(".")
    try:
        names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
    except ImportError:
        return ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" (did you mean {module}.{close[0]}?)" if close else ""


def _parameters(path: str) -> list[str]:
    """The constructor arguments of the class at ``path`` (following ``**kwargs`` up its bases)."""
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(obj) if inspect.isclass(obj) else (obj,):
        try:
            params = inspect.signature(klass.__init__ if inspect.isclass(klass) else klass).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _option_names(parser) -> set[str]:
    names = {option.lstrip("-") for option in parser._option_string_actions}
    action = getattr(parser, "_subcommands_action", None)
    for sub in (action._name_parser_map.values() if action is not None else ()):
        names |= _option_names(sub)
    return names


# ----------------------------------------------------------------------------------- checkpoints

def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it can.

    Reads the zip directory and the pickled structure only (``mmap=True`` maps the tensors without
    reading them), so a truncated file, the usual wreck of a run killed while saving, is found in
    milliseconds whatever the checkpoint's size.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"it links to {os.readlink(path)}, which does not exist"
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        first = re.split(r"(?<=\.)\s", str(exc).strip(), maxsplit=1)[0].rstrip(".")  # torch appends advice
        return f"truncated or corrupted: {type(exc).__name__}: {first or 'no message'}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def checkpoint_dir(trainer) -> Path | None:
    """Where the run's ModelCheckpoint writes (None when the config saves no checkpoints)."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    return Path(callback.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints"))


def resume_checkpoint(trainer, using: str = "resuming from") -> Path | None:
    """The newest readable checkpoint of the run (None when there is none).

    Every ``*.ckpt`` of the checkpoint folder is a candidate, newest first; a link (``save_last:
    link``) counts as the file it points to. A broken checkpoint newer than the one returned is
    renamed ``<name>.broken``, with the links to it (nothing is deleted, nothing outside the folder
    is touched), and a warning names it, so the next resume does not trip on it again. When none
    can be read nothing is renamed, and the error names each file. ``using`` words the warning.
    """
    dirpath = checkpoint_dir(trainer)
    if dirpath is None or not dirpath.is_dir():
        return None
    files: dict[Path, list[Path]] = {}  # a checkpoint file -> its names in the folder, links first
    for name in sorted(dirpath.glob("*.ckpt"), key=lambda p: not p.is_symlink()):
        files.setdefault(name.resolve() if name.exists() else name, []).append(name)
    broken: list[tuple[list[Path], str]] = []
    for file in sorted(files, key=lambda f: (f.stat() if f.exists() else os.lstat(f)).st_mtime, reverse=True):
        problem = checkpoint_problem(file)
        if problem is None:
            good = files[file][-1]  # the file's own name when it lives in the folder
            for names, why in broken:
                _set_aside(names, why, f"{using} the previous checkpoint {good}")
            return good
        broken.append((files[file], problem))
    if broken:
        listing = "\n".join(f"  {', '.join(map(str, names))}: {why}" for names, why in broken)
        raise SystemExit(f"error: no checkpoint in {dirpath} can be read:\n{listing}\n"
                         "delete them to start this stage over (or put a good copy back)")
    return None


def _set_aside(names: list[Path], problem: str, instead: str) -> None:
    moved = []
    for name in reversed(names):  # the file itself first, then the links to it
        target, n = name.with_name(name.name + ".broken"), 1
        while target.exists() or target.is_symlink():
            target, n = name.with_name(f"{name.name}.broken.{n}"), n + 1
        try:
            os.rename(name, target)
        except FileNotFoundError:  # another rank of the same run set it aside first
            continue
        moved.append(f"{name.name} -> {target.name}")
    warnings.warn(f"checkpoint {names[-1]} is broken, {problem}; renamed {', '.join(moved) or 'it'} (nothing "
                  f"deleted); {instead}", stacklevel=3)


# ------------------------------------------------------------------------------------------ CLI

def _config_files(argv) -> tuple[str, ...]:
    if not isinstance(argv, (list, tuple)):
        return ()
    files = [str(value) for flag, value in itertools.pairwise(argv) if flag in ("-c", "--config")]
    return tuple(files + [a.split("=", 1)[1] for a in argv if isinstance(a, str) and a.startswith("--config=")])


class TSGFCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Linked targets are neither user-settable nor printed by --print_config; `data_spec` (a DataSpec, not a
        # plain type) stays out of the modules' saved hyper-parameters (tsgf_lightning.data.spec).
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.spec", "model.init_args.data_spec", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Parse as LightningCLI does, naming the config files in errors and refusing a broken ``--ckpt_path``.

        LightningCLI reads an explicit ``--ckpt_path`` file right after parsing (for its
        hyper-parameters); a damaged one would fail there with torch's message, which names no file.
        """
        sources = _config_files(sys.argv[1:] if args is None else args)
        for p in (parser, *getattr(self, "_subcommand_parsers", {}).values()):
            p.sources = sources
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        explicit = ckpt_path and ckpt_path not in ("last", "best", "hpc") and Path(ckpt_path).is_file()
        if explicit and (problem := checkpoint_problem(Path(ckpt_path))):
            raise SystemExit(f"error: --ckpt_path {ckpt_path}: cannot read this checkpoint ({problem}); pass "
                             "another one, or `--ckpt_path last` to resume from the newest readable one")

    def before_fit(self) -> None:
        self._resolve_last("fit")

    def before_validate(self) -> None:
        self._resolve_last("validate")

    def before_test(self) -> None:
        self._resolve_last("test")

    def _resolve_last(self, subcommand: str) -> None:
        """``--ckpt_path last`` -> the newest readable checkpoint (see :func:`resume_checkpoint`).

        With none, ``fit`` starts from scratch (a resume command can be given before the first
        run), but ``validate`` and ``test`` stop: Lightning would score a randomly initialised
        network and exit 0.
        """
        if self.config_init[subcommand].get("ckpt_path") != "last":
            return
        path = resume_checkpoint(self.trainer, {"fit": "resuming from", "validate": "validating",
                                                "test": "testing"}[subcommand])
        if path is not None:
            self.config[subcommand].ckpt_path = self.config_init[subcommand].ckpt_path = str(path)
        elif subcommand != "fit":
            dirpath = checkpoint_dir(self.trainer)
            searched = (f"no checkpoint in {dirpath}" if dirpath is not None
                        else "this config saves no checkpoints (no ModelCheckpoint), so there is no last one")
            raise SystemExit(f"error: {subcommand} --ckpt_path last: {searched}; train first (fit with the same "
                             "config and overrides) or pass --ckpt_path PATH")


def main(args: list[str] | None = None, run: bool = True) -> TSGFCLI:
    """Build the CLI (tests pass ``args``; ``run=False`` builds without running a subcommand)."""
    return TSGFCLI(L.LightningModule, VideoDataModule, subclass_mode_model=True, parser_class=TSGFParser,
                   parser_kwargs={"allow_abbrev": False, "description": DESCRIPTION},
                   save_config_kwargs={"overwrite": True}, args=args, run=run)
