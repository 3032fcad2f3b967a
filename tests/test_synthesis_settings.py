"""The README's synthesis settings at module level, on one rank and on two: ``factor: 2`` and ``mask_source: init``.

With ``mask: binary``, ``mask_target: update`` and ``mask_source: init`` the key frames of every tile
(by the saliency of the initial clips) must come out of synthesis bit-identical to the real
initialisation while the other frames move; with ``factor: 2`` each stored video packs four clips,
so a tile misplaced anywhere between packing, the per-tile mask and the export shows up as a key
frame that moved. The initialisation and the key frames are rebuilt here from the DataModule; data
and teacher: tests/synthesis_utils.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from tsgf_lightning.data.sources import VideoFolder
from tsgf_lightning.tsgf import temporal_saliency, tsgf_mask
from tsgf_lightning.tsgf.multiformation import pack_tiles, unpack_tiles
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize, pixel_bounds

from .synthesis_utils import (
    FRAMES,
    IPC,
    SIZE,
    TWO_RANKS,
    build_world,
    final_videos,
    fit_synthesis,
    make_datamodule,
    once,
    run_ok,
    synthesis_datamodule,
    write_config,
)

#: One stored video per class holding 2 x 2 clips: the 4 training clips of each class.
TILED = dict(ipc=1, factor=2, mask="binary", mask_target="update", mask_source="init")
STEPS, HALF = 4, SIZE // 2


@pytest.fixture(scope="module")
def world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory) -> SimpleNamespace:
    return build_world(tiny_embedded, shared_cache_dir, subprocess_env, tmp_path_factory)


@pytest.fixture(scope="module")
def initial(world) -> SimpleNamespace:
    """The initialisation rebuilt outside the module: ``videos`` (3, C, T, H, W) normalised, the ``key`` frames
    (12, T) of every tile (video-major, tiles row-major) by the binary mask of their saliency, the clips' ``paths``."""
    dm = synthesis_datamodule(world)
    clips, labels, idx = dm.random_subset(1, 0, factor=2)
    assert labels.tolist() == [c for c in range(3) for _ in range(4)]
    init = normalize(pack_tiles(clips.float() / 255, 2), IMAGENET_MEAN, IMAGENET_STD)
    lo, hi = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD, init)
    init = torch.maximum(torch.minimum(init, hi), lo)
    saliency = temporal_saliency(denormalize(unpack_tiles(init, 2), IMAGENET_MEAN, IMAGENET_STD), 3, "hann")
    key = tsgf_mask(saliency, 0.5, "quantile", "binary") == 0
    assert key.any(1).all() and not key.all(1).any()  # every tile has key frames and calm frames
    paths = dm.part("fit").paths
    return SimpleNamespace(videos=init, key=key, paths=[paths[i] for i in idx.tolist()])


@pytest.fixture(scope="module")
def one_rank(world) -> SimpleNamespace:
    """An in-process synthesis of the tiled set on one rank: its module and export folder."""
    def make() -> SimpleNamespace:
        run = world.base / "tiled_one_rank"
        _, module = fit_synthesis(world, run, max_steps=STEPS, **TILED)
        return SimpleNamespace(module=module, videos=module.videos.detach().clone(), export=run / "export")
    return once("tiled_one_rank", make)


def tile(videos: torch.Tensor, clip: int, t: int) -> torch.Tensor:
    """Frame ``t`` of tile ``clip % 4`` of stored video ``clip // 4``: ``(C, H/2, W/2)``."""
    row, col = divmod(clip % 4, 2)
    return videos[clip // 4, :, t, row * HALF:(row + 1) * HALF, col * HALF:(col + 1) * HALF]


def assert_key_frames_stayed_real(final: torch.Tensor, initial: SimpleNamespace) -> None:
    for clip in range(12):
        calm_moved = 0.0
        for t in range(FRAMES):
            now, then = tile(final, clip, t), tile(initial.videos, clip, t)
            if initial.key[clip, t]:
                assert torch.equal(now, then), f"tile {clip % 4} of video {clip // 4}: key frame {t} moved"
            else:
                calm_moved = max(calm_moved, float((now - then).abs().max()))
        assert calm_moved > 1e-2, f"tile {clip % 4} of video {clip // 4}: no calm frame moved"


def test_tiled_init_mask_keeps_each_tiles_key_frames_real_on_one_rank(world, initial, one_rank) -> None:
    module = one_rank.module
    assert module.videos.shape == (3, 3, FRAMES, SIZE, SIZE) and module.init_paths == initial.paths
    assert_key_frames_stayed_real(one_rank.videos, initial)
    exported = torch.load(one_rank.export / "distilled.pt", weights_only=True)
    assert exported["factor"] == 2 and exported["ipc"] == 1 and exported["labels"].tolist() == [0, 1, 2]
    assert exported["init_paths"] == initial.paths and exported["config"]["mask_source"] == "init"
    pixels = denormalize(one_rank.videos, IMAGENET_MEAN, IMAGENET_STD).clamp(0, 1)
    assert torch.equal(exported["videos"], pixels.to(torch.float16))


def test_a_student_datamodule_unpacks_the_tiles_the_synthesis_packed(world, one_rank) -> None:
    path = one_rank.export / "distilled.pt"
    dm = make_datamodule(VideoFolder(str(world.three)), world.cache, train_set="distilled", distilled_path=str(path))
    dm.setup("fit")
    served = dm.train_data
    assert served.labels.tolist() == [c for c in range(3) for _ in range(4)]
    stored = torch.load(path, weights_only=True)["videos"].float()
    assert torch.equal(served.clips[:, 0], unpack_tiles(stored, 2))  # tile k of video v is clip 4 v + k


@pytest.mark.slow
def test_tiled_init_mask_on_two_ranks_gives_the_one_rank_set(world, initial, one_rank) -> None:
    run = world.base / "tiled_two_ranks"
    run_ok(world, write_config(world, run, max_steps=STEPS, **TILED), *TWO_RANKS)  # shards of 2 and 1 videos
    exported, checkpoint = final_videos(run)
    assert_key_frames_stayed_real(checkpoint, initial)  # the checkpoint holds the whole set, gathered
    pixels = denormalize(checkpoint, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(pixels, denormalize(one_rank.videos, IMAGENET_MEAN, IMAGENET_STD), atol=1e-4, rtol=0)
    reference = torch.load(one_rank.export / "distilled.pt", weights_only=True)
    torch.testing.assert_close(exported, reference["videos"].float(), atol=2.0**-11, rtol=0)
    record = torch.load(run / "export" / "distilled.pt", weights_only=True)
    assert record["init_paths"] == initial.paths and record["factor"] == 2 and record["labels"].tolist() == [0, 1, 2]


def test_a_logged_run_at_ipc_2_beside_the_datamodules_default_ipc(world, tmp_path) -> None:
    """The DataModule's ``ipc`` (random subsets only) stays 1 while synthesis runs at ipc 2.

    With a logger, Lightning merges module and DataModule hyper-parameters and refuses one key with
    two values; a stale DataModule ``ipc`` would stop every synthesis above IPC 1 in its first step.
    """
    logger = TensorBoardLogger(str(tmp_path), name="synthesis", version="")
    trainer, module = fit_synthesis(world, tmp_path, max_steps=1, logger=logger)
    assert trainer.global_step == 1 and module.videos.shape[0] == 3 * IPC
    logged = yaml.unsafe_load((tmp_path / "synthesis" / "hparams.yaml").read_text())  # holds tuples
    assert logged["ipc"] == IPC and logged["train_set"] == "none" and "data_spec" not in logged
