"""MTTModule: matching training trajectories (Cazenavette et al. 2022) on videos, after the published video code.

Each step ``s``, with one generator seeded from ``step_seed(seed, s)``:

1. draw an expert ``i`` and a start epoch ``e`` in ``[0, max_start_epoch)``;
2. start a student (the experts' architecture) at the expert's weights after ``e`` epochs and take
   ``syn_steps`` SGD steps on the synthetic set with the learnable learning rate ``syn_lr``, keeping the
   graph (:func:`~tsgf_lightning.baselines.unroll_sgd`, ``torch.func.functional_call``);
3. ``L = ||w_end - w_i(e + k)||^2 / ||w_i(e) - w_i(e + k)||^2`` with ``k = expert_epochs``
   (:func:`~tsgf_lightning.baselines.trajectory_loss`);
4. SGD with momentum on the pixels (``lr_img``) and on ``syn_lr`` (``lr_lr``); then the pixels are
   clamped to the valid range and ``syn_lr`` to at least ``syn_lr_min``.

The experts come from the expert stage (:mod:`~.experts`), read two epoch files per step. The export
carries the learned rate as ``syn_lr``: the published evaluation trains students with it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..baselines import trajectory_loss, unroll_sgd
from ..data.spec import DataSpec
from ..models import build
from ..tsgf import step_seed
from ..video import denormalize
from .experts import ExpertBank
from .frozen import FrozenTeacher
from .pixel_set import DistilledSetModule, check_at_least, clamp_pixels_, initial_videos, refuse_processes


class MTTModule(DistilledSetModule):
    """IPC synthetic videos per class and a learning rate, learnt so a short student run follows an expert's.

    Hyper-parameters, with the published video code's values (method.md, "Baselines"):

    - experts: 30 trajectories of 50 epochs (the expert stage: ``configs/embedded/experts.yaml``);
    - ``syn_steps`` 10, ``expert_epochs`` 1, ``max_start_epoch`` 10 (published);
    - ``syn_lr_init`` 0.01, ``lr_lr`` 1e-5, ``syn_lr_min`` 0.001 (published: clipped at 0.001);
    - ``lr_img`` 1e5 (published, IPC 1 example), SGD ``momentum`` 0.5 on the pixels (published);
      ``lr_momentum`` 0.5 on the rate (published for image MTT; the video code's
      static/dynamic variant uses 0.9);
    - ``batch_syn`` None: the whole set in every unrolled step (published default); real initialisation;
    - 8000 steps in the published runs (``trainer.max_steps`` here).

    Where ours differs:

    - the student runs in eval mode (no dropout; the published student is in train mode, so ConvNet3D's
      dropout draws a new mask per unrolled step): the unroll is then a deterministic function of the pixels
      and the rate, which an exact resume needs; a BatchNorm expert uses its start epoch's running statistics;
    - with ``batch_syn`` set, each unrolled step draws its own minibatch (published: a permutation cut into
      chunks); the draws are seeded per step (published: NumPy's and Python's global RNGs, shuffling a
      buffer of experts in turn);
    - pixels are clamped to ``[0, 1]`` pixel space after each step (the published MTT does not clamp; the
      exported set is clamped anyway).

    Args:
        num_classes, ipc, export_dir, export_media, image_every_n_steps, data_spec: see
            :class:`~.pixel_set.DistilledSetModule`.
        experts: trajectory folders or glob patterns (e.g. ``runs/embedded/experts/expert_*/trajectory``).
        syn_steps: unrolled student steps per distillation step.
        expert_epochs: the target is this many epochs after the start.
        max_start_epoch: start epochs are drawn from ``[0, max_start_epoch)``.
        batch_syn: synthetic videos per unrolled step; None = all.
        lr_img, momentum: SGD on the pixels.
        syn_lr_init, lr_lr, lr_momentum, syn_lr_min: the learnable learning rate, its SGD, and its floor.
        init: ``real`` (random real training clips of each class, seed ``init_seed``) or ``noise``.
        init_seed: seed of the initialisation.
        seed: seed of the per-step draws (expert, start epoch, minibatches).
    """

    method = "mtt"

    def __init__(
        self,
        num_classes: int,
        experts: str | list[str],
        ipc: int = 1,
        syn_steps: int = 10,
        expert_epochs: int = 1,
        max_start_epoch: int = 10,
        batch_syn: int | None = None,
        lr_img: float = 1e5,
        momentum: float = 0.5,
        syn_lr_init: float = 0.01,
        lr_lr: float = 1e-5,
        lr_momentum: float = 0.5,
        syn_lr_min: float = 0.001,
        init: Literal["real", "noise"] = "real",
        init_seed: int = 0,
        seed: int = 0,
        export_dir: str | None = None,
        export_media: bool = True,
        image_every_n_steps: int = 0,
        data_spec: DataSpec | None = None,
    ):
        super().__init__(num_classes, ipc, export_dir, export_media, image_every_n_steps, data_spec)
        check_at_least(1, syn_steps=syn_steps, expert_epochs=expert_epochs, max_start_epoch=max_start_epoch,
                       batch_syn=batch_syn or 1)
        if syn_lr_init < syn_lr_min or syn_lr_min < 0:
            raise ValueError(f"Expected `syn_lr_init` >= `syn_lr_min` >= 0 but got {syn_lr_init} and {syn_lr_min}")
        self.save_hyperparameters(ignore=["data_spec"])
        self.videos: nn.Parameter | None = None
        self.syn_lr = nn.Parameter(torch.tensor(float(syn_lr_init)))
        self.init_paths: list[str] = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        if self.videos is not None:
            return
        refuse_processes(self.trainer.strategy, self._world, "MTTModule", shards=False)
        h, spec = self.hparams, self._resolve_spec()
        self.bank = ExpertBank(h.experts, h.max_start_epoch - 1 + h.expert_epochs, spec)
        # The student's architecture: its own parameters are never used (functional_call), only its buffers.
        self.student = FrozenTeacher(build(self.bank.arch))
        self.param_names = [n for n, _ in self.student.net.named_parameters()]
        labels = torch.arange(self.num_classes).repeat_interleave(self.ipc)
        init, self.init_paths = initial_videos(self._datamodule(), h.init, self.ipc, h.init_seed, spec)
        self.videos = nn.Parameter(init.to(self.device))
        self.register_buffer("labels", labels.to(self.device))

    def on_fit_start(self) -> None:
        self.student.follow(self)

    def configure_optimizers(self):
        h = self.hparams
        return torch.optim.SGD([{"params": [self.videos], "lr": h.lr_img, "momentum": h.momentum},
                                {"params": [self.syn_lr], "lr": h.lr_lr, "momentum": h.lr_momentum}])

    # ------------------------------------------------------------------ the step
    def draw(self, step: int) -> tuple[int, int, torch.Generator]:
        """Step ``step``'s expert and start epoch, and the generator its minibatches continue from."""
        gen = torch.Generator().manual_seed(step_seed(self.hparams.seed, step))
        expert = int(torch.randint(len(self.bank), (), generator=gen))
        start = int(torch.randint(self.hparams.max_start_epoch, (), generator=gen))
        return expert, start, gen

    def _params(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: state[n].to(device=self.device, dtype=self.dtype) for n in self.param_names}

    def unroll(self, step: int) -> tuple[Tensor, dict[str, Tensor], int, int]:
        """Step ``step``'s loss and the student's end weights (with the graph), expert and start epoch."""
        h = self.hparams
        expert, start, gen = self.draw(step)
        start_state = self.bank.state(expert, start)
        self.student.net.load_state_dict(start_state)  # the buffers (BatchNorm statistics), if any
        begin, target = self._params(start_state), self._params(self.bank.state(expert, start + h.expert_epochs))
        end = unroll_sgd(self.student.net, begin, self.videos, self.labels, self.syn_lr, h.syn_steps,
                         batch_size=h.batch_syn, generator=gen)
        return trajectory_loss(end, begin, target), end, expert, start

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _, expert, start = self.unroll(self.global_step)
        self._check_finite(loss.detach(), f"loss={loss.item():.4g}, syn_lr={self.syn_lr.item():.4g}")
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/syn_lr", self.syn_lr.detach(), prog_bar=True)
        self.log("train/start_epoch", float(start))
        self.log("train/expert", float(expert))
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        # Clamps complete the step before any callback (ModelCheckpoint) sees it.
        optimizer.step(closure=optimizer_closure)
        clamp_pixels_(self.videos, *self._norm)
        with torch.no_grad():
            self.syn_lr.clamp_(min=self.hparams.syn_lr_min)

    # ------------------------------------------------------------------ export
    def full_set(self) -> tuple[Tensor, Tensor]:
        return denormalize(self.videos.detach(), *self._norm).clamp(0, 1), self.labels

    def learnt_rate(self) -> float:
        return float(self.syn_lr.detach())

    def record(self) -> dict:
        return {**super().record(), "expert_arch": self.bank.arch, "experts": [str(f) for f in self.bank.folders],
                "syn_lr": self.learnt_rate(), "init_paths": list(self.init_paths)}

    def export_extra(self) -> dict:
        return {"syn_lr": self.learnt_rate(), "expert_arch": self.bank.arch,
                "experts": [str(f) for f in self.bank.folders], "init_paths": list(self.init_paths)}
