"""``python -m tsgf_lightning {fit,validate,test} --config FILE``: one LightningCLI for every stage.

Subclass mode: the YAML's ``model.class_path`` picks TeacherModule, SynthesisModule or StudentModule;
all share :class:`~tsgf_lightning.data.datamodule.VideoDataModule`, whose ``num_classes`` is linked
into the model, so a config never states the class count twice.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from . import strategy  # noqa: F401  (registers the `ddp_shards` strategy name)
from .data.datamodule import VideoDataModule


class TSGFCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> TSGFCLI:
    """Build the CLI (tests pass ``args``; ``run=False`` builds without running a subcommand)."""
    return TSGFCLI(L.LightningModule, VideoDataModule, subclass_mode_model=True,
                   save_config_kwargs={"overwrite": True}, args=args, run=run)
