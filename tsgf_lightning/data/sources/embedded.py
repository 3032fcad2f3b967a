"""The embedded default dataset as a source: generated on first use, then read like any video folder."""

from __future__ import annotations

from ..embedded import generate_embedded
from .folder import VideoFolder


class Embedded(VideoFolder):
    """The project's own motion dataset (:mod:`tsgf_lightning.data.embedded`), generated into ``root``.

    Generation is deterministic and idempotent: the first run writes lossless ``.mkv`` files and a
    manifest (a few seconds); later runs find the manifest and read the files. Classes differ in how
    things move, so horizontal flips change labels: configs using it set ``data.flip: false``.

    Args:
        root: where the videos live (created if absent).
        train_per_class, test_per_class: clips per class in each split.
        frames, size: frames per generated clip and frame size.
        seed: generator seed.
    """

    def __init__(self, root: str = "data/embedded", train_per_class: int = 48, test_per_class: int = 24,
                 frames: int = 16, size: int = 64, seed: int = 0) -> None:
        generate_embedded(root, train_per_class, test_per_class, frames, size, seed, progress=True)
        super().__init__(root)
        self.generator_args = {"train_per_class": train_per_class, "test_per_class": test_per_class,
                               "frames": frames, "size": size, "seed": seed}

    def cache_key(self) -> dict:
        return {**super().cache_key(), "kind": "embedded", "generator": self.generator_args}
