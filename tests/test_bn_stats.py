"""BN-statistics matching (Eq. 5) against a naive per-layer computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsgf_lightning.tsgf.bn_stats import BNStatistics


def _randomise_running_stats(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def model_3d() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 5, 1), nn.BatchNorm3d(5)
    )
    _randomise_running_stats(model, 1)
    return model.eval()


def model_2d() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        nn.BatchNorm1d(6),  # a 2-D (B, C) input: reduced over the batch axis only
    )
    _randomise_running_stats(model, 2)
    return model.eval()


def naive_stats(model: nn.Sequential, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Walk the Sequential by hand; for each BN: (mean, biased var, RM, RV) of its input."""
    out = []
    for layer in model:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            dims = [0, *range(2, x.dim())]
            rm, rv = layer.running_mean.clone(), layer.running_var.clone()
            out.append((x.mean(dim=dims), x.var(dim=dims, unbiased=False), rm, rv))
        x = layer(x)
    return out


def naive_loss(model: nn.Sequential, x: torch.Tensor, first: float) -> torch.Tensor:
    total = torch.zeros(())
    for i, (mu, var, rm, rv) in enumerate(naive_stats(model, x)):
        w = first if i == 0 else 1.0
        total = total + w * (torch.norm(mu - rm, p=2) + torch.norm(var - rv, p=2))
    return total


@pytest.mark.parametrize(("make", "shape"), [(model_3d, (4, 3, 5, 6, 6)), (model_2d, (8, 3, 5, 5))])
@pytest.mark.parametrize("first", [1.0, 10.0])
def test_matches_naive_and_gradient_flows(make, shape, first: float) -> None:
    model = make()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 2 + 0.7
    x.requires_grad_(True)
    with BNStatistics(model) as bn:
        model(x)
        loss = bn.loss(first_multiplier=first)
    bn_names = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bn.layer_names == bn_names
    for (mu, var), (nmu, nvar, _, _) in zip(bn.statistics, naive_stats(model, x), strict=True):
        torch.testing.assert_close(mu, nmu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(var, nvar, rtol=1e-5, atol=1e-5)
    expected = naive_loss(model, x, first)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(loss, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_running_stats_are_read_before_a_training_forward_updates_them() -> None:
    model = model_3d().train()
    x = torch.randn(4, 3, 4, 6, 6)
    # A train-mode twin; naive_stats clones each layer's running stats before calling it.
    expected = naive_loss(model_3d().train(), x, 1.0)
    with BNStatistics(model) as bn:
        model(x)
    assert not torch.equal(model[1].running_mean, model_3d()[1].running_mean)  # the forward did update them
    torch.testing.assert_close(bn.loss(), expected, rtol=1e-5, atol=1e-5)


def test_shifted_moments_survive_a_large_mean() -> None:
    """Mean 1000, std 1 in float32: E[x^2] - E[x]^2 unshifted would lose the variance entirely."""
    bn_layer = nn.BatchNorm3d(2).eval()
    bn_layer.running_mean.fill_(1000.0)
    x = 1000.0 + torch.randn(8, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with BNStatistics(bn_layer) as bn:
        bn_layer(x)
    (mu, var), = bn.statistics
    x64 = x.double()
    torch.testing.assert_close(var.double(), x64.var(dim=(0, 2, 3, 4), unbiased=False), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mu.double(), x64.mean(dim=(0, 2, 3, 4)), rtol=1e-6, atol=1e-4)
    naive = (x.pow(2).mean(dim=(0, 2, 3, 4)) - x.mean(dim=(0, 2, 3, 4)).pow(2)).double()
    assert (naive - x64.var(dim=(0, 2, 3, 4), unbiased=False)).abs().max() > 1e-2  # why we shift


def test_reduce_doubling_is_two_identical_ranks() -> None:
    model = model_3d()
    x = torch.randn(2, 3, 4, 6, 6)
    with BNStatistics(model) as plain:
        model(x)
    with BNStatistics(model, reduce=lambda t: 2 * t) as doubled:
        model(x)
    for (a, b), (c, d) in zip(plain.statistics, doubled.statistics, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, d)
    torch.testing.assert_close(plain.loss(10.0), doubled.loss(10.0))


def test_reduce_sums_moments_of_two_different_ranks() -> None:
    """Rank 1 holds half B of the batch; rank 0's reduce adds rank 1's moments: full-batch statistics."""
    model = model_3d()
    x = torch.randn(6, 3, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    other: list[torch.Tensor] = []
    with BNStatistics(model, reduce=lambda t: other.append(t.detach()) or t):
        model(x[3:])
    layer = iter(range(len(other)))
    with BNStatistics(model, reduce=lambda t: t + other[next(layer)]) as bn:
        model(x[:3])
    torch.testing.assert_close(bn.loss(10.0), naive_loss(model, x, 10.0), rtol=1e-5, atol=1e-5)


def test_hooks_are_removed() -> None:
    model = model_3d()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with BNStatistics(model) as bn:
        assert all(len(m._forward_pre_hooks) == 1 for m in bns)
        model(torch.randn(2, 3, 2, 4, 4))
    assert all(len(m._forward_pre_hooks) == 0 for m in bns)
    before = bn.loss()
    model(torch.randn(2, 3, 2, 4, 4) + 5)  # no hook: the record is not overwritten
    assert torch.equal(bn.loss(), before)

    manual = BNStatistics(model)
    manual.remove()
    manual.remove()  # idempotent
    assert all(len(m._forward_pre_hooks) == 0 for m in bns)


def test_errors() -> None:
    with pytest.raises(ValueError, match="`model`"):
        BNStatistics(nn.Sequential(nn.Conv3d(3, 4, 1)))
    with pytest.raises(ValueError, match="`model`"):
        BNStatistics(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="`reduce`"):
        BNStatistics(model_3d(), reduce=3)  # type: ignore[arg-type]
    with BNStatistics(model_3d()) as bn, pytest.raises(RuntimeError, match="forward"):
        bn.loss()
