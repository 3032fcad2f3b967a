"""The one LightningDataModule shared by the teacher, synthesis and student stages.

What it serves for training is chosen by ``train_set``:

- ``real``: every real training clip (teacher), with clip-consistent random crop/flip;
- ``random``: ``ipc`` random real clips per class (seeded by ``subset_seed``), centre-cropped to
  ``size`` exactly like a synthesis initialisation, then augmented like a distilled set: the
  ``random`` and ``random+student`` baselines;
- ``distilled``: the videos of ``distilled_path`` (``distilled.pt``; checked against the config);
- ``none``: ``steps_per_epoch`` empty batches, for SynthesisModule, whose parameters are the data.

The *parts* it serves (:meth:`VideoDataModule.part`; "split" is the dataset's own train/test lists):
``fit``, the training split minus a validation carve-out by source group (``val_fraction``; never
the test split, so hyper-parameters can be chosen honestly), ``val``, and ``test``, the real test
split. Real videos are decoded once with PyAV into a cache (:mod:`~tsgf_lightning.data.cache`) in
``prepare_data``. :attr:`VideoDataModule.spec` is what the modules are given about the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, TypedDict

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from ..tsgf.multiformation import pack_tiles, unpack_tiles
from ..tsgf.selection import check_clips_per_class
from ..video import IMAGENET_MEAN, IMAGENET_STD
from .cache import ClipSpec, DecodedPart, load_or_decode
from .decode import Sampling
from .distilled import load_distilled
from .integrity import check_classes
from .sources import VideoItem, VideoSource, validation_split
from .spec import DataSpec
from .transforms import ClipTransform, center_crop

TrainSet = Literal["real", "random", "distilled", "none"]
Part = Literal["fit", "val", "test"]


class VideoBatch(TypedDict):
    """The batch contract of every loader (``none`` batches carry only ``index``)."""

    video: Tensor  # (B, C, T, H, W) float32, normalised
    label: Tensor  # (B,) int64
    index: Tensor  # (B,) int64: position in the served set


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread, then restore the caller's setting.

    A clip's crop/resize/normalise ops touch ~10^5 elements: far too little for threads to pay, and on
    a loaded machine OpenMP's barriers make them ruinous (an 8x64x85 training transform measured
    66 ms with 2 threads, 1 ms with 1, on a busy 2-core machine). DataLoader workers already run
    single-threaded; this gives ``num_workers=0`` (transforms in the training process, between
    steps, never concurrently with them) the same speed. ``set_num_threads`` costs ~0.1 us.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def collate_clips(samples: list[dict]) -> dict:
    """``default_collate`` on one intra-op thread: stacking a batch of clips is a few MB of copying,
    which 2 contending OpenMP threads slowed from 1 ms to 180 ms (see :func:`_one_intra_op_thread`)."""
    with _one_intra_op_thread():
        return default_collate(samples)


class ClipDataset(Dataset):
    """Clips ``(N, K, C, T, H, W)`` (uint8, or float in [0, 1]) with labels; one of the K clips per access.

    ``repeats`` serves the set several times per epoch (tiny distilled sets would otherwise make
    one-step epochs); ``samples_per_epoch``, when given, fixes the epoch length instead, whatever the
    set's size (index ``i`` serves clip ``i mod N``). With K > 1 a random clip of the video is drawn
    each time (temporal jitter).
    """

    def __init__(self, clips: Tensor, labels: Tensor, transform: ClipTransform, repeats: int = 1,
                 samples_per_epoch: int | None = None):
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        self.clips, self.labels, self.transform = clips, labels, transform
        self.length = samples_per_epoch if samples_per_epoch else len(labels) * repeats

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        i = i % len(self.labels)
        k = int(torch.randint(self.clips.shape[1], ())) if self.clips.shape[1] > 1 else 0
        with _one_intra_op_thread():
            video = self.transform(self.clips[i, k])
        return {"video": video, "label": self.labels[i], "index": torch.tensor(i)}


class _StepDataset(Dataset):
    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i)}


class VideoDataModule(L.LightningDataModule):
    """Real, random-subset or distilled training clips, a validation carve-out, and the real test set.

    Args:
        source: the dataset layout (``UCF101``, ``HMDB51``, ``Kinetics``, ``SomethingSomethingV2``,
            ``VideoFolder``, ``Embedded``), chosen in YAML by ``class_path``.
        frames: frames per clip ``T``.
        size: network input height and width (and the stored size of distilled videos).
        resize: ``(H, W)`` frames are resized to when decoded, before cropping; None = ``(size, size)``.
        sampling: ``uniform`` (T frames spread over the whole video) or ``fixed_gap`` (VDSD).
        gap: frame gap for ``fixed_gap``.
        train_clips_per_video: clips cached per training video (temporal jitter for the teacher);
            test and validation always use one clip at the video's centre.
        train_set: what training serves (module docstring).
        ipc: clips per class for ``train_set: random``.
        subset_seed: seed of the random subset.
        distilled_path: the ``distilled.pt`` for ``train_set: distilled``.
        train_repeats: passes over the training set per epoch.
        samples_per_epoch: if set, every epoch serves this many training samples whatever the set's
            size (so a protocol of N steps means the same for IPC 1 and IPC 10); overrides ``train_repeats``.
        subset_factor: multi-formation factor of ``random`` subsets: ``ipc * f^2`` clips per class, packed
            ``f x f`` into ``ipc`` stored videos and served as tiles upsampled to ``size``
            (:mod:`~tsgf_lightning.tsgf.multiformation`); distilled sets carry their own factor.
        steps_per_epoch: batches per epoch for ``train_set: none``.
        val_fraction: fraction of training source groups held out for validation (0 = no validation).
        val_seed: seed of the carve-out.
        crop_scale, crop_ratio, flip: training augmentation (:class:`ClipTransform`).
        mean, std: normalisation in [0, 1] pixel units.
        batch_size: training batch size; eval_batch_size: validation/test batch size (default = batch_size).
        num_workers: DataLoader workers.
        cache_dir: where decoded parts are cached.
        decode_workers: processes decoding videos on first use; None = one per core this process may use.
        max_bad_fraction: unreadable videos tolerated per part (skipped with a warning) before it is an error.
    """

    def __init__(
        self,
        source: VideoSource,
        frames: int = 8,
        size: int = 64,
        resize: tuple[int, int] | None = None,
        sampling: Sampling = "uniform",
        gap: int = 4,
        train_clips_per_video: int = 1,
        train_set: TrainSet = "real",
        ipc: int = 1,
        subset_seed: int = 0,
        distilled_path: str | None = None,
        train_repeats: int = 1,
        samples_per_epoch: int | None = None,
        subset_factor: int = 1,
        steps_per_epoch: int = 100,
        val_fraction: float = 0.0,
        val_seed: int = 0,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 1,
        cache_dir: str = "data/cache",
        decode_workers: int | None = None,
        max_bad_fraction: float = 0.05,
    ):
        super().__init__()
        for name, value, low in (("frames", frames, 1), ("size", size, 1), ("ipc", ipc, 1),
                                 ("batch_size", batch_size, 1), ("train_clips_per_video", train_clips_per_video, 1),
                                 ("train_repeats", train_repeats, 1), ("subset_factor", subset_factor, 1)):
            if value < low:
                raise ValueError(f"Expected argument `{name}` to be >= {low} but got {value}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"Expected argument `val_fraction` to be in [0, 1) but got {val_fraction}")
        if train_set == "distilled" and not distilled_path:
            raise ValueError("`train_set: distilled` needs `distilled_path` (the synthesis stage's distilled.pt)")
        # The random-subset keys mean nothing for other train sets; saving them anyway would put a stale
        # `ipc` beside SynthesisModule's and Lightning refuses to log two values of one key.
        unused = [] if train_set == "random" else ["ipc", "subset_seed", "subset_factor"]
        self.save_hyperparameters(ignore=["source", *unused])
        self.source = source
        self.frames, self.size = frames, size
        self.resize = tuple(resize) if resize is not None else (size, size)
        self.train_set: TrainSet = train_set
        self.mean, self.std = tuple(mean), tuple(std)
        self.eval_batch_size = eval_batch_size or batch_size
        self._parts: dict[str, DecodedPart] = {}
        self.train_data: Dataset | None = None
        self.val_data: Dataset | None = None
        self.test_data: Dataset | None = None

    # ------------------------------------------------------------------ identity
    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def spec(self) -> DataSpec:
        """Class names, clip geometry and normalisation: what the modules are given (linked by the CLI)."""
        return DataSpec(self.class_names, self.frames, self.size, self.mean, self.std)

    # ------------------------------------------------------------------ decoding
    def items_by_part(self) -> dict[str, list[VideoItem]]:
        """The videos of each part (listing the dataset; nothing decoded): what the decode cache is keyed by."""
        train, h = self.source.items("train"), self.hparams
        fit, val = validation_split(train, h.val_fraction, h.val_seed) if h.val_fraction > 0 else (train, [])
        return {"fit": fit, "val": val, "test": self.source.items("test")}

    def clip_spec(self, part: str) -> ClipSpec:
        k = self.hparams.train_clips_per_video if part == "fit" else 1
        positions = tuple((i + 0.5) / k for i in range(k))
        return ClipSpec(self.frames, self.resize, self.hparams.sampling, self.hparams.gap, positions)

    def part(self, name: Part) -> DecodedPart:
        """A decoded real part: ``fit`` (the training split minus the validation carve-out), ``val`` or ``test``.

        Every load warns about the part's unreadable videos; ``fit`` without a clip of some class raises
        (:func:`~tsgf_lightning.data.integrity.check_classes`).
        """
        if name not in self._parts:
            self._load_part(name, self.items_by_part()[name])
        return self._parts[name]

    def _load_part(self, name: str, items: list[VideoItem]) -> None:
        if not items:
            raise ValueError(f"part {name!r} of {type(self.source).__name__} is empty")
        data = load_or_decode(self.hparams.cache_dir, self.source.cache_key(), name, items, self.clip_spec(name),
                              self.hparams.decode_workers, self.hparams.max_bad_fraction)
        check_classes(name, data.labels.tolist(), data.skipped, items, self.class_names)
        self._parts[name] = data

    def skipped_videos(self) -> dict[str, list[str]]:
        """The unreadable videos each loaded part left out: ``{part: [path, ...]}`` (``[]`` if none).

        Filled by :meth:`prepare_data` and :meth:`setup` (only the parts loaded so far; no decoding here).
        """
        return {name: list(data.skipped) for name, data in self._parts.items()}

    def prepare_data(self) -> None:
        # Runs on one process per node: decode (or find and verify) every part this run can need. The parts
        # are kept, so setup() in this process does not verify them again; other processes load their own.
        items = self.items_by_part()
        for name in ("fit", "val", "test"):
            if items[name] and name not in self._parts:
                self._load_part(name, items[name])

    # ------------------------------------------------------------------ real clips at distilled size
    def real_clips(self, part: Part = "fit") -> tuple[Tensor, Tensor]:
        """Centre clips of a real part at the distilled resolution: ``uint8 (N, C, T, size, size)``, labels ``(N,)``.

        The middle cached clip of each video, framed as the evaluation transform frames it: what a
        random subset serves and what synthesis initialises from.
        """
        data = self.part(part)
        k = data.clips.shape[1] // 2
        return center_crop(data.clips[:, k], self.size), data.labels

    def random_subset(self, ipc: int, seed: int, factor: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """``ipc * factor^2`` random real clips per class: ``(clips uint8 (N, C, T, size, size), labels, indices)``.

        Classes in label order, clips of a class in draw order; ``indices`` point into ``part("fit")``.
        ``factor`` is the multi-formation factor the clips will be packed with (``factor x factor`` per
        stored video). Raises, naming the class, ``ipc`` and ``factor``, if some class has too few training videos.
        """
        clips, labels = self.real_clips("fit")
        check_clips_per_class(labels, self.class_names, ipc, factor)
        k = ipc * factor * factor
        gen = torch.Generator().manual_seed(seed)
        chosen = []
        for c in range(self.num_classes):
            members = torch.nonzero(labels == c).flatten()
            chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
        idx = torch.cat(chosen)
        return clips[idx], labels[idx], idx

    # ------------------------------------------------------------------ Lightning hooks
    def _transform(self, train: bool) -> ClipTransform:
        h = self.hparams
        return ClipTransform(self.size, train, h.crop_scale, h.crop_ratio, h.flip, self.mean, self.std)

    def setup(self, stage: str) -> None:
        h = self.hparams
        if stage == "fit" and self.train_data is None:
            if self.train_set == "real":
                data = self.part("fit")
                self.train_data = self._train_dataset(data.clips, data.labels)
            elif self.train_set == "random":
                clips, labels, _ = self.random_subset(h.ipc, h.subset_seed, h.subset_factor)
                # Pack into the stored budget, then serve the tiles: exactly what a distilled set would hold.
                stored = pack_tiles(clips.float() / 255.0, h.subset_factor)
                self.train_data = self._train_dataset(unpack_tiles(stored, h.subset_factor), labels)
            elif self.train_set == "distilled":
                d = load_distilled(h.distilled_path, self.class_names, self.frames, self.size, self.mean, self.std)
                # What the set records about its making (teacher, method, ...), for the module's own checks:
                # Lightning runs this before the LightningModule's setup.
                self.distilled_meta = {k: v for k, v in d.items() if k not in ("videos", "labels")}
                self.distilled_meta["path"] = str(h.distilled_path)
                factor = int(d.get("factor", 1))
                labels = d["labels"].repeat_interleave(factor * factor)
                self.train_data = self._train_dataset(unpack_tiles(d["videos"].float(), factor), labels)
            else:
                self.train_data = _StepDataset(h.steps_per_epoch)
        if stage in ("fit", "validate") and self.val_data is None and h.val_fraction > 0:
            data = self.part("val")
            self.val_data = ClipDataset(data.clips, data.labels, self._transform(False))
        if stage == "test" and self.test_data is None:
            data = self.part("test")
            self.test_data = ClipDataset(data.clips, data.labels, self._transform(False))

    def _train_dataset(self, clips: Tensor, labels: Tensor) -> ClipDataset:
        h = self.hparams
        return ClipDataset(clips, labels, self._transform(True), h.train_repeats, h.samples_per_epoch)

    def _loader(self, data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, drop_last=False, collate_fn=collate_clips)

    def train_dataloader(self) -> DataLoader:
        if self.train_set == "none":
            return DataLoader(self.train_data, batch_size=1, shuffle=False)
        return self._loader(self.train_data, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_data, self.eval_batch_size, shuffle=False) if self.val_data is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_data, self.eval_batch_size, shuffle=False)
