"""Which keys of a resolved config are new options left at their code default.

A stage's fingerprint hashes its whole resolved config, defaults included, so a change of any
default reruns the stages it reaches. A new option added to a class changes the resolved config
too, although a run recorded before the option existed ran exactly what the option's default does
(the convention every option here follows: a new option defaults to the old behaviour). Without
care, adding an option for an experiment would make every finished stage stale.
:func:`new_at_default` lets :mod:`~tsgf_lightning.freshness` keep those stages: the only
differences between the recorded and the current config are keys the record lacks whose current
value is the default in the signature of the class that takes them. A key that changed value, was
removed, or is new with a non-default value still makes the stage stale.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

#: Classes taking the keys of a section that has no ``class_path`` of its own.
SECTION_CLASSES = {"data": "tsgf_lightning.data.datamodule.VideoDataModule", "trainer": "lightning.pytorch.Trainer"}
_MISSING = object()


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def code_default(resolved: dict, key: str) -> Any:
    """The default of the parameter a dotted ``key`` sets, from its class's signature (``_MISSING`` if none).

    ``model.init_args.mask_floor`` -> the ``mask_floor`` default of ``resolved["model"]["class_path"]``;
    ``data.source.init_args.fold`` -> the source class's; ``data.frames`` -> VideoDataModule's;
    ``trainer.x`` -> Trainer's. Keys nested below a parameter (a dict-valued parameter) have none.
    """
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in SECTION_CLASSES:
        owner, name = SECTION_CLASSES[parts[0]], parts[1]
    elif len(parts) >= 3 and parts[-2] == "init_args":
        node: Any = resolved
        for part in parts[:-2]:
            node = node.get(part) if isinstance(node, dict) else None
        owner = node.get("class_path") if isinstance(node, dict) else None
        if not isinstance(owner, str):
            return _MISSING
        name = parts[-1]
    else:
        return _MISSING
    try:
        parameter = inspect.signature(_import(owner)).parameters.get(name)
    except (ImportError, AttributeError, ValueError, TypeError):
        return _MISSING
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _MISSING
    return parameter.default


def _same(a: Any, b: Any) -> bool:
    """Equal as the resolved config writes them (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def new_at_default(old: dict, new: dict, resolved: dict) -> list[str] | None:
    """The keys by which flattened config ``new`` differs from ``old``, if every one is new and at its default.

    Returns:
        The sorted new keys (empty if the configs are equal), or None when some difference is a
        changed value, a removed key, or a new key away from its code default.
    """
    keys = sorted(k for k in old.keys() | new.keys() if k not in old or k not in new or not _same(old[k], new[k]))
    for key in keys:
        if key in old:
            return None
        default = code_default(resolved, key)
        if default is _MISSING or not _same(default, new[key]):
            return None
    return keys
