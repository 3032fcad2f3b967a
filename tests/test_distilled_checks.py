"""A distilled set is checked against the data it is used with; selections refuse impossible budgets.

Sets are written here with ``export_distilled`` for conftest's tiny embedded set (8 classes, 4
training clips each, 8 frames at 48x48), so each differs from a valid set in exactly one respect.
The teacher comparison runs real student fits with two of conftest's teachers (different seeds,
hence different files and digests).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.distilled import DistilledSetError
from tsgf_lightning.data.selection import select_clips
from tsgf_lightning.export import export_distilled
from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules.frozen import file_sha256, load_teacher
from tsgf_lightning.modules.student import StudentModule
from tsgf_lightning.select import main as select_main
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

CHANNELS = (4, 8, 8)


@pytest.fixture(scope="module")
def names(tiny_embedded) -> list[str]:
    return list(tiny_embedded.source().class_names)


def datamodule(tiny_embedded, cache: str, **kwargs) -> VideoDataModule:
    return VideoDataModule(tiny_embedded.source(), frames=8, size=48, flip=False, batch_size=4, num_workers=0,
                           cache_dir=cache, decode_workers=1, **kwargs)


def write_set(out: Path, class_names: list[str], labels: list[int] | None = None, ipc: int = 1,
              mean=IMAGENET_MEAN, std=IMAGENET_STD, teacher_sha256: str = "") -> Path:
    labels = torch.tensor(labels if labels is not None else range(len(class_names)), dtype=torch.int64)
    videos = torch.rand(len(labels), 3, 8, 48, 48, generator=torch.Generator().manual_seed(0))
    return export_distilled(out, videos, labels, class_names, ipc, list(mean), list(std), method="test",
                            teacher_sha256=teacher_sha256, media=False)


def refused(tiny_embedded, shared_cache_dir, path: Path) -> str:
    dm = datamodule(tiny_embedded, shared_cache_dir, train_set="distilled", distilled_path=str(path))
    with pytest.raises(DistilledSetError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(path) in message
    return message


def quiet_trainer(root: Path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, **kwargs)


# ================================================================================ the set and the data
def test_a_matching_set_loads_and_exposes_its_record(tiny_embedded, shared_cache_dir, names, tmp_path) -> None:
    path = write_set(tmp_path, names, teacher_sha256="ab" * 32)
    dm = datamodule(tiny_embedded, shared_cache_dir, train_set="distilled", distilled_path=str(path))
    dm.setup("fit")
    assert len(dm.train_data) == 8
    meta = dm.distilled_meta
    assert meta["path"] == str(path) and meta["teacher_sha256"] == "ab" * 32 and meta["class_names"] == names
    assert "videos" not in meta and "labels" not in meta


def test_a_set_of_other_class_names_is_refused_by_a_student_fit(tiny_embedded, shared_cache_dir, names,
                                                                   teacher_checkpoint, tmp_path) -> None:
    """Same count, frames and size, other classes: the issue's set of another dataset, which trained silently."""
    other = ["walk", "run", "jump", "swim", "climb", "throw", "kick", "wave"]
    path = write_set(tmp_path, other)
    dm = datamodule(tiny_embedded, shared_cache_dir, train_set="distilled", distilled_path=str(path))
    module = StudentModule(functools.partial(MiniC3D, channels=CHANNELS), dm.num_classes,
                           teacher_ckpt=teacher_checkpoint(channels=CHANNELS))
    with pytest.raises(DistilledSetError) as err:
        quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    message = str(err.value)
    assert str(path) in message and "other classes than the data's" in message
    for i in range(5):  # the first five differing positions, both names each
        assert f"position {i}: {other[i]!r} in the set, {names[i]!r} in the data" in message
    assert "and 3 more" in message


def test_a_set_of_the_same_classes_in_another_order_is_refused(tiny_embedded, shared_cache_dir, names,
                                                                 tmp_path) -> None:
    swapped = [names[1], names[0], *names[2:]]
    message = refused(tiny_embedded, shared_cache_dir, write_set(tmp_path, swapped))
    assert f"position 0: {names[1]!r} in the set, {names[0]!r} in the data" in message
    assert f"position 1: {names[0]!r} in the set, {names[1]!r} in the data" in message
    assert "position 2" not in message


@pytest.mark.parametrize("what", ["mean", "std"])
def test_a_set_of_other_normalisation_is_refused(tiny_embedded, shared_cache_dir, names, tmp_path, what) -> None:
    other = {"mean": dict(mean=[0.5, 0.5, 0.5]), "std": dict(std=[0.25, 0.25, 0.25])}[what]
    message = refused(tiny_embedded, shared_cache_dir, write_set(tmp_path, names, **other))
    want = list(IMAGENET_MEAN if what == "mean" else IMAGENET_STD)
    assert f"normalisation {what} = {other[what]}" in message and str(want) in message


def test_a_set_with_a_class_without_videos_is_refused(tiny_embedded, shared_cache_dir, names, tmp_path) -> None:
    # Eight videos, class 7 has none (class 0 has two): the count alone would pass.
    message = refused(tiny_embedded, shared_cache_dir, write_set(tmp_path, names, labels=[0, 0, 1, 2, 3, 4, 5, 6]))
    assert f"no video of classes [{names[7]!r}]" in message


def test_an_empty_set_is_refused(tiny_embedded, shared_cache_dir, names, tmp_path) -> None:
    """What ``select --ipc 0`` used to write: no video at all, ipc 0."""
    message = refused(tiny_embedded, shared_cache_dir, write_set(tmp_path, names, labels=[], ipc=0))
    assert "ipc = 0" in message and ">= 1" in message


def test_labels_inconsistent_with_ipc_are_refused(tiny_embedded, shared_cache_dir, names, tmp_path) -> None:
    message = refused(tiny_embedded, shared_cache_dir, write_set(tmp_path, names, ipc=2))
    assert "records ipc = 2" in message and f"{names[0]!r}: 1" in message and "8 classes" in message


# ================================================================================ the set's teacher
@pytest.fixture(scope="module")
def teachers(teacher_checkpoint) -> tuple[str, str]:
    a, b = teacher_checkpoint(channels=CHANNELS, seed=0), teacher_checkpoint(channels=CHANNELS, seed=1)
    assert file_sha256(a) != file_sha256(b)
    return a, b


def fit_student(tiny_embedded, shared_cache_dir, path: Path, teacher: str, root: Path) -> tuple[StudentModule, list]:
    dm = datamodule(tiny_embedded, shared_cache_dir, train_set="distilled", distilled_path=str(path))
    module = StudentModule(functools.partial(MiniC3D, channels=CHANNELS), dm.num_classes, teacher_ckpt=teacher)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_trainer(root, max_steps=1).fit(module, datamodule=dm)
    return module, [str(w.message) for w in caught if "distilled through" in str(w.message)]


def test_a_set_of_another_teacher_is_reported_not_refused(tiny_embedded, shared_cache_dir, names, teachers,
                                                           tmp_path) -> None:
    a, b = teachers
    path = write_set(tmp_path, names, teacher_sha256=file_sha256(a))
    module, warned = fit_student(tiny_embedded, shared_cache_dir, path, b, tmp_path)
    assert module.distilled_teacher_match is False and module.trainer.global_step == 1
    (message,) = warned
    assert str(path) in message and b in message
    assert file_sha256(a)[:12] in message and file_sha256(b)[:12] in message


def test_a_set_of_the_students_own_teacher_is_not_reported(tiny_embedded, shared_cache_dir, names, teachers,
                                                            tmp_path) -> None:
    a, _ = teachers
    module, warned = fit_student(tiny_embedded, shared_cache_dir, write_set(tmp_path, names,
                                                                            teacher_sha256=file_sha256(a)), a, tmp_path)
    assert module.distilled_teacher_match is True and warned == []


def test_a_set_without_a_teacher_is_not_reported(tiny_embedded, shared_cache_dir, names, teachers, tmp_path) -> None:
    _, b = teachers
    module, warned = fit_student(tiny_embedded, shared_cache_dir, write_set(tmp_path, names), b, tmp_path)
    assert module.distilled_teacher_match is None and warned == []


# ================================================================================ selection budgets
@pytest.fixture
def select_config(tiny_embedded, tmp_path) -> tuple[Path, Path]:
    """A stage config whose data section reads the tiny set, with a decode cache that does not exist yet."""
    cache = tmp_path / "cache"
    config = {"data": {"source": tiny_embedded.yaml_source(), "frames": 8, "size": 48, "num_workers": 0,
                       "cache_dir": str(cache), "decode_workers": 1}}
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, cache


@pytest.mark.parametrize("flag,value", [("--ipc", "0"), ("--ipc", "-1"), ("--factor", "0")])
def test_select_refuses_a_budget_below_one_before_decoding(select_config, tmp_path, capsys, flag, value) -> None:
    config, cache = select_config
    out = tmp_path / "out"
    budget = {"--ipc": "1", "--factor": "1", flag: value}
    argv = ["--config", str(config), "--method", "random", "--output-dir", str(out), "--no-media",
            "--ipc", budget["--ipc"], "--factor", budget["--factor"]]
    with pytest.raises(SystemExit) as exit_info:
        select_main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected an integer >= 1 but got {value}" in capsys.readouterr().err
    assert not out.exists() and not cache.exists()


def test_select_refuses_a_teacher_method_without_a_teacher_before_decoding(select_config, tmp_path, capsys) -> None:
    config, cache = select_config
    argv = ["--config", str(config), "--method", "herding", "--ipc", "1", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        select_main(argv)
    assert exit_info.value.code == 2
    assert "--method herding ranks clips by a teacher's outputs: give --teacher-ckpt" in capsys.readouterr().err
    assert not cache.exists()


def test_a_teacher_selection_needs_the_loaded_teacher(tiny_embedded, shared_cache_dir) -> None:
    with pytest.raises(ValueError, match="selection 'kcenter' ranks clips by the teacher's outputs: pass the loaded"):
        select_clips(datamodule(tiny_embedded, shared_cache_dir), "kcenter", 1)


def test_too_few_clips_for_a_random_subset_names_ipc_factor_and_the_class(tiny_embedded, shared_cache_dir,
                                                                          names) -> None:
    dm = datamodule(tiny_embedded, shared_cache_dir, train_set="random", ipc=2, subset_factor=2)
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    assert str(err.value).startswith(f"class {names[0]!r} has 4 training videos, fewer than ipc=2 x factor^2 4 = 8 "
                                     "clips needed (each stored video packs factor x factor clips)")


def test_too_few_clips_for_a_teacher_selection_names_ipc_factor_and_the_class(tiny_embedded, shared_cache_dir, names,
                                                                              teachers) -> None:
    dm = datamodule(tiny_embedded, shared_cache_dir)
    teacher, _ = load_teacher(teachers[0], dm.num_classes, spec=dm.spec)
    with pytest.raises(ValueError, match=rf"class {names[0]!r} has 4 training videos, fewer than ipc=1 x factor\^2 9 "
                                         r"= 9 clips needed"):
        select_clips(dm, "herding", 1, teacher=teacher, factor=3)
    clips, labels, _ = select_clips(dm, "herding", 1, teacher=teacher, factor=2)  # 4 = every clip of a class
    assert clips.shape[0] == 8 * 4 and labels.tolist() == [c for c in range(8) for _ in range(4)]
