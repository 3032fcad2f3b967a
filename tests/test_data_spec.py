"""DataSpec: what the modules are given about their data, by the CLI link or once in ``setup``, never read later.

Checked: the DataModule has it right after ``__init__`` (nothing decoded); the CLI links it into
every stage's module without making it a user-settable or printed key and without putting it into
the saved hyper-parameters; a module built by hand takes its DataModule's, and refuses another one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tsgf_lightning import cli
from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.spec import DataSpec, resolve_spec
from tsgf_lightning.modules.synthesis import SynthesisModule
from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

MODELS = {
    "teacher": {"class_path": "tsgf_lightning.modules.teacher.TeacherModule",
                "init_args": {"backbone": {"class_path": "tsgf_lightning.models.MiniC3D",
                                           "init_args": {"channels": [4, 8, 8]}}}},
    "synthesis": {"class_path": "tsgf_lightning.modules.synthesis.SynthesisModule",
                  "init_args": {"teacher_ckpt": "not/read/before/setup.ckpt"}},
    "student": {"class_path": "tsgf_lightning.modules.student.StudentModule",
                "init_args": {"backbone": {"class_path": "tsgf_lightning.models.MiniC3D",
                                           "init_args": {"channels": [4, 8, 8]}}, "labels": "hard"}},
}


def spec_of(tiny_embedded, **changes) -> DataSpec:
    fields = dict(class_names=tiny_embedded.source().class_names, frames=8, size=48, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD)
    return DataSpec(**{**fields, **changes})


def stage_config(tiny_embedded, tmp_path: Path, stage: str) -> Path:
    config = {"model": MODELS[stage],
              "data": {"source": tiny_embedded.yaml_source(), "frames": 8, "size": 48, "num_workers": 0,
                       "cache_dir": str(tmp_path / "cache"), "train_set": "none"},
              "trainer": {"logger": False, "accelerator": "cpu", "default_root_dir": str(tmp_path)}}
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_datamodule_describes_its_data_before_anything_is_decoded(tiny_embedded, tmp_path) -> None:
    dm = VideoDataModule(tiny_embedded.source(), frames=8, size=48, cache_dir=str(tmp_path / "cache"))
    assert dm.spec == spec_of(tiny_embedded) and dm.spec.num_classes == dm.num_classes == 8
    assert not (tmp_path / "cache").exists()
    record = dm.spec.record()
    assert record == {"class_names": dm.class_names, "frames": 8, "size": 48, "mean": list(IMAGENET_MEAN),
                      "std": list(IMAGENET_STD)}
    assert all(type(v) in (list, int) for v in record.values())  # plain types for weights_only checkpoints


@pytest.mark.parametrize("stage", sorted(MODELS))
def test_the_cli_links_the_spec_into_every_stage_and_keeps_it_out_of_hparams(tiny_embedded, tmp_path,
                                                                              stage) -> None:
    built = cli.main(["--config", str(stage_config(tiny_embedded, tmp_path, stage))], run=False)
    assert built.model.data_spec == built.datamodule.spec == spec_of(tiny_embedded)
    assert "data_spec" not in built.model.hparams
    assert not (tmp_path / "cache").exists()  # linked at instantiation, before any decoding


def test_the_linked_spec_is_neither_printed_nor_settable(tiny_embedded, tmp_path, capsys) -> None:
    config = str(stage_config(tiny_embedded, tmp_path, "synthesis"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "data_spec" not in printed["model"]["init_args"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", config, "--model.init_args.data_spec.frames=4"], run=False)
    assert exit_info.value.code != 0


def test_a_module_built_by_hand_takes_its_datamodules_spec_and_refuses_another(tiny_embedded) -> None:
    ours = spec_of(tiny_embedded)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(spec=ours))
    assert resolve_spec(None, trainer, "M") is ours and resolve_spec(ours, None, "M") is ours
    assert resolve_spec(None, SimpleNamespace(datamodule=None), "M") is None
    other = spec_of(tiny_embedded, size=32, std=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"M was built with a `data_spec` other than its DataModule's "
                                         r"\(size: 32 vs 48; std: \(0\.5, 0\.5, 0\.5\) vs \(0\.229"):
        resolve_spec(other, trainer, "M")
    shuffled = spec_of(tiny_embedded, class_names=list(reversed(ours.class_names)))
    with pytest.raises(ValueError, match="the same classes in another order"):
        resolve_spec(shuffled, trainer, "M")


def test_synthesis_without_a_spec_or_a_video_datamodule_says_what_it_needs() -> None:
    module = SynthesisModule(num_classes=3, teacher_ckpt="unused.ckpt")
    module._trainer = SimpleNamespace(strategy=None, datamodule=None, world_size=1)
    with pytest.raises(ValueError, match="SynthesisModule needs its data's class names, geometry and normalisation"):
        module.setup("fit")


def test_a_spec_compares_equal_whatever_sequences_it_was_given() -> None:
    a = DataSpec(["x", "y"], 4, 16, [0.5, 0.5, 0.5], torch.tensor([0.25, 0.25, 0.25]).tolist())
    assert a == DataSpec(("x", "y"), 4, 16, (0.5,) * 3, (0.25,) * 3) and hash(a)
    with pytest.raises(ValueError, match="one value per channel"):
        DataSpec(["x"], 4, 16, (0.5, 0.5), (0.25,))
