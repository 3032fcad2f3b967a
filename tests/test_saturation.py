"""The saturated fraction of a synthetic set: its formula, its logging and records, and the stop it triggers.

The formula is compared with a naive per-element loop in pixel space. The fits run SynthesisModule
on conftest's tiny embedded set (8 classes, 4 training clips each, 8 frames at 48x48) with
conftest's tiny teacher, on the settings of ``configs/embedded/synthesis.yaml`` (binary mask on the
update, from the initialisation's saliency, multi-formation factor 2, lr 0.01).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.modules.synthesis import SynthesisModule
from tsgf_lightning.tsgf.multiformation import pack_tiles
from tsgf_lightning.tsgf.saturation import MAX_SATURATED_FRACTION, check_saturation, saturation_excess
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD, at_pixel_bounds, normalize

CONFIG = dict(ipc=1, factor=2, init="real", init_select="random", lr=0.01, bn_weight=0.001, mask="binary",
              mask_target="update", mask_source="init", eps=0.5, eps_mode="quantile", augment_flip=False,
              image_every_n_steps=0)


def naive_saturated_fraction(inputs: torch.Tensor, mean, std) -> float:
    """Per element: back to pixel units in float64, at 0 or 1 within 1e-7 (2 float32 steps of input space) or beyond."""
    flat = inputs.double()
    at_bound = 0
    for c in range(flat.shape[1]):
        pixels = (flat[:, c] * std[c] + mean[c]).flatten().tolist()
        at_bound += sum(1 for p in pixels if p <= 1e-7 or p >= 1 - 1e-7)
    return at_bound / inputs.numel()


# ================================================================================ the formula
@pytest.mark.parametrize("seed", range(3))
def test_saturated_fraction_matches_a_naive_count(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(3, 3, 4, 6, 6, generator=g) * 0.98 + 0.01  # strictly inside (0, 1)
    where = torch.rand(pixels.shape, generator=g)
    pixels[where < 0.1] = 0.0
    pixels[(where >= 0.1) & (where < 0.15)] = 1.0
    pixels[(where >= 0.15) & (where < 0.17)] = 1.3  # beyond a bound counts as at it
    pixels[(where >= 0.17) & (where < 0.19)] = 1e-4  # near a bound does not
    inputs = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
    naive = naive_saturated_fraction(inputs, IMAGENET_MEAN, IMAGENET_STD)
    at = at_pixel_bounds(inputs, IMAGENET_MEAN, IMAGENET_STD)
    assert at.shape == inputs.shape and int(at.sum()) == round(naive * inputs.numel())  # the same elements counted
    got = float(at.float().mean())  # the share SynthesisModule logs (its count over the set's elements)
    assert got == pytest.approx(naive, abs=1e-7) and 0.15 < got < 0.2  # a float32 mean


def test_saturation_excess_is_the_excess_over_init_per_movable_voxel() -> None:
    assert saturation_excess(0.30, 0.10, 0.5) == pytest.approx(0.4)
    assert saturation_excess(0.30, 0.10, 1.0) == pytest.approx(0.2)
    assert saturation_excess(0.05, 0.10, 0.5) == pytest.approx(-0.1)  # synthesis moved pixels off the bounds
    assert saturation_excess(0.30, 0.10, 0.0) == pytest.approx(0.2)


def test_check_saturation_names_step_fractions_limit_lr_and_the_fix() -> None:
    assert check_saturation(3, 0.2, 0.1, 0.5, 0.5, 0.01) == pytest.approx(0.2)
    with pytest.raises(FloatingPointError) as err:
        check_saturation(7, 0.5, 0.1, 0.5, 0.5, 1e30)
    message = str(err.value)
    for part in ("step 7", "50.00% of its pixel values", "10.00% at initialisation", "80% of the pixels",
                 "`max_saturated_fraction` = 0.5", "lr = 1e+30", "lower `lr`"):
        assert part in message, part


def test_max_saturated_fraction_is_validated() -> None:
    with pytest.raises(ValueError, match="Expected argument `max_saturated_fraction` in \\(0, 1\\] but got 0"):
        SynthesisModule(num_classes=8, teacher_ckpt="unused.ckpt", max_saturated_fraction=0)


# ================================================================================ synthesis runs
def synthesize(tiny_embedded, cache: str, teacher: str, run: Path, max_steps: int, **model):
    dm = VideoDataModule(tiny_embedded.source(), frames=8, size=48, flip=False, num_workers=0, cache_dir=cache,
                         decode_workers=1, train_set="none", steps_per_epoch=10)
    module = SynthesisModule(num_classes=dm.num_classes, teacher_ckpt=teacher, export_dir=str(run / "export"),
                             **{**CONFIG, **model})
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=run, log_every_n_steps=1,
                        logger=TensorBoardLogger(str(run), name="tb", version=""),
                        callbacks=[ModelCheckpoint(dirpath=run / "ckpt", save_last=True, save_top_k=0,
                                                   every_n_train_steps=1)])
    return trainer, module, dm


def test_a_normal_synthesis_logs_and_records_its_saturated_fraction(tiny_embedded, shared_cache_dir,
                                                                     teacher_checkpoint, tmp_path) -> None:
    trainer, module, dm = synthesize(tiny_embedded, shared_cache_dir, teacher_checkpoint(), tmp_path, max_steps=4)
    trainer.fit(module, datamodule=dm)
    final = naive_saturated_fraction(module.videos.detach(), IMAGENET_MEAN, IMAGENET_STD)
    clips, _, _ = dm.random_subset(1, 0, factor=2)  # the initialisation, rebuilt independently
    init = naive_saturated_fraction(normalize(pack_tiles(clips.float() / 255, 2), IMAGENET_MEAN, IMAGENET_STD),
                                    IMAGENET_MEAN, IMAGENET_STD)
    assert 0 < init < 0.05  # real clips have pixels at exactly 0 or 255

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    logged = events.Scalars("train/saturated_fraction")
    assert [e.step for e in logged] == [0, 1, 2, 3]  # every step
    assert logged[-1].value == pytest.approx(final, abs=1e-6)

    exported = torch.load(tmp_path / "export" / "distilled.pt", weights_only=True)
    record = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["tsgf"]
    for entry in (exported, record):
        assert entry["saturated_fraction"] == pytest.approx(final, abs=1e-12)
        assert entry["init_saturated_fraction"] == pytest.approx(init, abs=1e-12)
    assert saturation_excess(final, init, 0.5) < MAX_SATURATED_FRACTION / 10


@pytest.mark.parametrize("mask", ["binary", "none"])
def test_an_absurd_lr_stops_synthesis_before_anything_is_saved(tiny_embedded, shared_cache_dir, teacher_checkpoint,
                                                               tmp_path, mask) -> None:
    """lr 1e30 never makes a NaN (the clamp hides it): every moved pixel lands on 0 or 1.

    With the binary mask only half of the frames move, so the set as a whole is at most half saturated.
    """
    trainer, module, dm = synthesize(tiny_embedded, shared_cache_dir, teacher_checkpoint(), tmp_path, max_steps=3,
                                     lr=1e30, mask=mask)
    with pytest.raises(FloatingPointError, match=r"synthesis saturated the set at step 0: .* lr = 1e\+30") as err:
        trainer.fit(module, datamodule=dm)
    assert "lower `lr`" in str(err.value) and "max_saturated_fraction" in str(err.value)
    assert not (tmp_path / "export" / "distilled.pt").exists()
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))  # stopped in the first update, before its checkpoint


def test_the_limit_is_the_users_to_raise(tiny_embedded, shared_cache_dir, teacher_checkpoint, tmp_path) -> None:
    """With the limit at 1 a saturated set is exported, and its record says how saturated it is."""
    trainer, module, dm = synthesize(tiny_embedded, shared_cache_dir, teacher_checkpoint(), tmp_path, max_steps=1,
                                     lr=1e30, max_saturated_fraction=1.0)
    trainer.fit(module, datamodule=dm)
    exported = torch.load(tmp_path / "export" / "distilled.pt", weights_only=True)
    assert exported["saturated_fraction"] > 0.3
    assert exported["saturated_fraction"] == pytest.approx(
        naive_saturated_fraction(module.videos.detach(), IMAGENET_MEAN, IMAGENET_STD), abs=1e-12)
