"""Every shipped config dir: composed the way users and the pipeline run it, it parses and builds.

A config dir holds one ``data.yaml`` (the dataset: every stage reads it), one file per stage
(``teacher.yaml``, ``synthesis.yaml``, ``student.yaml``) and small override files
(``synthesis_ipcK.yaml``, ``framesN.yaml``) added after a stage's file with LightningCLI's repeated
``--config``. The tests check that each composition parses, that the data is stated once (no stage
file repeats a key of ``data.yaml``), that each override file changes exactly the keys it states,
that the commands the files' comments show name files that exist, and that every composition
builds its model, data and trainer (on the tiny embedded set for embedded configs; external
datasets when their root is present).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tsgf_lightning import cli
from tsgf_lightning.data.datamodule import VideoDataModule

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
DIRS = sorted(p for p in CONFIGS.iterdir() if p.is_dir())
STAGES = ("teacher", "synthesis", "student")  # every dir has these; the baselines' stage files where present
MODULES = {"teacher": "TeacherModule", "synthesis": "SynthesisModule", "student": "StudentModule",
           "dm": "DMModule", "mtt": "MTTModule", "vdsd": "VDSDModule", "experts": "TeacherModule"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _overrides(d: Path) -> list[tuple[str, Path]]:
    """(stage, override file): ``synthesis_ipcK.yaml`` applies to synthesis, ``framesN.yaml`` to every stage."""
    found = [(stage, p) for stage in STAGES for p in sorted(d.glob(f"{stage}_*.yaml"))]
    return found + [(stage, p) for p in sorted(d.glob("frames*.yaml")) for stage in STAGES]


COMPOSITIONS = [(d, stage, ()) for d in DIRS for stage in MODULES if (d / f"{stage}.yaml").is_file()]
COMPOSITIONS += [(d, stage, (extra,)) for d in DIRS for stage, extra in _overrides(d)]


def _files(d: Path, stage: str, extra: tuple[Path, ...]) -> list[Path]:
    return [d / "data.yaml", d / f"{stage}.yaml", *extra]


def _id(case) -> str:
    d, stage, extra = case
    return "/".join([d.name, stage, *(p.stem for p in extra)])


def _config_args(files: list[Path]) -> list[str]:
    return [a for f in files for a in ("--config", str(f))]


class _ParseOnly(cli.TSGFCLI):
    """The CLI's parser and checks (class paths import, init_args match signatures), no objects built."""

    def instantiate_classes(self) -> None:
        pass


def _resolved(files: list[Path], monkeypatch) -> dict:
    monkeypatch.setattr(cli, "TSGFCLI", _ParseOnly)
    config = cli.main(_config_args(files), run=False).config.as_dict()
    config.pop("config", None)
    return config


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


@pytest.fixture(autouse=True)
def _cli_sandbox(monkeypatch):
    """An in-process ``cli.main`` reseeds the global RNG and warns about pytest's own sys.argv."""
    monkeypatch.setattr(sys, "argv", ["tsgf_lightning"])
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    with torch.random.fork_rng():
        yield


def test_every_config_dir_has_its_data_file_and_stages():
    assert {d.name for d in DIRS} >= {"embedded", "ucf101_mini9", "miniucf", "hmdb51", "kinetics400", "ssv2"}
    for d in DIRS:
        assert (d / "data.yaml").is_file(), d
        assert set(_load(d / "data.yaml")) == {"data"}, f"{d / 'data.yaml'} should hold only the data block"
        assert all((d / f"{s}.yaml").is_file() for s in STAGES), d


@pytest.mark.parametrize("d", DIRS, ids=lambda d: d.name)
def test_the_data_is_stated_once(d):
    """A stage file may add stage-specific data keys (train_set, batch_size) but repeats none of data.yaml's."""
    shared = set(_load(d / "data.yaml")["data"])
    for stage in [s for s in MODULES if (d / f"{s}.yaml").is_file()]:
        own = set(_load(d / f"{stage}.yaml").get("data") or {})
        assert not own & shared, f"{d.name}/{stage}.yaml repeats data.yaml's {sorted(own & shared)}"


@pytest.mark.parametrize("case", COMPOSITIONS, ids=_id)
def test_composition_parses(case, monkeypatch):
    d, stage, extra = case
    parsed = _resolved(_files(d, stage, extra), monkeypatch)
    assert parsed["model"]["class_path"].endswith("." + MODULES[stage])
    assert parsed["data"]["source"]["class_path"].startswith("tsgf_lightning.data.sources.")


@pytest.mark.parametrize("case", [c for c in COMPOSITIONS if c[2]], ids=_id)
def test_an_override_file_changes_exactly_what_it_states(case, monkeypatch):
    """Repeated --config merges: the keys the file names change to its values, nothing else moves."""
    d, stage, extra = case
    base = _flat(_resolved(_files(d, stage, ()), monkeypatch))
    composed = _flat(_resolved(_files(d, stage, extra), monkeypatch))
    stated = _flat(_load(extra[0]))
    changed = {k for k in base.keys() | composed.keys() if base.get(k) != composed.get(k)}
    assert changed, f"{extra[0].name} changes nothing on {stage}"
    assert changed <= stated.keys(), f"{extra[0].name} also moved {sorted(changed - stated.keys())}"
    for key, value in stated.items():
        assert composed[key] == value, (key, composed[key], value)


def test_the_commands_in_the_comments_name_files_that_exist():
    for path in CONFIGS.rglob("*.yaml"):
        for name in re.findall(r"(configs/[\w./-]+\.yaml)", path.read_text()):
            assert (REPO / name).is_file(), f"{path.relative_to(REPO)} shows {name}, which does not exist"


@pytest.mark.parametrize("d", [d for d in DIRS if (d / "pipeline.yaml").is_file()], ids=lambda d: d.name)
def test_pipeline_file_loads(d):
    from tsgf_lightning.pipeline import load_pipeline_config

    cfg = load_pipeline_config(d / "pipeline.yaml")
    assert cfg.ipc and cfg.methods


@pytest.mark.parametrize("case", COMPOSITIONS, ids=_id)
def test_composition_instantiates(case, tiny_embedded, tmp_path, monkeypatch):
    """Build model, data and trainer as ``fit`` would (nothing is read but index files, nothing written)."""
    d, stage, extra = case
    monkeypatch.chdir(REPO)
    files = _files(d, stage, extra)
    data = _load(d / "data.yaml")["data"]
    overrides = [f"--trainer.default_root_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}",
                 f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    if data["source"]["class_path"].endswith(".Embedded"):
        overrides += tiny_embedded.cli_args()
        if any(p.name.startswith("frames") for p in extra):
            pytest.skip("the tiny embedded set has 8 frames")
    elif not (REPO / data["source"]["init_args"]["root"]).exists():
        pytest.skip(f"{d.name}: dataset root {data['source']['init_args']['root']} not present")
    built = cli.main([*_config_args(files), *overrides], run=False)
    assert isinstance(built.model, L.LightningModule) and isinstance(built.datamodule, VideoDataModule)
    assert built.model.num_classes == built.datamodule.num_classes  # linked, never stated twice
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # building writes nothing
