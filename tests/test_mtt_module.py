"""MTT: expert trajectories are the TeacherModule's weights at every epoch and resume; MTTModule's unrolled student
is a plain SGD loop from the expert's weights; exact resume; the export (with the learnt rate) a student reads.

Data and helpers: tests/baseline_utils.py. Experts: two TeacherModule fits of ConvNet3D 4/8/8, plain SGD,
3 epochs of 2 steps each.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tsgf_lightning import cli
from tsgf_lightning.data.spec import DataSpec
from tsgf_lightning.modules.experts import ExpertBank, ExpertTrajectory, trajectory_epochs
from tsgf_lightning.modules.mtt import MTTModule
from tsgf_lightning.modules.teacher import TeacherModule
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

from .baseline_utils import (
    CLASSES,
    TINY,
    assert_a_student_trains_on,
    assert_resumes_exactly,
    datamodule,
    embedded_data,
    exported,
    reference_run,
    trainer,
)

REPO = Path(__file__).resolve().parent.parent
EPOCHS, STEPS = 3, 3
MTT = dict(ipc=1, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=100.0, syn_lr_init=0.1, lr_lr=1e-5,
           export_media=False)


@pytest.fixture(scope="module")
def data(tiny_embedded, shared_cache_dir) -> SimpleNamespace:
    return embedded_data(tiny_embedded, shared_cache_dir)


def expert_datamodule(data):
    # No augmentation (the published buffers): a full-frame crop of a square frame is the identity.
    return datamodule(data, train_set="real", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), batch_size=16)


def train_expert(data, root: Path, seed: int, max_epochs: int = EPOCHS, ckpt_path: str | None = None,
                 initial: dict | None = None) -> TeacherModule:
    """A TeacherModule fit with the trajectory callback and a checkpoint after every epoch (``epoch=E.ckpt``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = TeacherModule(TINY, CLASSES, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), schedule="constant")
        if initial is not None:
            initial.update(copy.deepcopy(module.net.state_dict()))
        callbacks = [ExpertTrajectory(str(root / "trajectory")),
                     ModelCheckpoint(dirpath=root / "ckpt", filename="{epoch}", save_top_k=-1)]
        t = trainer(root, max_steps=-1, max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=True)
        try:
            t.fit(module, datamodule=expert_datamodule(data), ckpt_path=ckpt_path)
        finally:
            torch.set_num_threads(threads)
    return module


@pytest.fixture(scope="module")
def experts(data, tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("experts")
    initial = [{}, {}]
    for i in range(2):
        train_expert(data, base / f"expert_{i}", seed=i, initial=initial[i])
    return SimpleNamespace(base=base, pattern=str(base / "expert_*" / "trajectory"), initial=initial)


def net_weights(ckpt: Path) -> dict:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def test_trajectory_files_are_the_teachers_weights_at_every_epoch(experts) -> None:
    for i in range(2):
        root = experts.base / f"expert_{i}"
        files = trajectory_epochs(root / "trajectory")
        assert list(files) == list(range(EPOCHS + 1))
        for epoch, path in files.items():
            saved = torch.load(path, weights_only=True)
            assert saved["epoch"] == epoch and saved["global_step"] == 2 * epoch
            assert saved["tsgf"]["stage"] == "expert" and saved["tsgf"]["arch"]["init_args"]["channels"] == [4, 8, 8]
            want = experts.initial[i] if epoch == 0 else net_weights(root / "ckpt" / f"epoch={epoch - 1}.ckpt")
            assert saved["state_dict"].keys() == want.keys()
            for k, v in want.items():
                assert torch.equal(saved["state_dict"][k], v), (i, epoch, k)
        assert not torch.equal(torch.load(files[0], weights_only=True)["state_dict"]["classifier.weight"],
                               torch.load(files[EPOCHS], weights_only=True)["state_dict"]["classifier.weight"])


def test_a_resumed_expert_continues_its_trajectory_and_drops_epochs_it_will_redo(data, experts, tmp_path) -> None:
    source = experts.base / "expert_0"
    shutil.copytree(source / "trajectory", tmp_path / "trajectory")
    before = {e: torch.load(p, weights_only=True)["state_dict"]
              for e, p in trajectory_epochs(source / "trajectory").items()}
    module = train_expert(data, tmp_path, seed=0, max_epochs=2, ckpt_path=str(source / "ckpt" / "epoch=0.ckpt"))
    files = trajectory_epochs(tmp_path / "trajectory")
    assert list(files) == [0, 1, 2]  # epoch 3 came from a run beyond this one's checkpoint: deleted
    for e in (0, 1):
        now = torch.load(files[e], weights_only=True)["state_dict"]
        assert all(torch.equal(v, before[e][k]) for k, v in now.items())
    last = torch.load(files[2], weights_only=True)["state_dict"]
    assert all(torch.equal(v, last[k].to(v)) for k, v in module.net.state_dict().items())
    with pytest.raises(RuntimeError, match="lacks epochs"):
        train_expert(data, tmp_path / "moved", seed=0, ckpt_path=str(source / "ckpt" / "epoch=1.ckpt"))


def test_the_bank_refuses_short_trajectories_and_other_data(experts) -> None:
    spec = DataSpec(datamodule_names(experts), 8, 48, IMAGENET_MEAN, IMAGENET_STD)
    assert len(ExpertBank(experts.pattern, EPOCHS, spec)) == 2
    with pytest.raises(ValueError, match="lacks epochs"):
        ExpertBank(experts.pattern, EPOCHS + 1, spec)
    with pytest.raises(ValueError, match="size = 48 but the data says 64"):
        ExpertBank(experts.pattern, EPOCHS, DataSpec(spec.class_names, 8, 64, IMAGENET_MEAN, IMAGENET_STD))
    with pytest.raises(FileNotFoundError, match="no expert trajectory"):
        ExpertBank(str(experts.base / "nowhere_*"), EPOCHS, spec)


def datamodule_names(experts) -> list[str]:
    path = trajectory_epochs(experts.base / "expert_0" / "trajectory")[0]
    return torch.load(path, weights_only=True)["tsgf"]["class_names"]


def make_mtt(experts):
    return lambda export_dir: MTTModule(CLASSES, experts.pattern, export_dir=export_dir, **MTT)


@pytest.fixture(scope="module")
def run(data, experts, tmp_path_factory) -> SimpleNamespace:
    return reference_run(make_mtt(experts), data, tmp_path_factory, "mtt_run", STEPS)


def test_the_unrolled_student_is_a_plain_sgd_loop_from_the_experts_weights(experts, run) -> None:
    module = run.module
    loss, end, expert, start = module.unroll(11)
    assert (expert, start) == module.draw(11)[:2] and 0 <= start < MTT["max_start_epoch"]
    files = trajectory_epochs(Path(experts.pattern.replace("*", str(expert))))
    begin = torch.load(files[start], weights_only=True)["state_dict"]
    target = torch.load(files[start + 1], weights_only=True)["state_dict"]
    net = TINY(CLASSES)
    net.load_state_dict(begin)
    net.eval()  # the unroll runs without dropout
    opt = torch.optim.SGD(net.parameters(), lr=module.learnt_rate())
    videos = module.videos.detach()
    for _ in range(MTT["syn_steps"]):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(videos), module.labels).backward()
        opt.step()
    for name, w in net.named_parameters():
        assert torch.allclose(end[name], w, atol=1e-6), name
    num = sum(((w.detach() - target[n]) ** 2).sum() for n, w in net.named_parameters())
    den = sum(((begin[n] - target[n]) ** 2).sum() for n, _ in net.named_parameters())
    assert torch.allclose(loss.detach(), num / den, rtol=1e-4)
    loss.backward()
    assert module.videos.grad.abs().sum() > 0 and module.syn_lr.grad is not None


def test_mtt_resumes_exactly_from_any_step(data, experts, run, tmp_path) -> None:
    assert_resumes_exactly(make_mtt(experts), data, run.root, run.module, tmp_path, STEPS, at=(1, 2))


def test_mtt_exports_the_learnt_rate_with_a_set_a_student_trains_on(data, run, tmp_path) -> None:
    d = exported(run.root)
    assert d["method"] == "mtt" and d["steps"] == STEPS and d["videos"].shape == (CLASSES, 3, 8, 48, 48)
    assert d["syn_lr"] == pytest.approx(run.module.learnt_rate()) and d["syn_lr"] > 0.001
    assert d["syn_lr"] != pytest.approx(MTT["syn_lr_init"], abs=1e-7)  # the rate was learnt
    assert len(d["experts"]) == 2 and d["expert_arch"]["class_path"] == "tsgf_lightning.models.ConvNet3D"
    assert_a_student_trains_on(run.root / "export" / "distilled.pt", data, tmp_path)


def test_a_student_with_lr_from_set_trains_at_the_learnt_rate_and_one_without_at_its_own(data, run, tmp_path):
    from tsgf_lightning.modules.student import StudentModule

    path = str(run.root / "export" / "distilled.pt")
    learnt = torch.load(path, weights_only=True)["syn_lr"]
    rates = {}
    for from_set in (True, False):
        student = StudentModule(TINY, CLASSES, labels="hard", mix="none", lr_from_set=from_set, schedule="step",
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
        t = trainer(tmp_path / f"student_{from_set}", max_steps=4)
        seen = []
        student.on_train_batch_start = lambda *a, s=seen, t=t: s.append(t.optimizers[0].param_groups[0]["lr"])
        t.fit(student, datamodule=datamodule(data, train_set="distilled", distilled_path=path))
        rates[from_set] = seen
    # Step schedule: the base rate for the first half of the 4 steps, a tenth of it after.
    assert rates[True] == pytest.approx([learnt, learnt, learnt / 10, learnt / 10])
    assert rates[False] == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_the_embedded_expert_and_mtt_configs_run_through_the_cli(data, tmp_path) -> None:
    common = [*data.embedded.cli_args(), f"--data.cache_dir={data.cache}", "--data.val_fraction=0",
              "--data.decode_workers=1", "--trainer.enable_progress_bar=false"]
    cli.main(["fit", "--config", str(REPO / "configs/embedded/data.yaml"), "--config",
              str(REPO / "configs/embedded/experts.yaml"), *common, "--trainer.max_epochs=2",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'experts'}",
              "--model.init_args.backbone.init_args.channels=[4,8,8]"])
    assert list(trajectory_epochs(tmp_path / "experts" / "expert_0" / "trajectory")) == [0, 1, 2]
    cli.main(["fit", "--config", str(REPO / "configs/embedded/data.yaml"), "--config",
              str(REPO / "configs/embedded/mtt.yaml"), *common, "--trainer.max_steps=2",
              f"--trainer.logger.init_args.save_dir={tmp_path}",
              f"--model.init_args.experts={tmp_path}/experts/*/trajectory", "--model.init_args.max_start_epoch=1",
              "--model.init_args.syn_steps=2", "--model.init_args.export_media=false"])
    assert torch.load(tmp_path / "mtt_ipc1" / "distilled.pt", weights_only=True)["steps"] == 2
