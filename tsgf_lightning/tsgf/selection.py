"""Coreset selection on teacher features: herding, k-center, and teacher confidence (per class).

- Herding (Welling, 2009; the coreset baseline of the video-distillation tables): greedily add the
  sample that keeps the mean of the selected features closest to the class mean.
- k-center (Sener & Savarese, 2018): start from the sample nearest the class mean, then greedily
  add the sample farthest from everything selected (max-min Euclidean distance).
- Confidence: the samples the teacher gives the highest probability of their own class.

All functions take one class's samples and return indices into them, in selection order.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Selection = Literal["herding", "kcenter", "confident"]


def _check(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"Expected argument `k` to be in [1, {n}] (the class's sample count) but got {k}")


def herding(features: Tensor, k: int) -> Tensor:
    """Herding on ``features`` ``(n, D)``: ``k`` indices whose running mean tracks the class mean."""
    n = len(features)
    _check(n, k)
    f = features.double()
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for step in range(1, k + 1):
        # Mean of the selection if each candidate were added next.
        dist = ((total + f) / step - mu).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        total += f[i]
        available[i] = False
    return torch.tensor(chosen, dtype=torch.int64)


def kcenter(features: Tensor, k: int) -> Tensor:
    """Greedy k-center on ``features`` ``(n, D)``, seeded by the sample nearest the mean."""
    n = len(features)
    _check(n, k)
    f = features.double()
    first = int((f - f.mean(0)).norm(dim=1).argmin())
    chosen = [first]
    min_dist = (f - f[first]).norm(dim=1)
    for _ in range(k - 1):
        i = int(min_dist.argmax())
        chosen.append(i)
        min_dist = torch.minimum(min_dist, (f - f[i]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.int64)


def confident(logits: Tensor, label: int, k: int) -> Tensor:
    """The ``k`` samples with the highest teacher probability of class ``label`` (logits ``(n, K)``)."""
    _check(len(logits), k)
    return logits.log_softmax(1)[:, label].argsort(descending=True)[:k]


def check_clips_per_class(labels: Tensor, class_names: list[str], ipc: int, factor: int = 1) -> None:
    """Raise unless every class has the ``ipc * factor^2`` clips a set of ``ipc`` stored videos per class needs.

    With multi-formation each stored video packs ``factor x factor`` clips, so the requirement is
    ``factor^2`` times the IPC a user asked for; the message says so, naming the first short class.

    Args:
        labels: ``(N,)`` class of every candidate clip.
        class_names: names in label order.
    """
    for name, value in (("ipc", ipc), ("factor", factor)):
        if value < 1:
            raise ValueError(f"Expected argument `{name}` to be >= 1 but got {value}")
    need = ipc * factor * factor
    counts = torch.bincount(labels, minlength=len(class_names))
    for c, name in enumerate(class_names):
        if int(counts[c]) < need:
            raise ValueError(f"class {name!r} has {int(counts[c])} training videos, fewer than ipc={ipc} x factor^2 "
                             f"{factor * factor} = {need} clips needed (each stored video packs factor x factor "
                             "clips): lower `ipc` or `factor`")


def select_per_class(labels: Tensor, k: int, method: Selection, features: Tensor | None = None,
                     logits: Tensor | None = None) -> Tensor:
    """Run ``method`` within each class; returns indices (class-major, selection order within a class)."""
    out = []
    for c in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} samples, fewer than k={k}")
        if method == "herding":
            local = herding(features[members], k)
        elif method == "kcenter":
            local = kcenter(features[members], k)
        elif method == "confident":
            local = confident(logits[members], c, k)
        else:
            raise ValueError(f"Expected argument `method` to be 'herding', 'kcenter' or 'confident' but got {method!r}")
        out.append(members[local])
    return torch.cat(out)
