"""The ``distilled.pt`` format: a distilled set, and the checks made when it is read back.

Contents (all plain tensors / Python types, so ``torch.load(weights_only=True)`` reads it):

- ``videos``: ``float16 (N, C, T, H, W)`` in ``[0, 1]`` pixel space (not normalised);
- ``labels``: ``int64 (N,)``;
- ``class_names`` (list of str), ``ipc`` (int), ``frames`` (int), ``size`` (int),
  ``mean`` / ``std`` (the normalisation the teacher saw), ``method`` (str: ``tsgf``, ``random``, ...),
  ``teacher_sha256`` (hex digest of the teacher checkpoint, or ``""``), ``config`` (dict),
  ``factor`` (int, multi-formation: each video holds ``factor x factor`` clips at ``1/factor``
  resolution; absent = 1), ``format_version`` (int).
"""

from __future__ import annotations

from pathlib import Path

import torch

FORMAT_VERSION = 1
REQUIRED_KEYS = ("videos", "labels", "class_names", "ipc", "frames", "size", "format_version")


class DistilledSetError(ValueError):
    """A distilled set is missing, unreadable, or does not match what the config expects."""


def load_distilled(path: str, num_classes: int | None = None, frames: int | None = None,
                   size: int | None = None) -> dict:
    """Read and validate a distilled set.

    Args:
        path: the ``distilled.pt`` file.
        num_classes, frames, size: what the data config says; a mismatch is an error naming both.

    Raises:
        DistilledSetError: missing or truncated file, missing keys, inconsistent shapes, or a
            class count / frame count / size other than expected.
    """
    p = Path(path)
    if not p.is_file():
        raise DistilledSetError(f"distilled set {path} does not exist (run the synthesis stage first?)")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, ...
        raise DistilledSetError(f"distilled set {path} cannot be read ({type(err).__name__}: {err}); "
                                "it may be truncated: export it again") from err
    if not isinstance(data, dict):
        raise DistilledSetError(f"distilled set {path} holds a {type(data).__name__}, expected a dict")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DistilledSetError(f"distilled set {path} lacks keys {missing}")
    videos, labels = data["videos"], data["labels"]
    if videos.dim() != 5 or labels.dim() != 1 or len(videos) != len(labels):
        raise DistilledSetError(f"distilled set {path}: expected videos (N, C, T, H, W) and labels (N,), got "
                                f"{tuple(videos.shape)} and {tuple(labels.shape)}")
    n_cls = len(data["class_names"])
    checks = [("number of classes", n_cls, num_classes), ("frames", videos.shape[2], frames),
              ("size", videos.shape[-1], size)]
    for what, got, want in checks:
        if want is not None and got != want:
            raise DistilledSetError(f"distilled set {path} has {what} = {got} but the data config expects {want}")
    if videos.shape[-2] != videos.shape[-1]:
        raise DistilledSetError(f"distilled set {path}: frames are {videos.shape[-2]}x{videos.shape[-1]}, not square")
    factor = data.get("factor", 1)
    if not isinstance(factor, int) or factor < 1 or videos.shape[-1] % factor:
        raise DistilledSetError(f"distilled set {path}: factor {factor!r} does not divide the size {videos.shape[-1]}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
        raise DistilledSetError(f"distilled set {path}: labels outside [0, {n_cls})")
    return data
