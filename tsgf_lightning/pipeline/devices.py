"""Which GPUs each stage may use, so that stages running at once never share one.

What a stage wants comes from its resolved config (:func:`wanted`): ``trainer.accelerator: cpu``
(or no GPU on the machine) wants none and runs as before; otherwise ``trainer.devices`` says how
many: an int ``n`` wants any ``n`` GPUs, ``-1`` or ``auto`` wants every one (so it runs alone among
the GPU stages), and a list names particular ones (indices into the GPUs visible to the pipeline).
:func:`place` picks free GPUs for a want; the scheduler starts a stage only when its want can be
placed and gives it ``CUDA_VISIBLE_DEVICES`` (:func:`visible_devices`). The GPUs are found without
importing torch (:func:`detect_gpus`): ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence

#: What a stage wants: None (no GPU), an int n >= 1 (any n GPUs), or a tuple (exactly these GPUs).
Want = int | tuple[int, ...] | None

_GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def wanted(trainer: Mapping, gpus: int) -> Want:
    """The GPUs a stage with resolved ``trainer`` settings wants on a machine with ``gpus`` GPUs.

    ``-1`` and ``"auto"`` become every GPU, as a tuple (``(0, 1, ..., gpus - 1)``), which only
    an idle machine can place. Lightning's string forms are read as it reads them: ``"2"`` is two
    GPUs, ``"0,2"`` (any string with a comma) the GPUs 0 and 2.

    Raises:
        ValueError: the stage asks for more GPUs than there are, or names one that is not there.
    """
    accelerator = trainer.get("accelerator", "auto")
    if isinstance(accelerator, Mapping):  # an Accelerator given by class_path
        accelerator = str(accelerator.get("class_path", "")).rsplit(".", 1)[-1].lower().replace("accelerator", "")
    if gpus == 0 or str(accelerator).lower() not in _GPU_ACCELERATORS:
        return None
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            devices = -1
        elif "," in text:
            devices = [int(d) for d in text.split(",") if d.strip()]
        else:
            devices = int(text)
    if isinstance(devices, int) and devices == -1:
        return tuple(range(gpus))
    if isinstance(devices, int):
        if not 1 <= devices <= gpus:
            raise ValueError(f"trainer.devices={devices} asks for {devices} GPU(s) but {gpus} are visible")
        return devices
    devices = tuple(int(d) for d in devices)
    absent = [d for d in devices if not 0 <= d < gpus]
    if not devices or absent:
        raise ValueError(f"trainer.devices={list(devices)} names GPU(s) {absent or '(none)'} but the visible ones "
                         f"are 0..{gpus - 1}")
    return devices


def place(want: Want, free: Sequence[int]) -> tuple[int, ...] | None:
    """The GPUs to give a stage that wants ``want`` while ``free`` are unused, or None if it must wait.

    A CPU stage (``None``) always fits and gets ``()``; a count takes the lowest free indices; a
    tuple fits only if all of its GPUs are free.
    """
    if want is None:
        return ()
    if isinstance(want, tuple):
        return want if set(want) <= set(free) else None
    return tuple(sorted(free)[:want]) if len(free) >= want else None


def visible_devices(want: Want, placed: tuple[int, ...], ids: Sequence[str]) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` of a stage given ``placed`` GPUs (None: leave the environment as it is).

    A stage that asked for a count sees only its GPUs (as 0..n-1, so ``devices: n`` uses them);
    one that named GPUs by index sees them all, since its indices refer to the pipeline's list
    (the scheduler still keeps the others' stages off its GPUs).
    """
    if want is None:
        return None
    chosen = range(len(ids)) if isinstance(want, tuple) else placed
    return ",".join(ids[i] for i in chosen)


def parse_nvidia_smi(text: str) -> tuple[str, ...]:
    """Device ids from ``nvidia-smi -L`` output: each GPU's index, or its MIG instances' UUIDs if it has any."""
    ids: list[str] = []
    for line in text.splitlines():
        gpu = re.match(r"^GPU (\d+):", line)
        mig = re.match(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)", line)
        if gpu:
            ids.append(gpu.group(1))
        elif mig and ids:
            if not ids[-1].startswith("MIG-"):
                ids.pop()  # the GPU is split: CUDA sees its instances, not the GPU itself
            ids.append(mig.group(1))
    return tuple(ids)


def detect_gpus(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The GPUs stages can see, as ``CUDA_VISIBLE_DEVICES`` entries (empty: none, or no NVIDIA driver).

    ``CUDA_VISIBLE_DEVICES`` when set (up to its first invalid entry, as CUDA reads it), else
    ``nvidia-smi -L``; torch is not imported (the pipeline's own process stays light).
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        ids = []
        for entry in environ["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return tuple(ids)
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else ()
