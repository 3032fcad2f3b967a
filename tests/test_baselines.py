"""DM, MTT and VDSD's pure functions against naive loops written from their definitions (method.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tsgf_lightning.baselines import (
    Hallucinator,
    assemble_videos,
    class_means,
    dm_loss,
    pair_memories,
    trajectory_loss,
    unroll_sgd,
)


# ------------------------------------------------------------------------------------------------ DM
def test_dm_loss_equals_a_per_class_loop():
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(40, 6, generator=g), torch.randn(9, 6, generator=g)
    real_y = torch.randint(0, 3, (40,), generator=g)
    real_y[:3] = torch.tensor([0, 1, 2])
    syn_y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    naive = torch.tensor(0.0)
    for c in range(3):
        naive = naive + ((real[real_y == c].mean(0) - syn[syn_y == c].mean(0)) ** 2).sum()
    assert torch.allclose(dm_loss(real, real_y, syn, syn_y, 3), naive, atol=1e-6)


def test_dm_gradient_reaches_only_the_synthetic_side():
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).requires_grad_(False)
    real = torch.randn(8, 3, 4, generator=g)
    syn = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    y_real, y_syn = torch.tensor([0, 1] * 4), torch.tensor([0, 1])
    dm_loss(net(real), y_real, net(syn), y_syn, 2).backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_class_means_refuses_an_empty_class():
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        class_means(torch.zeros(2, 3), torch.tensor([0, 2]), 3)


# ----------------------------------------------------------------------------------------------- MTT
def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def test_unrolled_student_equals_a_plain_sgd_loop():
    net = _tiny_net()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    start = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    end = unroll_sgd(net, start, x, y, torch.tensor(0.3, dtype=torch.float64), steps=4)
    plain = copy.deepcopy(net)
    opt = torch.optim.SGD(plain.parameters(), lr=0.3)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward()
        opt.step()
    for name, p in plain.named_parameters():
        assert torch.allclose(end[name], p, atol=1e-12), name


def test_unroll_gradient_wrt_pixels_and_lr_matches_finite_differences():
    net = _tiny_net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    target = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def loss(pixels, rate):
        return trajectory_loss(unroll_sgd(net, start, pixels, y, rate, steps=3), start, target)

    loss(x, lr).backward()
    h = 1e-6
    for index in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2)]:
        bump = torch.zeros_like(x)
        bump[index] = h
        numeric = (loss(x.detach() + bump, lr.detach()) - loss(x.detach() - bump, lr.detach())) / (2 * h)
        assert torch.isclose(x.grad[index], numeric, rtol=1e-5, atol=1e-9), index
    numeric_lr = (loss(x.detach(), lr.detach() + h) - loss(x.detach(), lr.detach() - h)) / (2 * h)
    assert torch.isclose(lr.grad, numeric_lr, rtol=1e-5, atol=1e-9)


def test_trajectory_loss_is_the_normalised_distance():
    start = {"a": torch.zeros(2), "b": torch.zeros(1)}
    target = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    end = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([2.0])}
    assert trajectory_loss(end, start, target).item() == pytest.approx(4.0 / 25.0)
    with pytest.raises(ValueError, match="equal"):
        trajectory_loss(end, start, start)
    with pytest.raises(ValueError, match="same parameters"):
        trajectory_loss({"a": end["a"]}, start, target)


# ---------------------------------------------------------------------------------------------- VDSD
def test_pairing_covers_every_static_dynamic_pair_within_its_class():
    s, d = pair_memories(num_classes=2, static_per_class=2, dynamic_per_class=3)
    assert len(s) == len(d) == 12
    pairs = set(zip(s.tolist(), d.tolist(), strict=True))
    naive = {(c * 2 + j, c * 3 + k) for c in range(2) for j in range(2) for k in range(3)}
    assert pairs == naive


def test_assembled_video_equals_a_naive_construction():
    g = torch.Generator().manual_seed(4)
    static, dynamic = torch.randn(4, 3, 5, 6, generator=g), torch.randn(6, 1, 7, 5, 6, generator=g)
    hal = Hallucinator(3)
    s, d = pair_memories(2, 2, 3)
    videos = assemble_videos(static, dynamic, s, d, hal)
    assert videos.shape == (12, 3, 7, 5, 6)
    for i in range(12):
        frames = torch.stack([static[s[i]]] * 7, dim=1)  # (C, T, H, W): the static frame at every time step
        naive = hal(torch.cat([frames, dynamic[d[i]]], dim=0)[None])[0]
        assert torch.allclose(videos[i], naive, atol=1e-6), i


def test_assemble_refuses_mismatched_memories():
    with pytest.raises(ValueError, match="one size"):
        assemble_videos(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 2, 5, 5), torch.tensor([0]), torch.tensor([0]),
                        Hallucinator())
