"""MTT's expert stage: trajectories of networks trained on real data, written one file per epoch, and read back.

An expert is a :class:`~tsgf_lightning.modules.teacher.TeacherModule` fit (the published buffers: a
ConvNet3D from scratch, plain SGD lr 0.01, no momentum, no weight decay, no augmentation;
``configs/embedded/experts.yaml``) with the :class:`ExpertTrajectory` callback, which writes the
network's weights before the first step (``epoch_000.pt``) and after every epoch ``e``
(``epoch_{e:03d}.pt``) into ``dirpath`` (default ``<log_dir>/trajectory``). Each file is written
atomically and holds ``{"state_dict", "epoch", "global_step", "tsgf"}`` (the record names the
architecture, classes, clip geometry and normalisation). One file per epoch keeps every write the
size of one network (a trajectory file rewritten each epoch would cost quadratic writes), and a resumed
fit continues the trajectory where its checkpoint left off. Several experts are several fits (seeds and
log versions differ); :class:`ExpertBank` reads them for :class:`~tsgf_lightning.modules.mtt.MTTModule`.
"""

from __future__ import annotations

import glob
import re
from collections import OrderedDict
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ..data.cache import save_atomic
from ..data.spec import DataSpec
from .frozen import checkpoint_record

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def epoch_path(dirpath: str | Path, epoch: int) -> Path:
    return Path(dirpath) / f"epoch_{epoch:03d}.pt"


def trajectory_epochs(dirpath: str | Path) -> dict[int, Path]:
    """The epoch files of a trajectory folder: ``{epoch: path}``."""
    found = {}
    for path in Path(dirpath).glob("epoch_*.pt"):
        if m := _EPOCH_FILE.fullmatch(path.name):
            found[int(m[1])] = path
    return dict(sorted(found.items()))


class ExpertTrajectory(L.Callback):
    """Write the module's ``net`` weights at the start of training and after every epoch (rank 0 only).

    Resuming: the files of epochs ``0 .. current_epoch`` must exist (a hole means the checkpoint was
    moved without its trajectory, and the run stops); files of later epochs, written by a run that went
    further than the checkpoint it is resumed from, are deleted, since this run writes those epochs again.

    Args:
        dirpath: the trajectory folder; None = ``<trainer.log_dir>/trajectory``.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "trajectory")

    def _write(self, trainer: L.Trainer, module, epoch: int) -> None:
        state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}
        record = checkpoint_record("expert", module.architecture(), module.num_classes, module.data_spec)
        save_atomic({"state_dict": state, "epoch": epoch, "global_step": int(trainer.global_step), "tsgf": record},
                    epoch_path(self.folder(trainer), epoch))

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        folder, done = self.folder(trainer), trainer.current_epoch
        if trainer.global_step == 0:
            done = 0
            self._write(trainer, pl_module, 0)
        have = trajectory_epochs(folder)
        missing = [e for e in range(done + 1) if e not in have]
        if missing:
            raise RuntimeError(f"expert trajectory {folder} lacks epochs {missing[:5]} that the checkpoint this run "
                               "resumes from has passed: move the trajectory with its checkpoints, or start over")
        for epoch, path in have.items():
            if epoch > done:
                path.unlink()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._write(trainer, pl_module, trainer.current_epoch + 1)


def expand_experts(experts: str | list[str]) -> list[Path]:
    """Trajectory folders named by ``experts``: folders or glob patterns (sorted matches of each, in order)."""
    patterns = [experts] if isinstance(experts, str) else list(experts)
    folders: list[Path] = []
    for pattern in patterns:
        if not glob.has_magic(pattern) and not Path(pattern).is_dir():  # a named folder is never skipped quietly
            raise FileNotFoundError(f"expert trajectory folder {pattern} does not exist (run the expert stage first?)")
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        folders += [Path(m) for m in matches if Path(m).is_dir()]
    if not folders:
        raise FileNotFoundError(f"no expert trajectory folder matches {patterns} (run the expert stage first?)")
    return folders


class ExpertBank:
    """Expert trajectories on disk, checked once and read an epoch at a time (a few kept in memory).

    A trajectory of ConvNet3D at 16x112x112 is about 0.7 GB for 50 epochs; MTT reads two epochs per step,
    so files are loaded on demand and the ``cache`` most recent kept.

    Args:
        experts: trajectory folders or glob patterns (:func:`expand_experts`).
        last_epoch: the highest epoch any step will read (``max_start_epoch - 1 + expert_epochs``).
        spec: the data the synthetic set is distilled from; the experts' records are checked against it.

    Raises:
        FileNotFoundError: no folder matches.
        ValueError: a trajectory ends before ``last_epoch``, or was trained on other classes, clip geometry
            or normalisation, or the experts differ in architecture.
    """

    def __init__(self, experts: str | list[str], last_epoch: int, spec: DataSpec, cache: int = 4):
        self.folders = expand_experts(experts)
        self.files: list[dict[int, Path]] = []
        self.arch: dict | None = None
        want = spec.record()
        for folder in self.folders:
            files = trajectory_epochs(folder)
            missing = [e for e in range(last_epoch + 1) if e not in files]
            if missing:
                raise ValueError(f"expert trajectory {folder} lacks epochs {missing[:5]} (it has {len(files)} files; "
                                 f"MTT reads epochs 0..{last_epoch}): train the experts longer or lower "
                                 "`max_start_epoch` / `expert_epochs`")
            record = torch.load(files[0], map_location="cpu", weights_only=True)["tsgf"]
            for key in ("class_names", "frames", "size", "mean", "std"):
                if key in record and record[key] != want[key]:
                    raise ValueError(f"expert trajectory {folder} was trained with {key} = {record[key]} but the "
                                     f"data says {want[key]}")
            if self.arch is not None and record["arch"] != self.arch:
                raise ValueError(f"expert trajectory {folder} holds {record['arch']} but {self.folders[0]} holds "
                                 f"{self.arch}: every expert must share one architecture")
            self.arch = record["arch"]
            self.files.append(files)
        self._cache: OrderedDict[tuple[int, int], dict[str, Tensor]] = OrderedDict()
        self._keep = cache

    def __len__(self) -> int:
        return len(self.folders)

    def state(self, expert: int, epoch: int) -> dict[str, Tensor]:
        """The ``state_dict`` of ``expert`` after ``epoch`` epochs (on the CPU; do not modify it)."""
        key = (expert, epoch)
        if key not in self._cache:
            self._cache[key] = torch.load(self.files[expert][epoch], map_location="cpu",
                                          weights_only=True)["state_dict"]
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]
