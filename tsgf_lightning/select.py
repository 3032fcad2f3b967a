"""Coreset baselines as distilled sets: pick IPC real clips per class and export them as ``distilled.pt``.

``python -m tsgf_lightning.select --config STAGE.yaml --method herding --ipc 5 --teacher-ckpt T.ckpt --output-dir D``

The data section of any stage config (teacher, synthesis or student) says which dataset and clip
geometry; the clips are the centre clips at the distilled resolution (exactly what random subsets
and synthesis initialisations use), so a student trains on them like on any synthetic set.
``random`` draws ``ipc`` clips per class with ``--seed``; ``herding``, ``kcenter`` and
``confident`` work on the teacher's penultimate features / logits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser

from .data.datamodule import VideoDataModule
from .data.selection import METHODS, select_clips
from .export import export_distilled
from .modules.frozen import load_teacher
from .tsgf.multiformation import pack_tiles


def datamodule_from_config(config_path: str, overrides: dict | None = None) -> VideoDataModule:
    """Instantiate the ``data`` section of a stage config (plus dotted ``overrides`` below ``data``)."""
    with open(config_path) as f:
        data_cfg = (yaml.safe_load(f) or {}).get("data")
    if data_cfg is None:
        raise ValueError(f"{config_path} has no `data` section")
    for key, value in (overrides or {}).items():
        data_cfg[key] = value
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VideoDataModule, "data")
    cfg = parser.parse_object({"data": data_cfg})
    return parser.instantiate_classes(cfg).data


def _at_least_one(text: str) -> int:
    """argparse type of ``--ipc`` / ``--factor``: an integer >= 1 (0 would write an empty set, -1 all but one clip)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {value}")
    return value


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a stage config whose `data` section names the dataset")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--ipc", type=_at_least_one, required=True, help="stored videos per class (>= 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factor", type=_at_least_one, default=1,
                   help="multi-formation: ipc * factor^2 clips per class, packed factor x factor per stored video")
    p.add_argument("--teacher-ckpt", default=None)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--no-media", action="store_true", help="write distilled.pt only")
    args = p.parse_args(argv)
    if args.method != "random" and args.teacher_ckpt is None:
        p.error(f"--method {args.method} ranks clips by a teacher's outputs: give --teacher-ckpt")
    dm = datamodule_from_config(args.config, {"train_set": "real", "distilled_path": None})
    # Loaded (and checked against the data) once, before any decoding.
    teacher = None if args.method == "random" else load_teacher(args.teacher_ckpt, dm.num_classes, spec=dm.spec)[0]
    dm.prepare_data()
    f2 = args.factor ** 2
    clips, labels, idx = select_clips(dm, args.method, args.ipc, args.seed, teacher, args.factor)
    paths = dm.part("fit").paths
    stored = pack_tiles(clips.float() / 255.0, args.factor)
    config = {"config": args.config, "method": args.method, "ipc": args.ipc, "seed": args.seed, "factor": args.factor}
    path = export_distilled(args.output_dir, stored, labels[::f2], dm.class_names, args.ipc, list(dm.mean),
                            list(dm.std), method=args.method, config=config, factor=args.factor,
                            extra={"init_paths": [paths[i] for i in idx.tolist()]}, media=not args.no_media)
    print(path)
    return path


if __name__ == "__main__":
    main()
