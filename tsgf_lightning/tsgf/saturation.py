"""Saturation of a synthetic set: the symptom of a synthesis that diverged behind the pixel clamp.

Synthesis clamps the pixels to ``[0, 1]`` after every update, so an absurd learning rate never
produces a NaN: each pixel the optimiser moves lands on 0 or 1 and the exported set is black and
white. What shows it is the share of pixel values at the bounds (:func:`~tsgf_lightning.video.at_pixel_bounds`),
compared with two baselines:

- the initialisation's own share: real clips have pixels at exactly 0 or 255 (black borders,
  highlights), 0.05% of the embedded set's values and 9.7% of ucf101-mini9's (up to 44% in one of
  its videos), so only the excess over it counts;
- the share of voxels the optimiser can move: with a TSGF mask, key frames (half of them at the
  default quantile 0.5) never move, so a set whose every movable pixel saturated is only half
  saturated overall. The excess is divided by the share of voxels in frames whose mask has been
  non-zero so far (Adam keeps moving a frame its mask once let through).

Measured as that ratio, the largest over each run, on the tests' embedded set (a 16/32/32 teacher)
and on ucf101-mini9 (a 16/32/32 teacher at 0.43 top-1, 8 epochs), with the settings of
``configs/embedded/synthesis.yaml`` and ``configs/ucf101_mini9/synthesis.yaml`` (binary mask
on the update, factor 2) except where a row says otherwise:

===========================================  ================  ================
run                                          embedded          ucf101-mini9
===========================================  ================  ================
config's lr (0.01, 300 steps / 0.03, 50)     0.017             0.002
lr 0.25, the paper's (300 / 50 steps)        0.20              0.04
lr 1 (300 steps)                             0.29
module defaults (eq8 on the gradient, 0.25)  0.06
lr 1e30, first update (binary, eq8 or none)  0.84              0.75
===========================================  ================  ================

The default limit, 0.5, stops lr 1e30 in its first update (with a margin of 1.5) whatever the
mask, and leaves normal runs, even at four times the paper's learning rate, well below it.
"""

from __future__ import annotations

#: Default of ``SynthesisModule.max_saturated_fraction`` (see the module docstring for the measurements).
MAX_SATURATED_FRACTION = 0.5


def saturation_excess(now: float, init: float, moving: float) -> float:
    """Share of the movable voxels saturated beyond the initialisation: ``(now - init) / moving``.

    Args:
        now, init: shares of the set's pixel values at 0 or 1, now and at initialisation.
        moving: share of the set's voxels the step could move (1 without a mask); 0 = the excess as is.
    """
    excess = now - init
    return excess / moving if moving > 0 else excess


def check_saturation(step: int, now: float, init: float, moving: float, limit: float, lr: float) -> float:
    """:func:`saturation_excess`, or ``FloatingPointError`` naming the step, both shares, the limit and the fix."""
    share = saturation_excess(now, init, moving)
    if share > limit:
        raise FloatingPointError(
            f"synthesis saturated the set at step {step}: {now:.2%} of its pixel values sit at 0 or 1 against "
            f"{init:.2%} at initialisation, {share:.0%} of the pixels this step could move (limit "
            f"`max_saturated_fraction` = {limit}, lr = {lr:g}). Stopped before this state was saved or exported; "
            "lower `lr`, or raise `max_saturated_fraction` if such a set is meant")
    return share
