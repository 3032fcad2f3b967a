"""Every shipped stage config parses against its LightningModule and the DataModule (GPU ones too).

``--print_config`` parses the whole file, class paths and init arguments included, and exits before
anything is instantiated, so configs for datasets that are not on this machine are checked too.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from tsgf_lightning.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "pipeline.yaml")


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # pytest's own argv is in sys.argv
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", str(path), "--print_config"], run=False)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    assert printed["model"]["class_path"] == yaml.safe_load(path.read_text())["model"]["class_path"]


def test_every_dataset_has_the_three_stages():
    dirs = {p.parent for p in CONFIGS}
    assert len(dirs) >= 6
    for d in dirs:
        names = {p.name for p in d.glob("*.yaml")}
        assert "teacher.yaml" in names and "student.yaml" in names, d
        assert any(n.startswith("synthesis") for n in names), d
