"""The ``distilled.pt`` format: a distilled set, and the checks made when it is read back.

Contents (all plain tensors / Python types, so ``torch.load(weights_only=True)`` reads it):

- ``videos``: ``float16 (N, C, T, H, W)`` in ``[0, 1]`` pixel space (not normalised);
- ``labels``: ``int64 (N,)``;
- ``class_names`` (list of str), ``ipc`` (int), ``frames`` (int), ``size`` (int),
  ``mean`` / ``std`` (the normalisation the teacher saw), ``method`` (str: ``tsgf``, ``random``, ...),
  ``teacher_sha256`` (hex digest of the teacher checkpoint, or ``""``), ``config`` (dict),
  ``factor`` (int, multi-formation: each video holds ``factor x factor`` clips at ``1/factor``
  resolution; absent = 1), ``format_version`` (int).

Synthesis exports add ``saturated_fraction`` and ``init_saturated_fraction`` (float: the share of
pixel values at 0 or 1 in the set and in its initialisation), ``init_paths`` and ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

FORMAT_VERSION = 1
REQUIRED_KEYS = ("videos", "labels", "class_names", "ipc", "frames", "size", "format_version")


class DistilledSetError(ValueError):
    """A distilled set is missing, unreadable, or does not match what the config expects."""


def _differing_positions(got: list[str], want: list[str], limit: int = 5) -> str:
    """``position i: 'a' in the set, 'b' in the data`` for the first ``limit`` differing positions."""
    diff = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    shown = "; ".join(f"position {i}: {got[i]!r} in the set, {want[i]!r} in the data" for i in diff[:limit])
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return shown + more


def load_distilled(path: str, class_names: Sequence[str] | None = None, frames: int | None = None,
                   size: int | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> dict:
    """Read and validate a distilled set against the data it is about to be used with.

    A set is only meaningful with the data it was distilled from: label ``i`` must name the same class
    (the student is tested on the real test split), and the pixels were optimised under one
    normalisation (a student normalising otherwise sees other inputs than the teacher did). Class
    count, frame count and size alone do not establish that: two datasets can share all three.

    Args:
        path: the ``distilled.pt`` file.
        class_names, frames, size, mean, std: what the data config says; None skips that check. A
            mismatch is an error naming both sides.

    Raises:
        DistilledSetError: missing or truncated file, missing keys, inconsistent shapes, other classes
            (count or names, in order), frame count, size or normalisation than expected, an empty set
            or class, an ``ipc`` below 1, or labels that do not give every class ``ipc`` videos.
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
    names = list(data["class_names"])
    checks = [("number of classes", len(names), None if class_names is None else len(class_names)),
              ("frames", videos.shape[2], frames), ("size", videos.shape[-1], size)]
    for what, got, want in checks:
        if want is not None and got != want:
            raise DistilledSetError(f"distilled set {path} has {what} = {got} but the data config expects {want}")
    if class_names is not None and names != list(class_names):
        raise DistilledSetError(f"distilled set {path} was distilled from other classes than the data's "
                                f"({_differing_positions(names, list(class_names))}): it belongs to another "
                                "dataset or class order; distil it again from this data")
    for what, want in (("mean", mean), ("std", std)):
        got = data.get(what)
        if want is not None and (got is None or len(got) != len(want)
                                 or not all(math.isclose(g, w, rel_tol=1e-6) for g, w in zip(got, want, strict=True))):
            raise DistilledSetError(f"distilled set {path} was distilled under normalisation {what} = {got} but the "
                                    f"data config says {list(want)}: set `data.mean`/`data.std` to the set's")
    if videos.shape[-2] != videos.shape[-1]:
        raise DistilledSetError(f"distilled set {path}: frames are {videos.shape[-2]}x{videos.shape[-1]}, not square")
    factor = data.get("factor", 1)
    if not isinstance(factor, int) or factor < 1 or videos.shape[-1] % factor:
        raise DistilledSetError(f"distilled set {path}: factor {factor!r} does not divide the size {videos.shape[-1]}")
    _check_labels(path, labels, names, data["ipc"])
    return data


def _check_labels(path: str, labels: Tensor, names: list[str], ipc) -> None:
    """Every class has exactly ``ipc >= 1`` videos: an empty class would train a student that never saw it."""
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise DistilledSetError(f"distilled set {path} records ipc = {ipc!r}; expected an integer >= 1 "
                                "(videos per class)")
    if len(labels) == 0:
        raise DistilledSetError(f"distilled set {path} holds no videos (ipc {ipc} x {len(names)} classes expected)")
    if labels.min() < 0 or labels.max() >= len(names):
        raise DistilledSetError(f"distilled set {path}: labels outside [0, {len(names)})")
    counts = torch.bincount(labels, minlength=len(names)).tolist()
    empty = [names[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DistilledSetError(f"distilled set {path} has no video of classes {empty[:10]} ({len(empty)} of "
                                f"{len(names)}): a student trained on it would never see them; export it again")
    other = {names[c]: n for c, n in enumerate(counts) if n != ipc}
    if other:
        shown = dict(list(other.items())[:10])
        raise DistilledSetError(f"distilled set {path} records ipc = {ipc} but its labels give {shown} videos to "
                                f"{len(other)} classes")
