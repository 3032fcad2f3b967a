"""The seed of each step's random draws, one formula for every stage.

Synthesis augmentation and the student's mixing draw from a fresh ``torch.Generator`` per step,
seeded from the run's seed and the global step (and, for the student, the rank), so the draws of a
step depend neither on how many steps ran in this process (resuming) nor, for synthesis, on the
number of ranks. The multipliers are primes larger than any step count or world size in use, so
distinct ``(seed, step, rank)`` give distinct seeds.
"""

from __future__ import annotations


def step_seed(seed: int, step: int, rank: int | None = None) -> int:
    """``seed * 1_000_003 + step``, and with ``rank`` that times 1009 plus ``rank`` (one stream per rank)."""
    value = seed * 1_000_003 + step
    return value if rank is None else value * 1009 + rank
