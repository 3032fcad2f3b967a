"""Record a network's architecture as ``{"class_path": ..., "init_args": {...}}`` and rebuild it.

This is the shape of a LightningCLI ``class_path``/``init_args`` block, so a checkpoint can store
which network its weights belong to, in JSON types only (``weights_only=True`` loading accepts it).
"""

from __future__ import annotations

import copy
import importlib
import json
from typing import Any

from torch import nn

_PACKAGE = __name__.rpartition(".")[0]  # "tsgf_lightning.models"


def describe(module: nn.Module) -> dict[str, Any]:
    """The spec ``{"class_path": str, "init_args": dict}`` that rebuilds ``module``'s architecture.

    ``class_path`` is the short public path (``tsgf_lightning.models.MiniC3D``) when the class is
    exported by this package, else its defining module's path. ``init_args`` is a deep copy of the
    module's ``init_args`` attribute, which must survive a JSON round trip unchanged (no tuples,
    tensors, paths).

    Raises:
        ValueError: if ``module`` records no ``init_args`` dict or it is not plain JSON.
    """
    init_args = getattr(module, "init_args", None)
    if not isinstance(init_args, dict):
        raise ValueError(
            "Expected argument `module` to record its constructor arguments in `init_args` "
            f"but got {type(module).__name__}"
        )
    try:
        plain = json.loads(json.dumps(init_args)) == init_args
    except TypeError:
        plain = False
    if not plain:
        raise ValueError(
            f"Expected `init_args` of {type(module).__name__} to be plain JSON types but got {init_args}"
        )
    cls = type(module)
    package = importlib.import_module(_PACKAGE)
    if getattr(package, cls.__name__, None) is cls:
        class_path = f"{_PACKAGE}.{cls.__name__}"
    else:
        class_path = f"{cls.__module__}.{cls.__qualname__}"
    return {"class_path": class_path, "init_args": copy.deepcopy(init_args)}


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the network a :func:`describe` spec names (fresh weights; load a state dict after)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise ValueError(f"Expected argument `spec` to be a dict with a `class_path` string but got {spec}")
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec.get("init_args", {}))
