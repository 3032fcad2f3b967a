"""Matching training trajectories (MTT, Cazenavette et al. 2022): the student unroll and the loss.

A student starts from an expert's weights at epoch ``e``, takes ``steps`` plain SGD steps on the
synthetic set with a learnable learning rate, keeping the graph, and the loss is its normalised
distance to the expert ``expert_epochs`` later::

    L = ||w_student_end - w_expert(e + k)||^2 / ||w_expert(e) - w_expert(e + k)||^2

so the gradient reaches the synthetic pixels and the learning rate through every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call


def unroll_sgd(net: nn.Module, start: Mapping[str, Tensor], videos: Tensor, labels: Tensor, lr: Tensor,
               steps: int, loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
               batch_size: int | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``steps`` SGD steps ``w <- w - lr * dL/dw`` of ``net`` from ``start``, differentiable in videos and lr.

    Args:
        net: the architecture; its own parameters are not used (``functional_call`` with ``start``).
        start: parameter name -> tensor (an expert's weights at the start epoch).
        videos, labels: the synthetic set (inputs of ``net``) and its classes.
        lr: the learnable learning rate (a scalar tensor).
        steps: SGD steps.
        batch_size: None = the whole set every step (the published code at small IPC); else a
            random minibatch per step, drawn with ``generator``.

    Returns:
        The parameters after the last step, with the graph back to ``videos``, ``lr`` and ``start``.
    """
    # Expert weights are data here: leaves that let autograd differentiate the first step through them.
    params = {n: w if w.requires_grad else w.detach().requires_grad_(True) for n, w in start.items()}
    names = list(params)
    for _ in range(steps):
        if batch_size is None or batch_size >= len(videos):
            x, y = videos, labels
        else:
            pick = torch.randperm(len(videos), generator=generator)[:batch_size].to(videos.device)
            x, y = videos[pick], labels[pick]
        loss = loss_fn(functional_call(net, params, (x,)), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        params = {n: params[n] - lr * g for n, g in zip(names, grads, strict=True)}
    return params


def _flat(params: Mapping[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([params[n].reshape(-1) for n in names])


def trajectory_loss(student_end: Mapping[str, Tensor], expert_start: Mapping[str, Tensor],
                    expert_target: Mapping[str, Tensor]) -> Tensor:
    """``||student_end - target||^2 / ||start - target||^2`` over every parameter, flattened.

    Raises:
        ValueError: the three do not name the same parameters, or start equals target (0 / 0).
    """
    names = sorted(expert_start)
    if sorted(student_end) != names or sorted(expert_target) != names:
        raise ValueError(f"Expected the student and both expert checkpoints to hold the same parameters but got "
                         f"{sorted(student_end)[:3]}..., {names[:3]}..., {sorted(expert_target)[:3]}...")
    target = _flat(expert_target, names).detach()
    denominator = ((_flat(expert_start, names).detach() - target) ** 2).sum()
    if float(denominator) == 0.0:
        raise ValueError("the expert's start and target weights are equal: choose epochs that differ")
    return ((_flat(student_end, names) - target) ** 2).sum() / denominator
