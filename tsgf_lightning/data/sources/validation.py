"""A validation carve-out of the training items that never splits a source recording."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import VideoItem


def validation_split(items: Sequence[VideoItem], fraction: float, seed: int) -> tuple[list[VideoItem], list[VideoItem]]:
    """Split training items into (train, validation) by whole groups, stratified by class.

    Clips of one recording (a UCF101 ``gXX`` group, an HMDB51 film) look alike; if they fell on both
    sides, validation accuracy would measure recognition of the recording rather than of the action
    and pick hyper-parameters badly. So each group goes entirely to one side.

    For each class (in label order) with ``n`` groups, ``round(fraction * n)`` of its groups, clipped
    to ``[1, n - 1]`` when ``n >= 2`` (and 0 when ``n == 1``), go to validation; the groups are drawn
    with ``torch.randperm`` from one generator seeded with ``seed``. A group that spans several
    classes (an HMDB51 film with clips of several actions) is decided by the first of its classes and
    counted as decided in the others, so the per-class count is then approximate; the one-group-per-
    side guarantee holds whenever a class has at least one group of its own to place.

    Args:
        items: training items (any order; output keeps it).
        fraction: share of each class's groups to hold out, in (0, 1).
        seed: seed of the draw; equal inputs and seeds give equal outputs.

    Returns:
        ``(train, validation)``, disjoint, together exactly ``items``, each in input order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected argument `fraction` to be in (0, 1) but got {fraction}")
    if not items:
        raise ValueError("Expected argument `items` to hold at least one item but got an empty list")
    groups_of: dict[int, set[str]] = {}
    for item in items:
        groups_of.setdefault(item.label, set()).add(item.group)
    generator = torch.Generator().manual_seed(seed)
    to_val: dict[str, bool] = {}
    for label in sorted(groups_of):
        groups = sorted(groups_of[label])
        n = len(groups)
        target = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        free = [g for g in groups if g not in to_val]
        val_decided = sum(to_val[g] for g in groups if g in to_val)
        # target <= n - 1 leaves a free group for train when none is decided there, and target >= 1
        # gives validation one when none is decided there: no further adjustment is needed.
        want = min(max(target - val_decided, 0), len(free))
        order = torch.randperm(len(free), generator=generator).tolist()
        for rank, index in enumerate(order):
            to_val[free[index]] = rank < want
    train = [item for item in items if not to_val[item.group]]
    val = [item for item in items if to_val[item.group]]
    return train, val
