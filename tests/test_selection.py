"""Coreset selection (herding, k-center, confidence) against naive implementations."""

import itertools

import pytest
import torch

from tsgf_lightning.tsgf.selection import confident, herding, kcenter, select_per_class


def naive_herding(f, k):
    mu, chosen = f.mean(0), []
    for _ in range(k):
        best, best_d = None, float("inf")
        for i in range(len(f)):
            if i in chosen:
                continue
            d = float((f[chosen + [i]].mean(0) - mu).norm())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def naive_kcenter(f, k):
    chosen = [min(range(len(f)), key=lambda i: float((f[i] - f.mean(0)).norm()))]
    while len(chosen) < k:
        chosen.append(max(range(len(f)), key=lambda i: min(float((f[i] - f[j]).norm()) for j in chosen)))
    return chosen


@pytest.mark.parametrize("seed,k", itertools.product(range(4), [1, 3, 6]))
def test_herding_and_kcenter_match_naive(seed, k):
    f = torch.randn(12, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert herding(f, k).tolist() == naive_herding(f, k)
    assert kcenter(f, k).tolist() == naive_kcenter(f, k)


def test_herding_mean_tracks_the_class_mean_better_than_random():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 8, generator=g, dtype=torch.float64)
    err = (f[herding(f, 5)].mean(0) - f.mean(0)).norm()
    random_errs = [(f[torch.randperm(200, generator=g)[:5]].mean(0) - f.mean(0)).norm() for _ in range(50)]
    assert err < min(random_errs)


def test_confident_picks_highest_true_class_probability():
    logits = torch.tensor([[0.0, 1.0], [3.0, 0.0], [1.0, 1.0], [5.0, -5.0]])
    assert confident(logits, 0, 2).tolist() == [3, 1]


def test_select_per_class_stays_within_each_class_and_checks_k():
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    feats = torch.randn(6, 3)
    idx = select_per_class(labels, 2, "herding", features=feats)
    assert labels[idx].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="fewer than k"):
        select_per_class(labels, 4, "kcenter", features=feats)
    with pytest.raises(ValueError, match="method"):
        select_per_class(labels, 1, "nope", features=feats)
