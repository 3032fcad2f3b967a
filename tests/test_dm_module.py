"""DMModule: one step's loss against a naive per-class loop, exact resume, the export a student reads, the CLI.

Data and helpers: tests/baseline_utils.py (conftest's tiny embedded set, ConvNet3D 4/8/8).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tsgf_lightning import cli
from tsgf_lightning.modules.dm import DMModule
from tsgf_lightning.modules.pixel_set import refuse_processes
from tsgf_lightning.strategy import ShardedSynthesisStrategy
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

from .baseline_utils import (
    CLASSES,
    TINY,
    assert_a_student_trains_on,
    assert_resumes_exactly,
    datamodule,
    embedded_data,
    exported,
    fit,
    reference_run,
)

REPO = Path(__file__).resolve().parent.parent
STEPS = 4


def make_dm(export_dir: str, **kwargs) -> DMModule:
    return DMModule(CLASSES, **{"ipc": 1, "embed_backbone": TINY, "batch_real": 3, "embed_batch": 5, "lr_img": 30.0,
                                "export_dir": export_dir, "export_media": False, **kwargs})


@pytest.fixture(scope="module")
def data(tiny_embedded, shared_cache_dir) -> SimpleNamespace:
    return embedded_data(tiny_embedded, shared_cache_dir)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> SimpleNamespace:
    """Four uninterrupted steps with a checkpoint after each: the reference of every test here."""
    return reference_run(make_dm, data, tmp_path_factory, "dm_run", STEPS)


def test_a_step_loss_equals_a_naive_per_class_loop_with_the_same_fresh_network(data, run) -> None:
    module = run.module
    loss, net, draws = module.step_loss(7)
    again, net_again, draws_again = module.step_loss(7)
    assert torch.equal(loss, again) and all(torch.equal(a, b) for a, b in zip(draws, draws_again))
    for name, w in net.state_dict().items():  # the step's network depends on the step only ...
        assert torch.equal(w, net_again.state_dict()[name]), name
    _, net_other, _ = module.step_loss(8)
    assert not torch.equal(net.state_dict()["classifier.weight"], net_other.state_dict()["classifier.weight"])
    assert not net.training and not any(p.requires_grad for p in net.parameters())

    clips, labels = datamodule(data).real_clips("fit")
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    naive = torch.tensor(0.0)
    for c in range(CLASSES):
        assert len(draws[c]) == 3 and len(set(draws[c].tolist())) == 3 and (labels[draws[c]] == c).all()
        real = torch.stack([(clips[i].float() / 255 - mean) / std for i in draws[c].tolist()])
        syn = module.videos.detach()[module.labels == c]
        with torch.no_grad():
            naive += ((net.features(real).mean(0) - net.features(syn).mean(0)) ** 2).sum()
    assert torch.allclose(loss.detach(), naive, rtol=1e-5), (loss.item(), naive.item())

    module.videos.grad = None
    loss.backward()
    assert module.videos.grad is not None and module.videos.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_dm_resumes_exactly_from_any_step(data, run, tmp_path) -> None:
    assert_resumes_exactly(make_dm, data, run.root, run.module, tmp_path, STEPS, at=(1, 3))


def test_dm_export_is_a_checked_set_of_clamped_videos_that_a_student_trains_on(data, run, tmp_path) -> None:
    d = exported(run.root)
    assert d["method"] == "dm" and d["ipc"] == 1 and d["steps"] == STEPS
    assert d["videos"].shape == (CLASSES, 3, 8, 48, 48) and d["labels"].tolist() == list(range(CLASSES))
    assert d["embed_arch"]["class_path"] == "tsgf_lightning.models.ConvNet3D"
    _, _, idx = datamodule(data).random_subset(1, 0)  # real initialisation: random real clips, seed init_seed
    paths = datamodule(data).part("fit").paths
    assert d["init_paths"] == [paths[i] for i in idx.tolist()]
    pixels = (run.module.videos.detach() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
              + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1))
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # clamped after every step
    assert torch.allclose(d["videos"].float(), pixels.clamp(0, 1), atol=1e-3)
    ckpt = torch.load(run.root / "ckpt" / f"step={STEPS}.ckpt", weights_only=True)
    assert ckpt["tsgf"]["stage"] == "dm" and ckpt["tsgf"]["class_names"] == d["class_names"]
    assert "momentum_buffer" in ckpt["optimizer_states"][0]["state"][0]
    assert_a_student_trains_on(run.root / "export" / "distilled.pt", data, tmp_path)


def test_plain_ddp_is_refused_and_sharded_ddp_allowed() -> None:
    with pytest.raises(ValueError, match="ddp_shards"):
        refuse_processes(DDPStrategy(), 2, "DMModule", shards=True)
    refuse_processes(ShardedSynthesisStrategy(), 2, "DMModule", shards=True)
    with pytest.raises(ValueError, match="one process"):
        refuse_processes(ShardedSynthesisStrategy(), 2, "MTTModule", shards=False)


def test_the_embedded_config_runs_through_the_cli_and_logs_to_tensorboard(data, tmp_path) -> None:
    cli.main(["fit", "--config", str(REPO / "configs/embedded/data.yaml"), "--config",
              str(REPO / "configs/embedded/dm.yaml"), *data.embedded.cli_args(), f"--data.cache_dir={data.cache}",
              "--data.val_fraction=0", "--data.decode_workers=1", "--trainer.max_steps=2",
              "--trainer.log_every_n_steps=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--trainer.enable_progress_bar=false", "--model.init_args.embed_backbone.init_args.channels=[4,8,8]",
              "--model.init_args.batch_real=2", "--model.init_args.export_media=false",
              "--model.init_args.image_every_n_steps=1"])
    out = tmp_path / "dm_ipc1"
    assert (out / "distilled.pt").is_file()  # exported into the logger's folder
    events = EventAccumulator(str(out))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"] and "dm/frames" in events.Tags()["images"]
    assert torch.load(out / "distilled.pt", weights_only=True)["steps"] == 2


@pytest.mark.slow
def test_two_sharded_ranks_step_the_one_rank_set_and_their_checkpoint_resumes_on_one(data, run, subprocess_env,
                                                                                      tmp_path) -> None:
    """Under ``ddp_shards`` each rank steps its classes; the checkpoint holds the whole set (any world size)."""
    from .synthesis_utils import TWO_RANKS, run_cli

    two = tmp_path / "two"
    args = ["--config", str(REPO / "configs/embedded/data.yaml"), "--config", str(REPO / "configs/embedded/dm.yaml"),
            *data.embedded.cli_args(), f"--data.cache_dir={data.cache}", "--data.val_fraction=0",
            "--data.decode_workers=1", "--trainer.max_steps=2", "--trainer.logger=false",
            f"--trainer.default_root_dir={two}", "--trainer.enable_progress_bar=false",
            "--model.init_args.embed_backbone.init_args.channels=[4,8,8]", "--model.init_args.batch_real=3",
            "--model.init_args.embed_batch=5", "--model.init_args.export_media=false",
            "--model.init_args.image_every_n_steps=0", f"--model.init_args.export_dir={two / 'export'}", *TWO_RANKS]
    code, out = run_cli(subprocess_env, None, *args)
    assert code == 0, out[-4000:]
    last = two / "checkpoints" / "last.ckpt"
    one_rank = torch.load(run.root / "ckpt" / "step=2.ckpt", weights_only=True)
    assert torch.equal(torch.load(last, weights_only=True)["state_dict"]["videos"], one_rank["state_dict"]["videos"])
    _, module = fit(make_dm, data, tmp_path / "one", STEPS, ckpt_path=str(last))
    assert torch.equal(exported(tmp_path / "one")["videos"], exported(run.root)["videos"])
    assert torch.equal(module.videos, run.module.videos)
