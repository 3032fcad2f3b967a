"""A DDP strategy for SynthesisModule: process group and launcher of DDP, no model wrapping.

Plain ``strategy: ddp`` wraps the module in ``DistributedDataParallel``, which broadcasts rank 0's
parameters to every rank and averages gradients: every rank would then optimise rank 0's videos
with its own labels, and shards of unequal size would fail DDP's shape check. Here each rank owns a
shard of the synthetic videos; the only communication is the all-reduce of BatchNorm moments that
SynthesisModule does itself (so statistics are those of the whole set, whatever the world size),
and the all-gather at checkpoint/export time.

YAML: ``trainer.strategy: {class_path: tsgf_lightning.strategy.ShardedSynthesisStrategy}`` (add
``init_args: {process_group_backend: gloo}`` on CPU), or the registered name ``ddp_shards``.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class ShardedSynthesisStrategy(DDPStrategy):
    """DDP without the DDP wrapper: ranks keep their own parameters; no gradient all-reduce."""

    strategy_name = "ddp_shards"

    def configure_ddp(self) -> None:
        # Keep self.model the bare LightningModule: no parameter broadcast, no gradient hooks.
        pass


if "ddp_shards" not in StrategyRegistry:
    StrategyRegistry.register("ddp_shards", ShardedSynthesisStrategy,
                              description="DDP process group without model wrapping (per-rank synthesis shards)")
