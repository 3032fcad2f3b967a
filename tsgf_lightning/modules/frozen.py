"""The frozen teacher that synthesis and students use, and the record that makes a checkpoint checkable.

A teacher checkpoint carries ``checkpoint["tsgf"]``: its architecture (``class_path`` and
``init_args``), class names, clip geometry and normalisation. :func:`load_teacher` compares that
record with what the loading stage's config says and refuses a mismatch with a message naming both
sides, instead of failing later on a shape error or silently distilling from the wrong network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models import build, describe


class FrozenTeacher(nn.Module):
    """A trained network kept in eval mode with no parameter gradients.

    Gradients still flow to the *input* (synthesis needs d loss / d video); callers that only need
    outputs wrap the call in ``torch.no_grad()``. ``train()`` is a no-op so that Lightning putting
    the parent module in training mode never switches BatchNorm to batch statistics.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        # Fix (tests/test_synthesis.py): the wrapper itself used to stay in training mode (only `net` was
        # put in eval), and Lightning 2.6 no longer calls `train()` at fit start to correct it.
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def forward(self, video: Tensor) -> Tensor:
        return self.net(video)


def checkpoint_record(module, stage: str) -> dict:
    """The ``tsgf`` record saved in a checkpoint (plain types only: checkpoints load with weights_only)."""
    record = {"stage": stage, "arch": module.architecture(), "num_classes": int(module.num_classes)}
    dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is not None and hasattr(dm, "class_names"):
        record.update(class_names=list(dm.class_names), frames=int(dm.frames), size=int(dm.size),
                      mean=[float(v) for v in dm.mean], std=[float(v) for v in dm.std])
    return record


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(path: str, num_classes: int, backbone=None, class_names: list[str] | None = None,
                 frames: int | None = None, size: int | None = None) -> tuple[FrozenTeacher, dict]:
    """Rebuild and freeze the teacher of a TeacherModule checkpoint.

    Args:
        path: the teacher checkpoint (``.ckpt`` written by TeacherModule).
        num_classes: classes of the data the caller will use.
        backbone: the teacher architecture the caller's config names (callable taking ``num_classes``);
            None = trust the checkpoint's record.
        class_names, frames, size: what the caller's data says; None skips that check.

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
    if class_names is not None and record.get("class_names") not in (None, list(class_names)):
        diff = sorted(set(record["class_names"]) ^ set(class_names))[:5]
        raise ValueError(f"teacher checkpoint {path} was trained on other classes than the data's "
                         f"(differing: {diff})")
    for what, want in (("frames", frames), ("size", size)):
        if want is not None and record.get(what) not in (None, want):
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


def drop_teacher_weights(checkpoint: dict, prefix: str = "teacher.") -> None:
    """Leave the frozen teacher out of a checkpoint's state dict (it is reloaded from ``teacher_ckpt``)."""
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefix)}


def restore_teacher_weights(checkpoint: dict, teacher: nn.Module, prefix: str = "teacher.") -> None:
    """Put the already-loaded teacher back into a checkpoint's state dict so strict loading succeeds."""
    checkpoint["state_dict"] = {**checkpoint["state_dict"],
                                **{prefix + k: v for k, v in teacher.state_dict().items()}}
