"""A DDP strategy for SynthesisModule: process group and launcher of DDP, no model wrapping.

Plain ``strategy: ddp`` wraps the module in ``DistributedDataParallel``, which broadcasts rank 0's
parameters to every rank and averages gradients: every rank would then optimise rank 0's videos
with its own labels, and shards of unequal size would fail DDP's shape check. Here each rank owns a
shard of the synthetic videos; the only communication is the all-reduce of BatchNorm moments that
SynthesisModule does itself (so statistics are those of the whole set, whatever the world size),
and the all-gather at checkpoint/export time.

YAML: ``trainer.strategy: {class_path: tsgf_lightning.strategy.ShardedSynthesisStrategy}`` (add
``init_args: {process_group_backend: gloo}`` on CPU), or the registered name ``ddp_shards``.

Also here: which classes each rank owns (:func:`shard_classes`), the all-reduce of BN moments, and
the gathering and re-slicing that make a synthesis checkpoint hold the whole set whatever the world
size (:func:`whole_checkpoint`, :func:`shard_checkpoint`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor


class ShardedSynthesisStrategy(DDPStrategy):
    """DDP without the DDP wrapper: ranks keep their own parameters; no gradient all-reduce."""

    strategy_name = "ddp_shards"

    def configure_ddp(self) -> None:
        # Keep self.model the bare LightningModule: no parameter broadcast, no gradient hooks.
        pass


def refuse_wrapping_ddp(strategy) -> None:
    """Refuse a DDP strategy that wraps the module (``strategy: ddp``) for synthesis.

    It would run without an error and make a wrong set: DDP broadcasts rank 0's videos over the other
    ranks' shards and averages their gradients.
    """
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, ShardedSynthesisStrategy):
        raise ValueError(
            f"SynthesisModule cannot run under {type(strategy).__name__} (`strategy: ddp`): DDP would copy "
            "rank 0's synthetic videos to every rank and average their gradients. Use "
            "`trainer.strategy: ddp_shards` (tsgf_lightning.strategy.ShardedSynthesisStrategy), which "
            "keeps one shard of classes per rank")


if "ddp_shards" not in StrategyRegistry:
    StrategyRegistry.register("ddp_shards", ShardedSynthesisStrategy,
                              description="DDP process group without model wrapping (per-rank synthesis shards)")


# ------------------------------------------------------------------ shards of the synthetic set
def shard_classes(num_classes: int, world_size: int, rank: int) -> range:
    """Contiguous class range of ``rank`` (sizes differ by at most one)."""
    if world_size > num_classes:
        raise ValueError(f"synthesis shards by class: {world_size} ranks for {num_classes} classes leaves some "
                         "ranks without work; use at most as many devices as classes")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard_sizes(num_classes: int, per_class: int, world_size: int) -> list[int]:
    """Rows of every rank's shard when each class has ``per_class`` rows (videos)."""
    return [len(shard_classes(num_classes, world_size, r)) * per_class for r in range(world_size)]


class AllReduceSum:
    """Differentiable all-reduce (sum) of BN moments: every rank sees the statistics of the whole set."""

    def __call__(self, t: Tensor) -> Tensor:
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(t, op=dist.ReduceOp.SUM)


def gather_shards(module, t: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's shard of ``t`` (``sizes[r]`` rows on rank ``r``) in rank order, on every rank.

    ``module`` is the LightningModule whose ``all_gather`` runs the collective; shards are padded to
    the largest, as ``all_gather`` needs equal shapes. One rank: ``t`` itself.
    """
    if len(sizes) == 1:
        return t
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    gathered = module.all_gather(padded)  # (world, max, ...)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


def _per_video(value) -> bool:
    """Optimiser state that has one row per video (Adam's moments of the videos ``(N, C, T, H, W)``)."""
    return torch.is_tensor(value) and value.dim() == 5


def whole_checkpoint(checkpoint: dict, keys: tuple[str, ...], gather) -> None:
    """Replace the shard's ``keys`` of the state dict and its per-video optimiser state by ``gather(shard)``.

    A checkpoint of the whole set resumes on any number of ranks. New dicts are built: the nested
    optimiser dicts are the live optimiser's own.
    """
    sd = checkpoint["state_dict"]
    checkpoint["state_dict"] = {**sd, **{k: gather(sd[k]) for k in keys}}
    checkpoint["optimizer_states"] = [
        {**opt, "state": {pid: {k: gather(v) if _per_video(v) else v for k, v in st.items()}
                          for pid, st in opt["state"].items()}}
        for opt in checkpoint["optimizer_states"]]


def shard_checkpoint(checkpoint: dict, keys: tuple[str, ...], rows: Tensor) -> None:
    """The inverse of :func:`whole_checkpoint` on loading: keep this rank's ``rows`` of each key and state."""
    sd = checkpoint["state_dict"]
    checkpoint["state_dict"] = {**sd, **{k: sd[k][rows] for k in keys}}
    checkpoint["optimizer_states"] = [
        {**opt, "state": {pid: {k: v[rows] if _per_video(v) else v for k, v in st.items()}
                          for pid, st in opt["state"].items()}}
        for opt in checkpoint["optimizer_states"]]
