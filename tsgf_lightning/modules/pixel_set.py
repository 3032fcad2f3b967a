"""What DM, MTT and VDSD share: a LightningModule whose trainable parameters are synthetic data.

- :class:`RealClipBank`: the DataModule's real training clips at the distilled size, drawn per class
  and per step with a seeded generator (DM and VDSD compare them with the synthetic set);
- :func:`fresh_network`: a freshly initialised, frozen network whose weights depend only on a seed
  (DM's random embedding of each iteration), whatever the device or the global RNG state;
- :func:`clamp_pixels_`: keep normalised pixels inside ``[0, 1]`` pixel space after every step;
- :func:`refuse_processes`: the world sizes a method can run under, refused with a message otherwise;
- :class:`DistilledSetModule`: the base class: the data spec, the ``tsgf`` checkpoint record, TensorBoard
  frame grids, and the export of ``distilled.pt`` at the end of fit (:func:`~tsgf_lightning.export.export_distilled`).

Like :class:`~tsgf_lightning.modules.synthesis.SynthesisModule`, the set lives in normalised input
space (the published learning rates are for that space), each step's randomness comes from a
``torch.Generator`` seeded by :func:`~tsgf_lightning.tsgf.seeds.step_seed`, so a resumed run
repeats exactly the draws an uninterrupted one makes, and the modules bring their own
``configure_optimizers`` (the CLI's ``--optimizer`` is built before the set exists).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from ..data.selection import real_initialisation
from ..data.spec import DataSpec, resolve_spec
from ..export import export_distilled, plain_types
from ..models import describe
from ..strategy import ShardedSynthesisStrategy
from ..video import normalize, pixel_bounds
from ..visualize import frame_grid


class RealClipBank:
    """Real clips ``uint8 (N, C, T, S, S)`` and their labels, drawn ``per_class`` at a time.

    Kept on the CPU (a real training set does not fit a GPU); only the drawn clips travel, normalised.

    Raises:
        ValueError: a class of ``range(num_classes)`` has no clip.
    """

    def __init__(self, clips: Tensor, labels: Tensor, num_classes: int, mean, std):
        self.clips, self.labels, self.mean, self.std = clips, labels, tuple(mean), tuple(std)
        self.members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
        empty = [c for c, m in enumerate(self.members) if len(m) == 0]
        if empty:
            raise ValueError(f"the real training clips have no clip of classes {empty[:10]}: DM needs every class")

    def draw(self, generator: torch.Generator, per_class: int) -> list[Tensor]:
        """Indices of ``min(per_class, class size)`` clips of every class, without replacement.

        Every class is drawn, in label order, whichever classes the caller uses: the draws of a step are
        then the same on every rank and at every world size.
        """
        return [m[torch.randperm(len(m), generator=generator)[:per_class]] for m in self.members]

    def batch(self, index: Tensor, device, dtype) -> Tensor:
        """The clips at ``index`` as normalised float ``(n, C, T, S, S)`` on ``device``."""
        pixels = self.clips[index].to(device=device, dtype=dtype) / 255.0
        return normalize(pixels, self.mean, self.std)


def check_at_least(low: int, **values: int) -> None:
    """Refuse any argument below ``low``, naming it (``check_at_least(1, batch_real=0)``)."""
    for name, value in values.items():
        if value < low:
            raise ValueError(f"Expected argument `{name}` to be >= {low} but got {value}")


def initial_videos(dm, init: str, ipc: int, seed: int, spec: DataSpec) -> tuple[Tensor, list[str]]:
    """The starting set, normalised and clamped ``(classes * ipc, C, T, S, S)``, and the real clips' paths.

    ``init: real`` takes ``ipc`` random real training clips per class (the published initialisation);
    ``noise`` draws a standard normal from ``seed``.
    """
    if init == "real":
        pixels, paths = real_initialisation(dm, "random", ipc, seed)
        return clamp_pixels_(normalize(pixels, spec.mean, spec.std), spec.mean, spec.std), paths
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(spec.class_names) * ipc, 3, spec.frames, spec.size, spec.size, generator=gen)
    return clamp_pixels_(noise, spec.mean, spec.std), []


def fresh_network(backbone: Callable[[int], nn.Module], num_classes: int, seed: int) -> nn.Module:
    """``backbone(num_classes)`` initialised from ``seed`` on the CPU, frozen, in eval mode.

    Only the CPU generator is seeded, inside ``fork_rng``: the caller's global RNG state is untouched,
    and the weights are those of the CPU draw on every device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        net = backbone(num_classes)
    return net.eval().requires_grad_(False)


def network_seed(generator: torch.Generator) -> int:
    """A seed for :func:`fresh_network`, the first draw of a step's generator."""
    return int(torch.randint(0, 2 ** 62, (), generator=generator))


def clamp_pixels_(inputs: Tensor, mean, std) -> Tensor:
    """Clamp normalised videos ``(N, C, T, H, W)`` or frames ``(N, C, H, W)`` to pixels 0..1, in place."""
    lo, hi = pixel_bounds(mean, std, inputs)  # (1, C, 1, 1, 1)
    shape = (1, len(mean)) + (1,) * (inputs.dim() - 2)
    with torch.no_grad():
        return inputs.copy_(torch.maximum(torch.minimum(inputs, hi.view(shape)), lo.view(shape)))


def refuse_processes(strategy, world_size: int, owner: str, shards: bool) -> None:
    """Refuse world sizes and strategies ``owner`` cannot run under.

    Args:
        shards: the module shards its set by class under ``ddp_shards``
            (:class:`~tsgf_lightning.strategy.ShardedSynthesisStrategy`); False = one process only.
    """
    if shards and isinstance(strategy, DDPStrategy) and not isinstance(strategy, ShardedSynthesisStrategy):
        raise ValueError(
            f"{owner} cannot run under {type(strategy).__name__} (`strategy: ddp`): DDP would copy rank 0's "
            "synthetic videos to every rank and average their gradients. Use `trainer.strategy: ddp_shards`, "
            "which keeps one shard of classes per rank")
    if not shards and world_size > 1:
        raise ValueError(f"{owner} runs in one process ({world_size} were started): its loss couples every "
                         "class of the synthetic set, so a shard per rank would need gradient exchange it does "
                         "not do. Use `trainer.devices: 1`")


class DistilledSetModule(L.LightningModule):
    """Base of the baselines' modules: data spec, record, frame grids, export at the end of fit.

    Subclasses set :attr:`method` (the name in ``distilled.pt``), implement :meth:`full_set` (the whole
    set in ``[0, 1]`` pixels and its labels, on every rank) and may add entries with :meth:`export_extra`.

    Args:
        num_classes: linked from the data.
        ipc: videos per class in the exported set (the storage budget).
        export_dir: where ``distilled.pt`` and pictures go at the end of fit (default: the logger's dir).
        export_media: also write a frame grid PNG per class and an MP4 per video.
        image_every_n_steps: TensorBoard frame grid of the first video of each class (0 = never).
        data_spec: linked from ``data.spec``; None = the DataModule's, taken in ``setup``.
    """

    method = ""

    def __init__(self, num_classes: int, ipc: int, export_dir: str | None, export_media: bool,
                 image_every_n_steps: int, data_spec: DataSpec | None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"Expected argument `num_classes` to be >= 2 but got {num_classes}")
        if ipc < 1:
            raise ValueError(f"Expected argument `ipc` to be >= 1 but got {ipc}")
        self.num_classes, self.ipc, self.data_spec = num_classes, ipc, data_spec
        self.export_dir, self.export_media, self.image_every_n_steps = export_dir, export_media, image_every_n_steps

    # ------------------------------------------------------------------ set-up helpers
    def _resolve_spec(self) -> DataSpec:
        spec = self.data_spec = resolve_spec(self.data_spec, self._trainer, type(self).__name__)
        if spec is None:
            raise ValueError(f"{type(self).__name__} needs its data's class names, geometry and normalisation: fit "
                             "it with a VideoDataModule, or pass `data_spec` (the DataModule's `spec`)")
        return spec

    def _embedding_setup(self, shards: bool) -> tuple[DataSpec, object]:
        """What DM and VDSD set up alike: the world check, the spec, the real-clip bank and the embedder's record.

        Returns the data spec and the DataModule.
        """
        refuse_processes(self.trainer.strategy, self._world, type(self).__name__, shards=shards)
        spec, dm = self._resolve_spec(), self._datamodule()
        self.bank = RealClipBank(*dm.real_clips("fit"), self.num_classes, spec.mean, spec.std)
        self.embed_arch = describe(fresh_network(self.embed_backbone, self.num_classes, 0))
        return spec, dm

    def _datamodule(self):
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "real_clips"):
            raise ValueError(f"{type(self).__name__} reads real training clips: fit it with a VideoDataModule "
                             "(`train_set: none` serves the steps)")
        return dm

    @property
    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def _norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.data_spec.mean, self.data_spec.std

    def _sum_over_ranks(self, t: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum") if self._world > 1 else t

    def _check_finite(self, loss: Tensor, detail: str) -> None:
        finite = bool(torch.isfinite(loss).item())
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise FloatingPointError(f"{type(self).__name__} loss is not finite at step {self.global_step} "
                                     f"({detail}); stopped before the update: lower the learning rates")

    # ------------------------------------------------------------------ what subclasses provide
    def full_set(self) -> tuple[Tensor, Tensor]:
        """The whole set ``[0, 1]`` ``(N, C, T, H, W)`` (class-major) and labels ``(N,)``, on every rank."""
        raise NotImplementedError

    def export_extra(self) -> dict:
        """Entries of ``distilled.pt`` beyond the set (plain types and tensors)."""
        return {}

    # ------------------------------------------------------------------ record, pictures, export
    def record(self) -> dict:
        """The ``tsgf`` record of a checkpoint (plain types; checkpoints load with ``weights_only``)."""
        return {"stage": self.method, "method": self.method, "num_classes": int(self.num_classes),
                "ipc": int(self.ipc), **self.data_spec.record(), "config": plain_types(dict(self.hparams))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tsgf"] = self.record()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.image_every_n_steps
        if every and self.global_step % every == 0:
            self._log_frames()

    def _log_frames(self, most: int = 8) -> None:
        videos, labels = self.full_set()  # a collective under sharding: every rank takes part
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(experiment, "add_image"):
            return
        first = torch.ones_like(labels, dtype=torch.bool)
        first[1:] = labels[1:] != labels[:-1]
        pick = torch.nonzero(first).flatten()[:most]
        experiment.add_image(f"{self.method}/frames", frame_grid(videos[pick].float().cpu()), self.global_step)

    def on_fit_end(self) -> None:
        videos, labels = self.full_set()
        if self.global_rank != 0:
            return
        out = self.export_dir or self.trainer.log_dir or self.trainer.default_root_dir
        self.exported_path: Path = export_distilled(
            out, videos.cpu(), labels.cpu(), list(self.data_spec.class_names), self.ipc, list(self.data_spec.mean),
            list(self.data_spec.std), method=self.method, config=plain_types(dict(self.hparams)),
            extra={**self.export_extra(), "steps": int(self.global_step)}, media=self.export_media)
