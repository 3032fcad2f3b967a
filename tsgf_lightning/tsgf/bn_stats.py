"""BatchNorm-statistics matching (Eq. 5; DeepInversion / SRe2L style).

``L_reg = sum_l w_l (||mu_l(x) - RM_l||_2 + ||var_l(x) - RV_l||_2)`` over every BatchNorm layer
``l`` of a frozen teacher, where ``mu_l``/``var_l`` are the per-channel mean and variance of the
layer's input on the synthetic batch and ``RM_l``/``RV_l`` its running statistics.

Moments, not means, are recorded so that several processes can add theirs (an all-reduce) before
mean and variance are formed: per layer and channel ``[n, sum(x - RM), sum((x - RM)^2)]``.

- Why shift by ``RM``: the one-pass variance ``E[x^2] - E[x]^2`` loses all precision when
  ``|mean| >> std`` (catastrophic cancellation). ``RM`` is close to the batch mean, so the shifted
  sums are small and the subtraction is benign; the variance itself is shift-invariant.
- Why the biased variance (divide by ``n``): it is what BatchNorm normalises with in training
  mode and what DeepInversion/SRe2L match; ``RV`` is PyTorch's unbiased running estimate, but
  ``n / (n - 1)`` is ~1 for the ``B * T * H * W`` elements of a channel. It also keeps the
  formula a plain function of the summed moments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class BNStatistics:
    """Records each BatchNorm layer's input statistics on forward and exposes the Eq. 5 loss.

    Registers a forward *pre*-hook on every :class:`~torch.nn.modules.batchnorm._BatchNorm` module
    of ``model`` (in ``model.modules()`` order, so layer 0 is the first BN layer). A pre-hook sees
    the running statistics before a training-mode forward updates them; they are cloned then.
    Each forward overwrites the previous record; a BN module called twice in one forward keeps
    its last call.

    Example::

        with BNStatistics(teacher, reduce=all_reduce_sum) as bn:
            logits = teacher(x)
            loss = ce(logits, y) + r_bn * bn.loss(first_multiplier=10.0)

    Args:
        model: a network containing BatchNorm layers with running statistics.
        reduce: applied to each layer's stacked moments ``(3, C)`` (rows ``n``, ``sum(x - RM)``,
            ``sum((x - RM)^2)``) before mean and variance are formed; pass a differentiable
            all-reduce (sum) to pool statistics across processes. ``None`` = identity.
    """

    def __init__(self, model: nn.Module, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        if reduce is not None and not callable(reduce):
            raise ValueError(f"Expected argument `reduce` to be callable or None but got {reduce!r}")
        self.reduce = reduce
        self.layer_names: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # Per layer index: (mean, var, running_mean, running_var), each (C,).
        self._records: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        for name, module in model.named_modules():
            if not isinstance(module, _BatchNorm):
                continue
            if module.running_mean is None or module.running_var is None:
                raise ValueError(
                    f"Expected argument `model` to have BatchNorm layers with running statistics but "
                    f"layer {name!r} has track_running_stats=False"
                )
            index = len(self.layer_names)
            self.layer_names.append(name)
            self._handles.append(module.register_forward_pre_hook(self._make_hook(index)))
        if not self.layer_names:
            raise ValueError("Expected argument `model` to contain at least one BatchNorm layer but found none")

    def _make_hook(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self._records[index] = self._statistics(module, inputs[0])

        return hook

    def _statistics(self, module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # Half-precision inputs (autocast) are summed in float32.
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]  # every axis but the channel axis
        rm = module.running_mean.detach().clone().to(x.dtype)
        rv = module.running_var.detach().clone().to(x.dtype)
        shifted = x - rm.view(1, C, *([1] * (x.dim() - 2)))
        n = x.new_full((C,), x.numel() / C)
        moments = torch.stack([n, shifted.sum(dim=dims), shifted.pow(2).sum(dim=dims)])  # (3, C)
        if self.reduce is not None:
            moments = self.reduce(moments)
        n, s1, s2 = moments.unbind(0)
        delta = s1 / n  # batch mean minus RM
        mean = rm + delta
        var = (s2 / n - delta.pow(2)).clamp_min(0)  # biased; clamp guards rounding below zero
        return mean, var, rm, rv

    @property
    def statistics(self) -> list[tuple[Tensor, Tensor]]:
        """``(mean, var)`` of each BN layer's input at the last forward, in layer order."""
        self._check_recorded()
        return [self._records[i][:2] for i in range(len(self.layer_names))]

    def loss(self, first_multiplier: float = 1.0) -> Tensor:
        """Eq. 5: ``sum_l w_l (||mu_l - RM_l||_2 + ||var_l - RV_l||_2)``, L2 norms (not squared).

        Args:
            first_multiplier: ``w_0``, the weight of the first BN layer (SRe2L uses 10); ``w_l = 1``
                for the others.

        Returns:
            scalar, differentiable with respect to the forward's input.
        """
        self._check_recorded()
        total = None
        for i in range(len(self.layer_names)):
            mean, var, rm, rv = self._records[i]
            term = torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv)
            if i == 0:
                term = first_multiplier * term
            total = term if total is None else total + term
        return total

    def _check_recorded(self) -> None:
        missing = [self.layer_names[i] for i in range(len(self.layer_names)) if i not in self._records]
        if missing:
            raise RuntimeError(f"No statistics recorded for BN layers {missing}: run a forward pass first")

    def remove(self) -> None:
        """Remove the hooks (idempotent). The last records stay, so :meth:`loss` still works."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
