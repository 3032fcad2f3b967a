"""Shared fixtures: a tiny embedded dataset, a shared decode cache, a tiny trained teacher, and the
environment for ``python -m tsgf_lightning`` subprocesses.

Everything here is session-scoped and built on first request, so a test file that uses none of it
pays nothing. Fixtures (request them by name):

- ``tiny_embedded`` -> :class:`TinyEmbedded`: a generated embedded dataset (8 classes, 4 train and 2
  test clips per class, 8 frames of 48x48; about a second to write) and the ways to point a source,
  a YAML file or a CLI at it. Treat its files as read-only: tests that damage videos copy them first
  (:meth:`TinyEmbedded.copy_to`).
- ``shared_cache_dir`` -> ``str``: a decode cache shared by the whole session (tests that check the
  cache itself use their own ``tmp_path``).
- ``teacher_checkpoint`` -> ``make(channels=(4, 8, 8), max_steps=2, seed=0) -> str``: the path of a
  TeacherModule checkpoint trained for ``max_steps`` steps on ``tiny_embedded`` (8 frames, 48x48, no
  flips), with the ``tsgf`` record later stages check. Cached per argument set for the session;
  about two seconds the first time. Its accuracy is chance: it exists to be loaded, not trusted.
- ``write_video`` -> ``write(path, frames, codec="ffv1") -> Path``: write ``uint8`` frames
  ``(T, H, W, 3)`` losslessly with PyAV (FFV1 in Matroska, or ``"libx264rgb"``: lossless H.264 in
  MP4, whose header carries a frame count), independently of the package's own writer, so decoded
  frames can be compared exactly with the frames written.
- autouse ``one_thread``: every test runs torch on one intra-op thread and inside ``fork_rng``, so
  no test sees a global RNG state that depends on which tests ran before it.
- ``videos`` -> six small random FFV1 videos as ``VideoItem`` s in ``tmp_path`` (the cache tests).
- ``subprocess_env`` -> ``dict``: ``os.environ`` plus ``PYTHONPATH`` (the repository, so a child in
  another working directory imports this checkout) and one intra-op thread per process.

Why one thread: on a shared 2-core machine, torch's default of one thread per core makes tiny
tensor ops wait on each other (a 8x48x48 MiniC3D step measured 0.25 s with 2 threads, 0.03 s with 1).
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TinyEmbedded:
    """A generated embedded dataset and its ``Embedded`` arguments.

    Attributes:
        root: the dataset folder (``train/<class>/*.mkv``, ``test/<class>/*.mkv``, manifest).
        train_per_class, test_per_class, frames, size, seed: the generator's arguments.
    """

    root: str
    train_per_class: int = 4
    test_per_class: int = 2
    frames: int = 8
    size: int = 48
    seed: int = 0

    def init_args(self) -> dict:
        """``Embedded``'s constructor arguments (for YAML ``init_args`` or ``Embedded(**...)``)."""
        return {"root": self.root, "train_per_class": self.train_per_class, "test_per_class": self.test_per_class,
                "frames": self.frames, "size": self.size, "seed": self.seed}

    def source(self):
        """A fresh :class:`~tsgf_lightning.data.sources.Embedded` on this root (finds the manifest, writes nothing)."""
        from tsgf_lightning.data.sources import Embedded

        return Embedded(**self.init_args())

    def yaml_source(self) -> dict:
        """The ``data.source`` block of a config file."""
        return {"class_path": "tsgf_lightning.data.sources.Embedded", "init_args": self.init_args()}

    def cli_args(self) -> list[str]:
        """Command-line overrides that make any config read this dataset."""
        return ["--data.source=tsgf_lightning.data.sources.Embedded"] + [
            f"--data.source.init_args.{k}={v}" for k, v in self.init_args().items()]

    def copy_to(self, dest: Path) -> Path:
        """Copy the videos as a ``VideoFolder`` layout (``dest/{train,test}/<class>/*.mkv``, no manifest)."""
        for split in ("train", "test"):
            shutil.copytree(Path(self.root) / split, dest / split)
        return dest


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread and a forked global RNG around every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def digest_memo(tmp_path_factory):
    """The tests' own memo of video digests (tsgf_lightning.data.digests), not the user's; subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TSGF_DIGESTS", str(tmp_path_factory.mktemp("digests") / "file-digests.json"))
        yield


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory) -> TinyEmbedded:
    from tsgf_lightning.data.embedded import generate_embedded

    data = TinyEmbedded(root=str(tmp_path_factory.mktemp("tiny_embedded") / "embedded"))
    generate_embedded(data.root, data.train_per_class, data.test_per_class, data.frames, data.size, data.seed,
                      progress=False)
    return data


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("decode_cache"))


@pytest.fixture(scope="session")
def teacher_checkpoint(tiny_embedded, shared_cache_dir, tmp_path_factory):
    """Factory of tiny trained-teacher checkpoints (see the module docstring)."""
    out_dir = tmp_path_factory.mktemp("teachers")

    @functools.cache
    def make(channels: tuple[int, int, int] = (4, 8, 8), max_steps: int = 2, seed: int = 0) -> str:
        import lightning as L

        from tsgf_lightning.data.datamodule import VideoDataModule
        from tsgf_lightning.models import MiniC3D
        from tsgf_lightning.modules.teacher import TeacherModule

        path = out_dir / f"teacher-{'-'.join(map(str, channels))}-s{max_steps}-seed{seed}.ckpt"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng():  # weight init and shuffling draw from the global RNG
                torch.manual_seed(seed)
                dm = VideoDataModule(tiny_embedded.source(), frames=tiny_embedded.frames, size=tiny_embedded.size,
                                     flip=False, batch_size=8, num_workers=0, cache_dir=shared_cache_dir,
                                     decode_workers=1)
                model = TeacherModule(functools.partial(MiniC3D, channels=tuple(channels)), dm.num_classes)
                trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, default_root_dir=str(out_dir))
                trainer.fit(model, datamodule=dm)
                trainer.save_checkpoint(str(path))  # on_save_checkpoint adds the `tsgf` record
        finally:
            torch.set_num_threads(threads)
        return str(path)

    def factory(channels=(4, 8, 8), max_steps: int = 2, seed: int = 0) -> str:
        return make(tuple(channels), max_steps, seed)

    return factory


#: codec -> (container format, file suffix, pixel format, encoder options); all lossless for RGB input.
LOSSLESS_CODECS = {
    "ffv1": ("matroska", "mkv", "bgr0", {}),
    "libx264rgb": ("mp4", "mp4", "rgb24", {"crf": "0", "threads": "1"}),
}


def _write_video(path, frames: torch.Tensor, codec: str = "ffv1") -> Path:
    import av

    fmt, _, pix_fmt, options = LOSSLESS_CODECS[codec]
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected argument `frames` to be uint8 (T, H, W, 3) but got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    T, H, W, _ = frames.shape
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        for frame in frames.numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return Path(path)


@pytest.fixture(scope="session")
def write_video():
    return _write_video


@pytest.fixture
def videos(tmp_path, write_video) -> list:
    """Six :class:`~tsgf_lightning.data.sources.VideoItem`: 7-frame 20x24 FFV1 videos of random content, three
    per class, one group each (the cache tests' own small split)."""
    from tsgf_lightning.data.sources import VideoItem

    folder = tmp_path / "videos"
    folder.mkdir()
    items = []
    for i in range(6):
        frames = torch.randint(0, 256, (7, 20, 24, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        path = write_video(folder / f"clip{i}.mkv", frames)
        items.append(VideoItem(str(path), label=i % 2, group=f"g{i}"))
    return items


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PL_GLOBAL_SEED", None)
    return env


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory, tiny_embedded, shared_cache_dir, subprocess_env):
    """One complete pipeline run of the four methods, IPC 1, two seeds: (config dir, OUT, the run's stdout).

    Shared by the pipeline tests; a test that changes configs or outputs works on a copy.
    """
    from .pipeline_utils import FOUR, make_config_dir, run_cli

    base = tmp_path_factory.mktemp("pipeline")
    cfg = make_config_dir(base / "cfg", tiny_embedded, shared_cache_dir, {"ipc": [1], "seeds": 2, "methods": FOUR})
    out = base / "out"
    proc = run_cli(cfg, out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cfg, out, proc.stdout
