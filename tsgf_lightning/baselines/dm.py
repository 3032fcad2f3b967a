"""Distribution matching (DM, Zhao & Bilen 2023) as the published video code runs it.

Each iteration a freshly initialised network, frozen, embeds real clips of every class and the
class's synthetic videos; the loss is the sum over classes of the squared Euclidean distance
between the two mean embeddings (penultimate features)::

    L = sum_c || mean_{x in R_c} f(x) - mean_{s in S_c} f(s) ||_2^2

Only the synthetic videos receive gradients (the network is frozen, the real clips are data).
"""

from __future__ import annotations

import torch
from torch import Tensor


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class mean of ``features (N, D)`` by ``labels (N,)``: ``(num_classes, D)``.

    Raises:
        ValueError: a class in ``range(num_classes)`` has no sample (its mean is undefined).
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes or bool((counts == 0).any()):
        empty = torch.nonzero(counts[:num_classes] == 0).flatten().tolist()
        raise ValueError(f"Expected every class in 0..{num_classes - 1} to have a sample but classes {empty} "
                         f"have none (labels range {int(labels.min())}..{int(labels.max())})")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, labels, features)
    return sums / counts.to(features.dtype)[:, None]


def dm_loss(real_features: Tensor, real_labels: Tensor, syn_features: Tensor, syn_labels: Tensor,
            num_classes: int) -> Tensor:
    """``sum_c ||mean real_c - mean syn_c||^2`` over the classes present in both (every class must be).

    Args:
        real_features, syn_features: embeddings ``(N, D)`` / ``(M, D)`` of the same frozen network.
        real_labels, syn_labels: their classes ``(N,)`` / ``(M,)``.
    """
    diff = class_means(real_features, real_labels, num_classes) - class_means(syn_features, syn_labels, num_classes)
    return (diff ** 2).sum()
