"""Real clips chosen per class from a DataModule's ``fit`` part: random, or by an already loaded teacher.

What coreset baselines export (:mod:`~tsgf_lightning.select`) and what synthesis initialises from
(``init: real``). The clips are the centre clips at the distilled resolution
(:meth:`~tsgf_lightning.data.datamodule.VideoDataModule.real_clips`); ``herding``, ``kcenter`` and
``confident`` rank them by the teacher's penultimate features or logits
(:mod:`~tsgf_lightning.tsgf.selection`). The caller loads the teacher (and checks it against the
data) once and passes it in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tsgf.multiformation import pack_tiles
from ..tsgf.selection import check_clips_per_class, select_per_class
from ..video import normalize

METHODS = ("random", "herding", "kcenter", "confident")


@torch.no_grad()
def teacher_outputs(teacher, clips: Tensor, mean, std, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Penultimate features ``(N, D)`` and logits ``(N, K)`` (on the CPU) of uint8 clips ``(N, C, T, H, W)``.

    Batches run on the device of the teacher's weights.
    """
    net = teacher.net
    device = next(net.parameters()).device
    feats, logits = [], []
    for i in range(0, len(clips), batch_size):
        x = normalize(clips[i:i + batch_size].to(device).float() / 255.0, mean, std)
        f = net.features(x)
        feats.append(f.cpu())
        logits.append(net.classifier(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def select_clips(dm, method: str, ipc: int, seed: int = 0, teacher=None, factor: int = 1) -> tuple:
    """``(clips uint8 (N, C, T, S, S), labels, indices into dm.part("fit"))`` chosen by ``method``.

    ``ipc * factor^2`` clips per class, class-major: with multi-formation each run of ``factor^2``
    clips is packed into one stored video. Raises, naming the class, if some class has too few clips.

    Args:
        dm: a :class:`~tsgf_lightning.data.datamodule.VideoDataModule`.
        method: one of :data:`METHODS`; ``random`` draws with ``seed``.
        teacher: the loaded :class:`~tsgf_lightning.modules.frozen.FrozenTeacher` (any method but ``random``).
    """
    if method not in METHODS:
        raise ValueError(f"Expected argument `method` to be one of {METHODS} but got {method!r}")
    if method == "random":
        return dm.random_subset(ipc, seed, factor)
    if teacher is None:
        raise ValueError(f"selection {method!r} ranks clips by the teacher's outputs: pass the loaded teacher")
    clips, labels = dm.real_clips("fit")
    check_clips_per_class(labels, dm.class_names, ipc, factor)
    features, logits = teacher_outputs(teacher, clips, dm.mean, dm.std)
    idx = select_per_class(labels, ipc * factor * factor, method, features=features, logits=logits)
    return clips[idx], labels[idx], idx


def real_initialisation(dm, method: str, ipc: int, seed: int = 0, teacher=None,
                        factor: int = 1) -> tuple[Tensor, list[str]]:
    """Synthesis's ``init: real``: ``ipc`` stored videos per class in ``[0, 1]`` pixels ``(N, C, T, S, S)``, and
    the paths of the real videos in them (``factor^2`` per stored video, in tile order).

    Classes in label order; each run of ``factor^2`` clips :func:`select_clips` returns is packed into
    one stored video (:func:`~tsgf_lightning.tsgf.multiformation.pack_tiles`).
    """
    clips, _, idx = select_clips(dm, method, ipc, seed, teacher, factor)
    paths = dm.part("fit").paths
    return pack_tiles(clips.float() / 255.0, factor), [paths[i] for i in idx.tolist()]
