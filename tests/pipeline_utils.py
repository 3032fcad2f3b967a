"""Helpers of the pipeline tests: configs/embedded shrunk to seconds per stage, and the pipeline's CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "configs" / "embedded"
FOUR = ["full", "random", "random+student", "tsgf"]
TINY_NET = [4, 8, 8]  # ConvNet3D widths of the baselines' networks here
#: configs/embedded's baseline stage files shrunk to a few steps (their other keys as shipped).
BASELINE_EDITS = {
    "dm": {"trainer.max_steps": 2, "model.init_args.embed_backbone.init_args.channels": TINY_NET,
           "model.init_args.batch_real": 3},
    "vdsd": {"trainer.max_steps": 2, "model.init_args.static_steps": 1, "model.init_args.dynamic_steps": 1,
             "model.init_args.embed_backbone.init_args.channels": TINY_NET, "model.init_args.batch_real": 3},
    "experts": {"trainer.max_epochs": 2, "model.init_args.backbone.init_args.channels": TINY_NET,
                "data.batch_size": 8, "trainer.num_sanity_val_steps": 0},
    "mtt": {"trainer.max_steps": 2, "model.init_args.syn_steps": 2, "model.init_args.max_start_epoch": 1},
}


def _put(cfg: dict, key: str, value) -> None:
    *head, last = key.split(".")
    for k in head:
        cfg = cfg.setdefault(k, {})
    cfg[last] = value


def make_config_dir(out: Path, data, cache_dir: str, pipeline: dict, baselines: bool = False) -> Path:
    """configs/embedded/*.yaml shrunk to seconds per stage on ``data`` (conftest's ``tiny_embedded``).

    Written as a composed config dir: ``data.yaml`` holds the shared ``data:`` block (with the tiny
    source and the shared cache) and each stage file only its own keys. With ``baselines``, also
    dm.yaml, mtt.yaml, vdsd.yaml and experts.yaml (:data:`BASELINE_EDITS`).
    """
    out.mkdir(parents=True)
    shared = _load(EMBEDDED / "data.yaml").get("data", {}) if (EMBEDDED / "data.yaml").is_file() else {}
    shared.update(source=data.yaml_source(), cache_dir=cache_dir)
    (out / "data.yaml").write_text(yaml.safe_dump({"data": shared}))
    for stage in ("teacher", "synthesis", "student"):
        cfg = _load(EMBEDDED / f"{stage}.yaml")
        for key in ("source", "cache_dir"):  # data.yaml's, whatever the stage file says
            cfg.get("data", {}).pop(key, None)
        _put(cfg, "data.num_workers", 0)
        if stage == "synthesis":
            _put(cfg, "trainer.max_steps", 3)
            _put(cfg, "model.init_args.factor", 1)  # the tiny set has 3 clips a class, factor 2 needs 4
        else:
            _put(cfg, "trainer.max_epochs", 1)
            _put(cfg, "trainer.num_sanity_val_steps", 0)
            _put(cfg, "model.init_args.backbone.init_args.channels", [8, 8, 8])
        if stage == "student":
            _put(cfg, "data.train_repeats", 1)
        (out / f"{stage}.yaml").write_text(yaml.safe_dump(cfg))
    for stage, edits in (BASELINE_EDITS.items() if baselines else ()):
        cfg = _load(EMBEDDED / f"{stage}.yaml")
        for key, value in {"data.num_workers": 0, "trainer.log_every_n_steps": 1, **edits}.items():
            _put(cfg, key, value)
        (out / f"{stage}.yaml").write_text(yaml.safe_dump(cfg))
    (out / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return out


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def pipeline_command(config_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tsgf_lightning.pipeline", "--config-dir", str(config_dir), "--output-dir", str(out)]


def run_cli(config_dir: Path, out: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(pipeline_command(config_dir, out), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
