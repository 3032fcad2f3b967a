"""SynthesisModule over ranks: shards by class, the one-rank set on two ranks, and exact resume.

Data, teacher and runs: tests/synthesis_utils.py. Runs of more than one process go through the CLI
in a subprocess (``slow``).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from tsgf_lightning.modules.synthesis import SynthesisModule
from tsgf_lightning.strategy import shard_classes
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD, denormalize

from .synthesis_utils import (
    FRAMES,
    IPC,
    SIZE,
    TWO_RANKS,
    build_world,
    final_videos,
    killed_run,
    last_checkpoint,
    reference_run,
    resume_copy,
    run_cli,
    run_ok,
    synthesis_datamodule,
    write_config,
)

pixels = functools.partial(denormalize, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@pytest.fixture(scope="module")
def world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    return build_world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory)


# ================================================================================ world size
@pytest.mark.slow
def test_two_ranks_with_unequal_shards_give_the_one_rank_set(world) -> None:
    reference = reference_run(world)
    run = world.base / "two_ranks"
    run_ok(world, write_config(world, run), *TWO_RANKS)
    exported_1, ckpt_1 = final_videos(reference)
    exported_2, ckpt_2 = final_videos(run)
    assert exported_1.shape == (3 * IPC, 3, FRAMES, SIZE, SIZE)
    # float32 checkpoints in [0, 1] pixel units; the all-reduce only reorders float sums.
    torch.testing.assert_close(pixels(ckpt_2), pixels(ckpt_1), atol=1e-4, rtol=0)
    # distilled.pt is float16: at most one rounding step (2^-11 near 1) apart.
    torch.testing.assert_close(exported_2, exported_1, atol=2.0**-11, rtol=0)
    # Not vacuous: five steps moved the videos well beyond that tolerance from their real initialisation.
    init = synthesis_datamodule(world).random_subset(IPC, 0)[0].float() / 255
    assert (exported_1 - init).abs().max() > 1e-2
    record_1, record_2 = (torch.load(r / "export" / "distilled.pt", weights_only=True) for r in (reference, run))
    assert record_2["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    # Saturation is counted over the whole set, both shards (rank 0 alone holds 4 of the 6 videos).
    assert record_2["init_saturated_fraction"] == record_1["init_saturated_fraction"] > 0
    assert record_2["saturated_fraction"] == pytest.approx(record_1["saturated_fraction"], abs=1e-5)


def test_plain_ddp_is_refused_in_setup() -> None:
    module = SynthesisModule(num_classes=3, teacher_ckpt="unused.ckpt")
    module._trainer = SimpleNamespace(strategy=DDPStrategy())  # setup() must refuse before touching anything else
    with pytest.raises(ValueError, match="ddp_shards"):
        module.setup("fit")


@pytest.mark.slow
def test_plain_ddp_is_refused_end_to_end(world) -> None:
    run = world.base / "plain_ddp"
    code, out = run_cli(world.env, write_config(world, run), "--trainer.devices=2", "--trainer.strategy=ddp")
    assert code != 0
    assert "ValueError" in out and "ddp_shards" in out, out[-3000:]
    assert not (run / "export" / "distilled.pt").exists()


@pytest.mark.parametrize("classes,ranks", [(3, 2), (8, 3), (5, 5), (9, 4), (7, 1)])
def test_shard_classes_cover_every_class_once_in_balanced_ranges(classes: int, ranks: int) -> None:
    shards = [shard_classes(classes, ranks, r) for r in range(ranks)]
    assert [c for s in shards for c in s] == list(range(classes))  # contiguous, in order, each once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_shard_classes_refuses_more_ranks_than_classes() -> None:
    with pytest.raises(ValueError, match="4 ranks for 3 classes"):
        shard_classes(3, 4, 0)


# ================================================================================ resume
@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(world) -> None:
    reference, killed = reference_run(world), killed_run(world)
    run = world.base / "resumed_1"
    run_ok(world, resume_copy(world, killed, run), "--ckpt_path", "last")
    exported, ckpt = final_videos(run)
    exported_ref, ckpt_ref = final_videos(reference)
    torch.testing.assert_close(ckpt, ckpt_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(exported, exported_ref, atol=1e-6, rtol=0)
    resumed, uninterrupted = last_checkpoint(run), last_checkpoint(reference)
    assert resumed["global_step"] == uninterrupted["global_step"] == 5
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(resumed["optimizer_states"][0]["state"][0][key],
                                   uninterrupted["optimizer_states"][0]["state"][0][key], atol=1e-9, rtol=1e-5)
    # the saturation guard's record of frames the mask let move covers the steps before the kill too
    at_kill = torch.load(killed / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]["moved_frames"]
    moved = uninterrupted["state_dict"]["moved_frames"]
    assert at_kill.any() and torch.equal(at_kill & moved, at_kill) and moved.shape == (3 * IPC, 1, FRAMES)
    assert torch.equal(resumed["state_dict"]["moved_frames"], moved)


@pytest.mark.slow
def test_a_checkpoint_without_moved_frames_still_resumes(world) -> None:
    """Checkpoints of versions before ``moved_frames`` resume to the same videos, the guard's record restarting."""
    reference, killed = reference_run(world), killed_run(world)
    run = world.base / "resumed_old"
    resume_copy(world, killed, run)
    old = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
    del old["state_dict"]["moved_frames"]
    torch.save(old, run / "ckpt" / "last.ckpt")
    run_ok(world, write_config(world, run), "--ckpt_path", "last")
    torch.testing.assert_close(final_videos(run)[1], final_videos(reference)[1], atol=1e-6, rtol=0)
    moved, full = last_checkpoint(run)["state_dict"]["moved_frames"], last_checkpoint(reference)["state_dict"]
    assert moved.any() and torch.equal(moved & full["moved_frames"], moved)  # only the steps after the resume


@pytest.mark.slow
def test_resume_on_two_ranks_from_a_one_rank_checkpoint(world) -> None:
    reference, killed = reference_run(world), killed_run(world)
    run = world.base / "resumed_2"
    run_ok(world, resume_copy(world, killed, run), "--ckpt_path", "last", *TWO_RANKS)
    exported, ckpt = final_videos(run)
    exported_ref, ckpt_ref = final_videos(reference)
    torch.testing.assert_close(pixels(ckpt), pixels(ckpt_ref), atol=1e-4, rtol=0)
    torch.testing.assert_close(exported, exported_ref, atol=2.0**-11, rtol=0)
    # The killed state is far from the final one, so the comparison above is not vacuous.
    state = torch.load(killed / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]["videos"]
    assert (pixels(state) - pixels(ckpt_ref)).abs().max() > 1e-2
    assert last_checkpoint(run)["global_step"] == 5
