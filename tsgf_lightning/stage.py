"""Run one stage: ``fit`` (resuming from ``last`` when asked) and optionally ``test``, in one process.

``python -m tsgf_lightning.stage --config FILE [--config MORE ...] [--model.init_args.x=...] [--resume]
[--validate] [--test] [--method NAME] [--result OUT.json] [--fingerprint F.json]``

``--validate`` records the validation carve-out's metrics after fit (how hyper-parameters are chosen,
never on the test split). ``--fingerprint`` copies a fingerprint file (written by the pipeline from
the resolved config and the inputs' content hashes: :mod:`~tsgf_lightning.fingerprint`) into the
result, so the result says what produced it. The result's ``stage`` entry says what the stage was
(:func:`describe`): ``kind``, ``method`` (``--method``: the results-table row it belongs to, which
only the pipeline knows), ``ipc``, ``seed`` and ``arch``, read from the run itself. Everything but
these flags goes to LightningCLI unchanged, so a stage is exactly what
``python -m tsgf_lightning fit --config FILE ...`` would run. The pipeline launches each stage as its
own process: under DDP Lightning re-executes this command for the other ranks, which works because
the command is self-contained. The result file (test metrics, wall time) is written atomically by
rank 0 after the stage has finished, so its existence means the stage is complete.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .atomic import unwritable, write_json_atomic
from .cli import main as cli_main
from .cli import resume_checkpoint


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


def run(argv: list[str]) -> dict:
    """Run the stage described by ``argv``; returns the result dict (also written to ``--result``)."""
    argv = list(argv)
    resume = _pop_flag(argv, "--resume")
    test = _pop_flag(argv, "--test")
    validate = _pop_flag(argv, "--validate")
    result_path = _pop_value(argv, "--result")
    fingerprint_path = _pop_value(argv, "--fingerprint")
    method = _pop_value(argv, "--method")
    start = time.time()
    cli = cli_main(argv, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    if validate and not getattr(dm.hparams, "val_fraction", 0):
        raise SystemExit("--validate needs a validation carve-out: set data.val_fraction > 0")
    outputs = {"--result": Path(result_path).parent if result_path else None, "the logger's directory": trainer.log_dir,
               "model.init_args.export_dir": getattr(model.hparams, "export_dir", None)}
    for what, directory in outputs.items():
        if directory:
            require_writable_dir(directory, what)
    ckpt = None
    if resume:
        # A broken newest checkpoint (a run killed while saving) is renamed aside and the previous one
        # used, exactly as `fit --ckpt_path last` does.
        last = resume_checkpoint(trainer)
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
    result["skipped_videos"] = {part: paths for part, paths in dm.skipped_videos().items() if paths}
    if getattr(model, "distilled_teacher_match", None) is not None:
        result["distilled_teacher_match"] = bool(model.distilled_teacher_match)
    result["stage"] = describe(model, dm, cli.config.get("seed_everything"), method, trainer.callbacks)
    if fingerprint_path and Path(fingerprint_path).is_file():  # absent when a person runs the command by hand
        result["fingerprint"] = json.loads(Path(fingerprint_path).read_text())
    if result_path and trainer.global_rank == 0:
        write_json_atomic(result, result_path)
    return result


def describe(model, dm, seed, method: str | None, callbacks=()) -> dict:
    """``{"kind", "method", "ipc", "seed", "arch"}`` of a finished run, from its module, DataModule and seed.

    ``kind`` is the module's (teacher; experts: a teacher fit that records its trajectory; synthesis:
    any module whose parameters are the distilled set, TSGF's, DM's, MTT's or VDSD's; student; None
    for another LightningModule); ``arch`` the trained backbone's class name (None for synthesis,
    which trains no network); ``ipc`` the synthesis run's, the ``random`` subset's, or the distilled
    set's (None for a run on all real data); ``seed`` the resolved ``seed_everything`` (None when
    seeding is off).
    """
    from .modules.experts import ExpertTrajectory
    from .modules.pixel_set import DistilledSetModule
    from .modules.student import StudentModule
    from .modules.synthesis import SynthesisModule
    from .modules.teacher import TeacherModule

    kind = next((k for k, cls in (("teacher", TeacherModule), ("synthesis", (SynthesisModule, DistilledSetModule)),
                                  ("student", StudentModule)) if isinstance(model, cls)), None)
    if kind == "teacher" and any(isinstance(c, ExpertTrajectory) for c in callbacks):
        kind = "experts"
    arch = (model.architecture()["class_path"].rsplit(".", 1)[-1] if kind in ("teacher", "experts", "student")
            else None)
    ipc = None
    if kind == "synthesis":
        ipc = model.hparams.ipc
    elif kind == "student" and dm.train_set == "distilled":
        ipc = dm.distilled_meta["ipc"]
    elif kind == "student" and dm.train_set not in ("real", "none"):  # real clips picked per class: `random`
        ipc = dm.hparams.get("ipc")
    seed = None if isinstance(seed, bool) or seed is None else int(seed)
    return {"kind": kind, "method": method, "ipc": None if ipc is None else int(ipc), "seed": seed, "arch": arch}


def require_writable_dir(directory: str | Path, what: str) -> None:
    """Refuse an output directory that cannot be written before any work (decoding, training) is spent.

    The nearest existing ancestor must be a writable directory (the stage creates the rest).
    """
    why = unwritable(directory)
    if why is not None:
        raise SystemExit(f"error: cannot write {what} {Path(directory).absolute()}: {why}; choose another "
                         "directory (nothing has been decoded or trained)")


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # the args are sys.argv's own
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
