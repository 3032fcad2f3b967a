"""The frozen teacher that synthesis and students use, and the record that makes a checkpoint checkable.

A teacher checkpoint carries ``checkpoint["tsgf"]``: its architecture (``class_path`` and
``init_args``), class names, clip geometry and normalisation. :func:`load_teacher` compares that
record with what the loading stage's config says and refuses a mismatch with a message naming both
sides, instead of failing later on a shape error or silently distilling from the wrong network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from ..data.spec import DataSpec
from ..models import build, describe


class FrozenTeacher:
    """A trained network in eval mode with no parameter gradients, held outside the LightningModule's tree.

    Not an ``nn.Module``: a LightningModule attribute holding it registers nothing, so the teacher is
    in neither ``state_dict()`` (checkpoints hold no copy of it; it is reloaded from ``teacher_ckpt``),
    ``parameters()`` (no optimiser or DDP wrapper sees it) nor ``modules()`` (Lightning's ``train()``
    never reaches it, so BatchNorm never switches to batch statistics). Gradients still flow to the
    *input* (synthesis needs d loss / d video); callers that only need outputs use ``torch.no_grad()``.
    ``module.to()`` does not move it either: the holding module calls :meth:`follow` once Lightning
    has placed the module (``on_fit_start``: this rank's device, the precision plugin's dtype).
    """

    def __init__(self, net: nn.Module):
        self.net = net.eval().requires_grad_(False)

    def __call__(self, video: Tensor) -> Tensor:
        return self.net(video)

    def to(self, *args, **kwargs) -> FrozenTeacher:
        """Move or cast the network as ``nn.Module.to`` does; returns the holder."""
        self.net.to(*args, **kwargs)
        return self

    def follow(self, module: L.LightningModule) -> FrozenTeacher:
        """Put the network on ``module``'s ``device`` and floating ``dtype`` (the holder, after Lightning placed it)."""
        return self.to(device=module.device, dtype=module.dtype)


def checkpoint_record(stage: str, arch: dict, num_classes: int, spec: DataSpec | None) -> dict:
    """The ``tsgf`` record saved in a checkpoint (plain types only: checkpoints load with weights_only).

    ``spec`` (class names, geometry, normalisation) is what later stages check the checkpoint
    against; None (a module fitted without a DataModule or a spec) records none of it.
    """
    return {"stage": stage, "arch": arch, "num_classes": int(num_classes), **(spec.record() if spec else {})}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(path: str, num_classes: int, backbone=None,
                 spec: DataSpec | None = None) -> tuple[FrozenTeacher, dict]:
    """Rebuild and freeze the teacher of a TeacherModule checkpoint (on the CPU).

    Args:
        path: the teacher checkpoint (``.ckpt`` written by TeacherModule).
        num_classes: classes of the data the caller will use.
        backbone: the teacher architecture the caller's config names (callable taking ``num_classes``);
            None = trust the checkpoint's record.
        spec: what the caller's data says (class names, frames, size are checked); None skips those checks.

    Returns:
        The frozen teacher and the checkpoint's ``tsgf`` record (plus ``sha256`` of the file).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a teacher checkpoint, or a class count / class names / clip geometry /
            architecture other than expected (the message names both sides).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist (train the teacher first?)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"teacher checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    record = ckpt.get("tsgf") if isinstance(ckpt, dict) else None
    if record is None or record.get("stage") != "teacher":
        got = "no tsgf record" if record is None else f"a {record.get('stage')!r} checkpoint"
        raise ValueError(f"{path} is not a TeacherModule checkpoint ({got})")
    if record["num_classes"] != num_classes:
        raise ValueError(f"teacher checkpoint {path} was trained on {record['num_classes']} classes but the data "
                         f"has {num_classes}")
    if spec is not None and record.get("class_names") not in (None, list(spec.class_names)):
        diff = sorted(set(record["class_names"]) ^ set(spec.class_names))[:5]
        raise ValueError(f"teacher checkpoint {path} was trained on other classes than the data's "
                         f"(differing: {diff})")
    wants = (("frames", spec.frames), ("size", spec.size), ("mean", list(spec.mean)), ("std", list(spec.std))) \
        if spec is not None else ()
    for what, want in wants:  # a teacher fed other normalisation would label and select from shifted inputs
        if record.get(what) not in (None, want):
            raise ValueError(f"teacher checkpoint {path} was trained on clips with {what} = {record[what]} but the "
                             f"data config says {want}")
    if backbone is not None:
        net = backbone(num_classes)
        if describe(net) != record["arch"]:
            raise ValueError(f"teacher checkpoint {path} holds {_fmt(record['arch'])} but the config names "
                             f"{_fmt(describe(net))}")
    else:
        net = build({**record["arch"], "init_args": {**record["arch"]["init_args"], "num_classes": num_classes}})
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"teacher checkpoint {path} does not fit {_fmt(record['arch'])}: {err}") from err
    record = dict(record, sha256=file_sha256(str(p)), path=str(p))
    return FrozenTeacher(net), record


def _fmt(arch: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in arch["init_args"].items())
    return f"{arch['class_path']}({args})"
