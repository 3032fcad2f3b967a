"""What determines a stage's output, so that a rerun never reports a number another input produced.

A stage's fingerprint is

- ``config``: its resolved LightningCLI config (the YAML files, the pipeline's overrides and every
  default, as ``--print_config`` resolves them), flattened to dotted keys, less :data:`IGNORED_KEYS`;
- ``inputs``: content hashes of what it reads: the teacher checkpoint (``teacher``), the distilled
  set (``distilled``), MTT's expert trajectories (``experts``: every file of every folder, in order)
  and the decoded data (``data``: the decode-cache key of each split, which hashes
  the source, the file list with each file's content digest, and the clip geometry);
- ``digest``: a SHA-256 of both, of which results show the first 12 hex digits.

Paths of inputs are left out of ``config`` because their contents are in ``inputs`` (an output dir
moved elsewhere is still the same stage); output locations and settings that change speed or
logging but not the result are left out too, so that, say, more DataLoader workers do not rerun a
finished table.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Keys of the resolved config that do not determine a stage's result. The input paths are
#: replaced by their contents' hashes; the rest are output locations, logging and speed knobs.
IGNORED_KEYS = (
    "model.init_args.teacher_ckpt", "data.distilled_path", "model.init_args.experts",
    "trainer.logger", "trainer.default_root_dir", "model.init_args.export_dir",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "model.init_args.image_every_n_steps", "data.num_workers", "data.decode_workers", "data.cache_dir",
)


class ConfigResolveError(ValueError):
    """A stage's arguments do not parse; ``text`` is the parser's message from ``error:`` on."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def resolve_config(configs: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> dict:
    """The stage config as LightningCLI resolves it (files, overrides, defaults), parsed, never instantiated.

    ``configs`` (one file or several) are composed in order, as repeated ``--config`` compose them
    (later files win, key by key), so a composition resolves to exactly what one file holding the
    same values does, and has the same fingerprint.

    Raises:
        ConfigResolveError: the arguments do not parse (the parser's message, from ``error:`` on).
    """
    import yaml

    from .cli import main as cli_main

    files = [configs] if isinstance(configs, (str, Path)) else list(configs)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # sys.argv is ours
            cli_main([arg for f in files for arg in ("--config", str(f))] + [*overrides, "--print_config"], run=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            text = err.getvalue()
            raise ConfigResolveError((text[text.find("error:"):] if "error:" in text else text[-2000:]).strip()) \
                from None
    resolved = yaml.safe_load(out.getvalue()) or {}
    resolved.pop("config", None)
    return resolved


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


_FILE_HASHES: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (links followed), memoised per (path, size, mtime) within a process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        from .data.digests import sha256_file

        _FILE_HASHES[key] = sha256_file(p)
    return _FILE_HASHES[key]


def experts_digest(experts: str | list[str]) -> str:
    """SHA-256 over the expert trajectories' files (folder order, then file name, then contents).

    Raises:
        FileNotFoundError: a named folder is missing, or nothing matches (:func:`expand_experts`).
    """
    from .modules.experts import expand_experts

    h = hashlib.sha256()
    for i, folder in enumerate(expand_experts(experts)):
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            h.update(f"{i}|{f.name}|{file_digest(f)}\n".encode())
    return h.hexdigest()


_DATA_KEYS: dict[str, dict] = {}
#: The DataModule arguments that decide which videos are decoded and how (the rest choose what is served).
_DATA_IDENTITY = ("source", "frames", "size", "resize", "sampling", "gap", "train_clips_per_video", "val_fraction",
                  "val_seed")


def data_key(data_config: dict) -> dict:
    """``{split: decode-cache file name}`` for the splits a DataModule with ``data_config`` reads.

    The name carries a hash of the source, the file list (contents) and the clip geometry
    (:func:`~tsgf_lightning.data.cache.cache_file`): a replaced video or a changed geometry changes it.
    Computing it lists the dataset and reads each file whose stat it has not seen
    (:mod:`~tsgf_lightning.data.digests`); nothing is decoded.
    """
    identity = {k: data_config.get(k) for k in _DATA_IDENTITY}
    memo = json.dumps(identity, sort_keys=True, default=str)
    if memo not in _DATA_KEYS:
        from jsonargparse import ArgumentParser

        from .data.cache import cache_file
        from .data.datamodule import VideoDataModule

        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(VideoDataModule, "data")
        args = {k: v for k, v in data_config.items() if k in _DATA_IDENTITY}
        dm = parser.instantiate(parser.parse_object({"data": args})).data
        items = dm.items_by_part()
        _DATA_KEYS[memo] = {part: cache_file(".", dm.source.cache_key(), part, items[part], dm.clip_spec(part)).name
                            for part in ("fit", "val", "test") if items[part]}
    return _DATA_KEYS[memo]


def fingerprint(resolved: dict) -> dict:
    """The stage's fingerprint (module docstring) from its resolved config.

    Raises:
        FileNotFoundError: an input the config names (teacher checkpoint, distilled set) is missing.
    """
    model = (resolved.get("model") or {}).get("init_args") or {}
    data = resolved.get("data") or {}
    inputs: dict[str, Any] = {}
    if model.get("teacher_ckpt"):
        inputs["teacher"] = file_digest(model["teacher_ckpt"])
    if data.get("train_set") == "distilled" and data.get("distilled_path"):
        inputs["distilled"] = file_digest(data["distilled_path"])
    if model.get("experts"):
        inputs["experts"] = experts_digest(model["experts"])
    if data.get("source"):
        inputs["data"] = data_key(data)
    config = {k: v for k, v in flatten({k: v for k, v in resolved.items() if k != "config"}).items()
              if not _ignored(k)}
    body = {"config": config, "inputs": inputs}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return {**body, "digest": digest}


INPUT_WORDS = {"teacher": "teacher checkpoint", "distilled": "distilled set", "experts": "expert trajectories",
               "data": "decoded data"}


def changes(old: dict | None, new: dict, limit: int = 6) -> list[str]:
    """What differs between a recorded fingerprint and the current one, for people: ``key: old -> new``."""
    if not old or "config" not in old:
        return ["no fingerprint recorded (made by an older version)"]
    out = []
    for name in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        if old.get("inputs", {}).get(name) != new["inputs"].get(name):
            out.append(f"{INPUT_WORDS.get(name, name)} changed")
    a, b = old["config"], new["config"]
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    out += [f"{k}: {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}" for k in keys[:limit]]
    if len(keys) > limit:
        out.append(f"and {len(keys) - limit} more key(s)")
    return out


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def short(digest: str | None) -> str:
    return (digest or "")[:12]
