"""Does the TSGF_O mask change Adam's update? Per-frame ``||update_masked|| / ||update_unmasked||`` vs the mask.

The paper multiplies each frame's gradient by the Eq. 8 mask ``m`` before the optimiser step. Adam
divides each element's first moment by the root of its second moment, so a factor ``m`` that stays
the same from step to step scales both by ``m`` and cancels; only exact zeros (no moment at all) and
changes of ``m`` faster than Adam's memory survive. This script measures that on a real synthesis
problem: a MiniC3D teacher trained on the embedded motion set, ``ipc`` real-initialised videos per
class, the synthesis loss of SynthesisModule (CE + Eq. 5 BN matching, crop augmentation), 50 steps.

Along each trajectory, every step feeds the same raw gradient ``g`` (per element) to two Adam states:

- ``unmasked``: Adam on ``g``; its update ``u``;
- ``gradient`` masking: Adam on ``m * g`` (its own moments, as the paper's optimiser would hold);
- ``update`` masking: ``m * u`` (SynthesisModule's ``mask_target: update``).

and records, per video and frame, ``r = ||update|| / ||u||`` with the frame's mask value ``m`` at that
step. With plain SGD ``r`` would equal ``m``. The trajectory itself follows the masked optimiser of
the run (so the masks are those such a run meets). Adam is written out here (the bias-corrected
moments of ``torch.optim.Adam``, no weight decay) and checked against ``torch.optim.Adam`` at start.

Usage::

    python benchmarks/mask_under_adam.py                          # trains a quick teacher first (~3 min)
    python benchmarks/mask_under_adam.py --teacher runs/embedded/teacher/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F

from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.sources import Embedded
from tsgf_lightning.models import MiniC3D
from tsgf_lightning.modules.classifier import lr_lambda
from tsgf_lightning.modules.frozen import load_teacher
from tsgf_lightning.modules.teacher import TeacherModule
from tsgf_lightning.tsgf import BNStatistics, temporal_saliency, tsgf_mask
from tsgf_lightning.tsgf.augment import apply_crop_flip, crop_flip_thetas
from tsgf_lightning.video import denormalize, normalize, pixel_bounds

ROOT = Path(__file__).resolve().parents[1]

BETAS, ADAM_EPS = (0.5, 0.9), 1e-8
BINS = [(0.0, 0.0), (0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, math.inf)]


class Adam:
    """``torch.optim.Adam``'s update direction ``m_hat / (sqrt(v_hat) + eps)`` for one tensor (lr applied by caller)."""

    def __init__(self, like: torch.Tensor):
        self.m, self.v, self.t = torch.zeros_like(like), torch.zeros_like(like), 0

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        self.t += 1
        b1, b2 = BETAS
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        return (self.m / (1 - b1**self.t)) / ((self.v / (1 - b2**self.t)).sqrt() + ADAM_EPS)


def check_adam() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(50, requires_grad=True)
    opt, ours = torch.optim.Adam([p], lr=1.0, betas=BETAS, eps=ADAM_EPS), Adam(p.detach())
    for _ in range(3):
        grad = torch.randn(50, generator=g)
        before = p.detach().clone()
        p.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(p.detach() - before, -ours.direction(grad), rtol=1e-5, atol=1e-6)


def datamodule(args, **kwargs) -> VideoDataModule:
    source = Embedded(args.data_root)  # the embedded configs' dataset (48 train / 24 test clips per class)
    return VideoDataModule(source, frames=8, size=48, flip=False, crop_scale=(0.7, 1.0), batch_size=16,
                           num_workers=0, cache_dir=args.cache_dir, decode_workers=2, **kwargs)


def train_teacher(args) -> Path:
    path = Path(args.work_dir) / f"teacher_{args.teacher_epochs}ep.ckpt"
    if path.exists():
        return path
    dm = datamodule(args)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = TeacherModule(functools.partial(MiniC3D, channels=(16, 32, 32)), dm.num_classes,
                               optimizer=functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.01))
        trainer = L.Trainer(max_epochs=args.teacher_epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=args.work_dir)
        trainer.fit(module, datamodule=dm)
        top1 = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc_top1"]
    trainer.save_checkpoint(path)
    print(f"teacher: MiniC3D 16/32/32, {args.teacher_epochs} epochs, test top-1 {top1:.3f} -> {path}", flush=True)
    return path


def trajectory(args, teacher_path: Path, target: str, shape: str) -> list[tuple[float, float, float, bool]]:
    """One synthesis run masked as (target, shape); returns (m, r_masked, r_prev_m, ever_nonzero) per frame-step."""
    dm = datamodule(args)
    teacher, _ = load_teacher(str(teacher_path), dm.num_classes, spec=dm.spec)
    bn = BNStatistics(teacher.net)
    clips, labels, _ = dm.random_subset(args.ipc, 0)
    x = normalize(clips.float() / 255, dm.mean, dm.std)
    lo, hi = pixel_bounds(dm.mean, dm.std, x)
    n, T = len(x), x.shape[2]
    unmasked, masked = Adam(x), Adam(x)
    schedule = lr_lambda("cosine", args.steps, 0)
    records, prev, seen = [], None, torch.zeros(n, T, dtype=torch.bool)
    for step in range(args.steps):
        x.requires_grad_(True)
        theta = crop_flip_thetas(n, torch.Generator().manual_seed(step), (0.5, 1.0), False)
        logits = teacher(apply_crop_flip(x, theta))
        loss = F.cross_entropy(logits, labels) + args.bn_weight * bn.loss(10.0)
        (g,) = torch.autograd.grad(loss, x)
        x = x.detach()
        with torch.no_grad():
            s = temporal_saliency(denormalize(x, dm.mean, dm.std), 3, "hann")
            m = tsgf_mask(s, 0.5, "quantile", shape)  # (n, T)
            mm = m[:, None, :, None, None]
            u = unmasked.direction(g)
            d = masked.direction(mm * g) if target == "gradient" else mm * u
            r = d.pow(2).sum(dim=(1, 3, 4)).sqrt() / u.pow(2).sum(dim=(1, 3, 4)).sqrt().clamp_min(1e-30)
            for i in range(n):
                for t in range(T):
                    records.append((float(m[i, t]), float(r[i, t]), float(prev[i, t]) if prev is not None else math.nan,
                                    bool(seen[i, t])))
            seen |= m > 0
            prev = m
            x = x - args.lr * schedule(step) * d
            x = torch.maximum(torch.minimum(x, hi), lo)
    return records


def moved(ratios: list[float], floor: float = 0.05) -> str:
    """Share of frame-steps whose update is more than ``floor`` of the unmasked one."""
    return f"{sum(r > floor for r in ratios) / len(ratios):.0%}"


def summarise(records, target: str, shape: str) -> list[str]:
    lines = []
    for lo, hi in BINS:
        if lo == hi:
            sel = [r for r in records if r[0] == 0.0]
            name = "m = 0"
        else:
            sel = [r for r in records if lo < r[0] <= hi]
            name = f"{lo:g} < m <= {hi:g}" if hi != math.inf else "m > 1"
        if not sel:
            continue
        ratios = [r[1] for r in sel]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        mean_m = statistics.fmean(r[0] for r in sel)
        lines.append(f"| {target} | {shape} | {name} | {len(sel)} | {mean_m:.3f} | {q[1]:.3f} | "
                     f"{q[0]:.3f} - {q[2]:.3f} | {moved(ratios)} |")
    if target == "gradient":
        zero = [r for r in records if r[0] == 0.0]
        carried = [r[1] for r in zero if r[3]]
        never = [r[1] for r in zero if not r[3]]
        if carried:
            lines.append(f"| {target} | {shape} | m = 0 now, > 0 at an earlier step | {len(carried)} | 0 | "
                         f"{statistics.median(carried):.3f} | max {max(carried):.3f} | {moved(carried)} |")
        if never:
            lines.append(f"| {target} | {shape} | m = 0 at every step so far | {len(never)} | 0 | "
                         f"{statistics.median(never):.3f} | max {max(never):.3f} | {moved(never)} |")
        if shape == "eq8":
            jumps = [(r[1], r[0] / r[2]) for r in records if r[0] > 0 and r[2] == r[2] and r[2] > 0]
            stable = [a for a, k in jumps if 0.8 <= k <= 1.25]
            fast = [a for a, k in jumps if not 0.8 <= k <= 1.25]
            for label, sel in (("m > 0, within x1.25 of last step's m", stable),
                               ("m > 0, changed by more than x1.25 since last step", fast)):
                if sel:
                    q = statistics.quantiles(sel, n=4)
                    lines.append(f"| {target} | {shape} | {label} | {len(sel)} | | {q[1]:.3f} | "
                                 f"{q[0]:.3f} - {q[2]:.3f} | {moved(sel)} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="a TeacherModule checkpoint of the embedded set (default: train one)")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--data-root", default="data/embedded")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--work-dir", default="runs/benchmarks/mask_under_adam")
    parser.add_argument("--ipc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--bn-weight", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    check_adam()
    start = time.time()
    teacher = Path(args.teacher) if args.teacher else train_teacher(args)
    print(f"\n{args.steps} steps, ipc {args.ipc}, 8 classes, 8 frames 48x48, Adam {BETAS}, lr {args.lr} cosine, "
          f"eps = per-video median of s, Hann window of 3\n")
    print("| mask on | shape | frames with | frame-steps | mean m | median r | r quartiles | r > 0.05 |")
    print("|---|---|---|---:|---:|---:|---|---:|")
    for target in ("gradient", "update"):
        for shape in ("eq8", "binary"):
            for line in summarise(trajectory(args, teacher, target, shape), target, shape):
                print(line, flush=True)
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
