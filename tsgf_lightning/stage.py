"""Run one stage: ``fit`` (resuming from ``last`` when asked) and optionally ``test``, in one process.

``python -m tsgf_lightning.stage --config FILE [--model.init_args.x=...] [--resume] [--validate] [--test] [--result OUT.json]``

``--validate`` records the validation carve-out's metrics after fit (how hyper-parameters are chosen,
never on the test split). Everything but these flags goes to LightningCLI unchanged, so a stage is exactly what
``python -m tsgf_lightning fit --config FILE ...`` would run. The pipeline launches each stage as its
own process: under DDP Lightning re-executes this command for the other ranks, which works because
the command is self-contained. The result file (test metrics, wall time) is written atomically by
rank 0 after the stage has finished, so its existence means the stage is complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .cli import main as cli_main


def _pop_flag(argv: list[str], flag: str) -> bool:
    if flag in argv:
        argv.remove(flag)
        return True
    return False


def _pop_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag:
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith(flag + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def write_json_atomic(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def run(argv: list[str]) -> dict:
    """Run the stage described by ``argv``; returns the result dict (also written to ``--result``)."""
    argv = list(argv)
    resume = _pop_flag(argv, "--resume")
    test = _pop_flag(argv, "--test")
    validate = _pop_flag(argv, "--validate")
    result_path = _pop_value(argv, "--result")
    start = time.time()
    cli = cli_main(argv, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    if validate and not getattr(dm.hparams, "val_fraction", 0):
        raise SystemExit("--validate needs a validation carve-out: set data.val_fraction > 0")
    ckpt = None
    if resume:
        last = _last_checkpoint(trainer)
        ckpt = str(last) if last is not None else None
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    if trainer.interrupted:
        raise SystemExit(f"stage {argv} was interrupted; run it again to resume")
    result: dict = {"fit_seconds": round(time.time() - start, 1), "resumed_from": ckpt,
                    "global_step": int(trainer.global_step), "log_dir": trainer.log_dir}
    if validate:
        metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
        result["val"] = {k: float(v) for k, v in metrics.items()}
    if test:
        metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
        result["test"] = {k: float(v) for k, v in metrics.items()}
    result["seconds"] = round(time.time() - start, 1)
    if result_path and trainer.global_rank == 0:
        write_json_atomic(result, result_path)
    return result


def _last_checkpoint(trainer) -> Path | None:
    """The newest ``last*.ckpt`` of the run's ModelCheckpoint, if a previous attempt left one.

    Lightning names the file ``last-v1.ckpt`` when a ``last.ckpt`` it did not write is in the way
    (e.g. a run folder that was copied), so the newest of them is the one to resume from.
    """
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    dirpath = callback.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")
    candidates = sorted(Path(dirpath).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
