"""``python -m tsgf_lightning.pipeline --config-dir DIR --output-dir OUT``: every stage, then one results table.

``DIR`` holds ``teacher.yaml``, ``synthesis.yaml``, ``student.yaml`` and ``pipeline.yaml``, and
optionally ``data.yaml`` (the ``data:`` block every stage reads) and ``synthesis_ipcK.yaml`` /
``student_ipcK.yaml`` (what differs at IPC K). Each stage composes ``data.yaml``, its own file and
its IPC file, in that order (repeated ``--config``; later files win). ``pipeline.yaml``::

    ipc: [1]              # IPCs to distil
    seeds: 3              # student seeds per (method, ipc): 0, 1, ..., seeds - 1
    jobs: 1               # stages run at once (independent ones only), each on cores / jobs threads
    methods: [full, random, random+student, tsgf]   # also built in: dm, mtt, vdsd
    extra_methods: {}     # name -> {select: synthesis|random, distiller: synthesis|dm|mtt|vdsd,
                          #          synthesis: {key: value}, student: {key: value}}
    evaluate_on: test     # what students are scored on: `test` (the table) or `val` (the carve-out)
    teacher: null         # an existing teacher checkpoint to use instead of training one
    experts: 2            # MTT's expert trajectories
    protocols: [tsgf]     # student protocols; each after the first adds rows <method>@<protocol>

``evaluate_on: val`` is how settings are chosen without touching the test split: the same methods,
each student scored on the validation carve-out (``data.val_fraction`` > 0) and the table headed so.

Stages (each ``python -m tsgf_lightning.stage`` in its own process, with ``--resume`` and ``--result``):

- ``teacher`` -> ``OUT/teacher`` (``checkpoints/last.ckpt`` is every later stage's ``teacher_ckpt``);
- ``experts_i`` (only for ``mtt``) -> ``OUT/experts/expert_i/trajectory``, MTT's experts;
- ``synthesis_ipcK`` -> ``OUT/synthesis_ipcK/distilled.pt`` for methods without synthesis
  overrides (``dm_ipcK``, ``mtt_ipcK``, ``vdsd_ipcK`` for the other distillers); a method with its
  own (``sre2l: {synthesis: {model.init_args.mask: none}}``) gets ``OUT/synthesis/<method>_ipcK``;
- students -> ``OUT/students/<method>/ipcK/seedS`` with ``--seed_everything=S --model.init_args.seed=S``.

Each stage's ``result.json`` records what it was (kind, method, IPC, seed, architecture), and the
table is built from those records. On a machine with GPUs, stages that run at once get GPUs of
their own (``CUDA_VISIBLE_DEVICES``), as many as their ``trainer.devices`` asks for; a stage that
wants every GPU runs alone (:mod:`~.devices`).

A stage is skipped only if it is done *and the same stage*: its ``result.json`` records the
fingerprint of its resolved config and of the content of its inputs (teacher checkpoint, distilled
set, expert trajectories, decoded data; :mod:`~tsgf_lightning.fingerprint`), and that fingerprint is still what the
configs and inputs give. Running the same command again redoes no finished stage and resumes an
interrupted one from its ``last.ckpt``; after a config change the changed stages and everything
downstream of them run again (the pipeline lists them with the keys that changed), and their old
outputs are moved to ``OUT/superseded/<time>/``, never deleted. Logs go to
``OUT/logs/<stage>.log``; results to ``OUT/results.{json,md}``, ``OUT/accuracy_vs_ipc.png`` and
``OUT/summary`` (TensorBoard); ``OUT/stages.json`` records each stage's command and wall time.

Modules: :mod:`~.config` (the config dir and ``pipeline.yaml``), :mod:`~.plan` (the stages),
:mod:`~.schedule` (running them), :mod:`~.devices` (GPU placement), :mod:`~.collect` (what they
report), :mod:`~.progress` (a stage's console line), :mod:`~.run` (all of it, and the command line).
"""

from .collect import collect_runs, result_of, skipped_videos, summary
from .config import (
    BUILTIN_METHODS,
    CONFIG_FILES,
    DATA_FILE,
    EVALUATE_ON,
    Method,
    PipelineConfig,
    PipelineError,
    load_pipeline_config,
    stage_files,
)
from .devices import detect_gpus, place, wanted
from .plan import Stage, check_config_dir, logger_dir, override, plan, resolve_stages
from .progress import StageProgress
from .run import main, run_pipeline
from .schedule import Scheduler

__all__ = ["BUILTIN_METHODS", "CONFIG_FILES", "DATA_FILE", "EVALUATE_ON", "Method", "PipelineConfig", "PipelineError",
           "Scheduler", "Stage", "StageProgress", "check_config_dir", "collect_runs", "detect_gpus",
           "load_pipeline_config", "logger_dir", "main", "override", "place", "plan", "resolve_stages", "result_of",
           "run_pipeline", "skipped_videos", "stage_files", "summary", "wanted"]
