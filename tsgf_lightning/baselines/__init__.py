"""Pure tensor functions of the methods TSGF is compared against: DM, MTT and VDSD (facts in method.md).

Each is tested against a naive loop written from its definition; the LightningModules that run
them live in :mod:`tsgf_lightning.modules`.
"""

from tsgf_lightning.baselines.dm import class_means, dm_loss
from tsgf_lightning.baselines.mtt import trajectory_loss, unroll_sgd
from tsgf_lightning.baselines.vdsd import Hallucinator, assemble_videos, pair_memories

__all__ = ["Hallucinator", "assemble_videos", "class_means", "dm_loss", "pair_memories", "trajectory_loss",
           "unroll_sgd"]
