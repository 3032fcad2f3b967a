"""What Lightning costs the synthesis stage: SynthesisModule under ``Trainer.fit`` vs a bare PyTorch loop.

Both sides do the same math on the same inputs: a random-weight MiniC3D teacher with the embedded
configs' architecture (channels 32/64/64, BatchNorm running statistics drawn at random), noise-
initialised videos of ``classes x ipc``, the per-step crop/flip of the whole set, CE + Eq. 5 BN loss,
the ``binary`` TSGF mask applied to the update (the configs' choice), Adam (0.5, 0.9) with a cosine
schedule, and the clamp to valid pixels. The bare loop calls the package's own pure functions
(``crop_flip_thetas``, ``apply_crop_flip``, ``BNStatistics``, ``temporal_saliency``, ``tsgf_mask``) in
the order SynthesisModule does; the final videos of the two sides are compared, so a benchmark in
which they stopped doing the same work would say so. Export at the end of fit is skipped (it is not
part of an iteration) and Lightning runs with no logger, progress bar, checkpointing or summary.

Each (side, ipc, frames) is measured in its own subprocess, so that memory figures do not mix:

- time: per iteration, from the start of one step to the start of the next (Lightning: from
  ``on_train_batch_start`` to the next one, so the loop's own work between batches is included);
  the median over the timed iterations after ``--warmup`` untimed ones;
- memory on CPU: peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) minus the resident
  size just before the teacher is loaded, i.e. everything the run itself allocated (the teacher,
  the videos, Adam's moments, activations, and for Lightning its Trainer and loops).
  ``tracemalloc`` does not see tensor storage (ATen allocates outside Python's allocator), and
  ``torch.profiler``'s memory accounting slows the very loop being timed; a high-water mark per
  fresh process is cheap and includes allocator fragmentation, which is what a user pays.
  On CUDA: ``torch.cuda.max_memory_allocated`` after a reset (tensor memory only).

Usage::

    python benchmarks/synthesis_overhead.py                       # the table of the results file
    python benchmarks/synthesis_overhead.py --ipc 1 --frames 8    # one cell
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIZE, CHANNELS = 48, [32, 64, 64]
MODULE_ARGS = dict(lr=0.05, betas=(0.5, 0.9), schedule="cosine", ce_weight=1.0, bn_weight=0.01,
                   first_bn_multiplier=10.0, augment=True, augment_scale=(0.5, 1.0), augment_flip=False,
                   mask="binary", mask_target="update", window_length=3, window="hann", eps=0.5, eps_mode="quantile",
                   seed=0)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------- worker
def write_teacher(path: Path, classes: int, frames: int) -> list[str]:
    """A TeacherModule-style checkpoint of a random-weight MiniC3D (random BN running statistics)."""
    import torch

    from tsgf_lightning.models import MiniC3D, describe

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # weight init of a throw-away network in a throw-away process
    net = MiniC3D(classes, channels=CHANNELS)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    names = [f"class_{i}" for i in range(classes)]
    record = {"stage": "teacher", "arch": describe(net), "num_classes": classes, "class_names": names,
              "frames": frames, "size": SIZE}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "tsgf": record}, path)
    return names


def run_bare(teacher: Path, classes: int, ipc: int, frames: int, steps: int, device: str) -> tuple[list[float], object]:
    import torch
    from torch.nn import functional as F

    from tsgf_lightning.modules.classifier import lr_lambda
    from tsgf_lightning.modules.frozen import load_teacher
    from tsgf_lightning.tsgf import BNStatistics, step_seed, temporal_saliency, tsgf_mask
    from tsgf_lightning.tsgf.augment import apply_crop_flip, crop_flip_thetas
    from tsgf_lightning.video import IMAGENET_MEAN as mean
    from tsgf_lightning.video import IMAGENET_STD as std
    from tsgf_lightning.video import denormalize, pixel_bounds

    a = MODULE_ARGS
    net, _ = load_teacher(str(teacher), classes)
    net = net.to(device)
    bn = BNStatistics(net.net)
    n = classes * ipc
    init = torch.randn(n, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    lo, hi = pixel_bounds(mean, std, init)
    videos = torch.maximum(torch.minimum(init, hi), lo).to(device).requires_grad_(True)
    lo, hi = lo.to(device), hi.to(device)
    labels = torch.arange(classes).repeat_interleave(ipc).to(device)
    opt = torch.optim.Adam([videos], lr=a["lr"], betas=a["betas"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(a["schedule"], steps, 0))
    stamps = []
    for step in range(steps):
        _sync(device)
        stamps.append((time.perf_counter(), time.process_time()))
        gen = torch.Generator().manual_seed(step_seed(a["seed"], step))
        x = apply_crop_flip(videos, crop_flip_thetas(n, gen, a["augment_scale"], a["augment_flip"]))
        logits = net(x)
        loss = (a["ce_weight"] * F.cross_entropy(logits, labels, reduction="sum") / n
                + a["bn_weight"] * bn.loss(a["first_bn_multiplier"]))
        if not bool(torch.isfinite(loss).item()):
            raise FloatingPointError(f"loss not finite at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            s = temporal_saliency(denormalize(videos.detach(), mean, std), a["window_length"], a["window"])
            mask = tsgf_mask(s, a["eps"], a["eps_mode"], a["mask"])[:, None, :, None, None].to(videos)
            before = videos.detach().clone()
        opt.step()
        sched.step()
        with torch.no_grad():
            videos.copy_(before + mask * (videos - before))
            videos.copy_(torch.maximum(torch.minimum(videos, hi), lo))
        del x, logits, loss, s, mask, before  # as a step function's locals would be: no overlap with the next step
    _sync(device)
    stamps.append((time.perf_counter(), time.process_time()))
    return stamps, videos.detach().cpu()


def run_lightning(teacher: Path, names: list[str], classes: int, ipc: int, frames: int, steps: int, device: str,
                  tmp: Path) -> tuple[list[float], object]:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from tsgf_lightning.data.spec import DataSpec
    from tsgf_lightning.modules.synthesis import SynthesisModule
    from tsgf_lightning.video import IMAGENET_MEAN, IMAGENET_STD

    class Steps(torch.utils.data.Dataset):
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return {"index": torch.tensor(i)}

    class Data(L.LightningDataModule):
        """Step batches only: a noise initialisation reads nothing from the DataModule."""

        def train_dataloader(self):
            return DataLoader(Steps(), batch_size=1)

    class NoExport(SynthesisModule):
        def on_fit_end(self) -> None:  # the export is not part of an iteration; the bare loop has none
            pass

    class Stamps(L.Callback):
        def __init__(self):
            self.stamps = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(device)
            self.stamps.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, trainer, pl_module):
            _sync(device)
            self.stamps.append((time.perf_counter(), time.process_time()))

    stamps = Stamps()
    module = NoExport(num_classes=classes, teacher_ckpt=str(teacher), ipc=ipc, init="noise", init_seed=0,
                      image_every_n_steps=0, export_dir=str(tmp),
                      data_spec=DataSpec(names, frames, SIZE, IMAGENET_MEAN, IMAGENET_STD), **MODULE_ARGS)
    trainer = L.Trainer(max_steps=steps, accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp), callbacks=[stamps])
    trainer.fit(module, datamodule=Data())
    return stamps.stamps, module.videos.detach().cpu()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def warm_up_kernels(frames: int, device: str) -> None:
    """One tiny forward/backward/Adam step before the memory baseline, so that the one-off start-up of
    torch's kernels and thread pools (~100 MiB of RSS on CPU) is not counted as either side's memory."""
    import gc

    import torch

    from tsgf_lightning.models import MiniC3D

    net = MiniC3D(2, channels=CHANNELS).to(device).eval()
    x = torch.randn(1, 3, frames, SIZE, SIZE, device=device, requires_grad=True)
    net(torch.nn.functional.grid_sample(x.flatten(1, 2), torch.zeros(1, SIZE, SIZE, 2, device=device),
                                        align_corners=False).view_as(x)).sum().backward()
    torch.optim.Adam([x]).step()
    del net, x
    gc.collect()


def worker(args) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    import logging

    import lightning  # noqa: F401  (both sides pay the import before the baseline)

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = args.warmup + args.iters
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = write_teacher(tmp / "teacher.ckpt", args.classes, args.frames)
        warm_up_kernels(args.frames, device)
        base = rss_mib()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if args.worker == "bare":
            stamps, videos = run_bare(tmp / "teacher.ckpt", args.classes, args.ipc, args.frames, steps, device)
        else:
            stamps, videos = run_lightning(tmp / "teacher.ckpt", names, args.classes, args.ipc, args.frames, steps,
                                           device, tmp)
        torch.save(videos, args.dump)
    wall = [b[0] - a[0] for a, b in zip(stamps[:-1], stamps[1:])][args.warmup:]
    cpu = [b[1] - a[1] for a, b in zip(stamps[:-1], stamps[1:])][args.warmup:]
    print(json.dumps({
        "side": args.worker, "ipc": args.ipc, "frames": args.frames, "device": device,
        "threads": torch.get_num_threads(), "wall_s": wall, "cpu_s": cpu,
        "mem_mib": (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else peak_rss_mib() - base,
    }))


# ---------------------------------------------------------------------------------------------- driver
def measure(side: str, ipc: int, frames: int, args, dump: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--ipc", str(ipc), "--frames", str(frames), "--classes",
           str(args.classes), "--warmup", str(args.warmup), "--iters", str(args.iters), "--dump", str(dump)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per side and cell (order alternates)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (OMP_NUM_THREADS)")
    parser.add_argument("--json", help="also write every measurement here")
    parser.add_argument("--worker", choices=["bare", "lightning"], help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.ipc, args.frames = args.ipc[0], args.frames[0]
        return worker(args)

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.frames:
            for ipc in args.ipc:
                runs = {"bare": [], "lightning": []}
                for r in range(args.rounds):
                    order = ("bare", "lightning") if r % 2 == 0 else ("lightning", "bare")
                    for side in order:
                        runs[side].append(measure(side, ipc, frames, args, Path(tmp) / f"{side}.pt"))
                    import torch

                    diff = (torch.load(Path(tmp) / "bare.pt") - torch.load(Path(tmp) / "lightning.pt")).abs().max()
                    if diff > 1e-4:
                        raise RuntimeError(f"ipc {ipc}, {frames} frames: the two sides' videos differ by {diff:.3g}")
                raw += runs["bare"] + runs["lightning"]
                cpu = {s: statistics.median([x for m in runs[s] for x in m["cpu_s"]]) for s in runs}
                wall = {s: statistics.median([x for m in runs[s] for x in m["wall_s"]]) for s in runs}
                mem = {s: statistics.median([m["mem_mib"] for m in runs[s]]) for s in runs}
                rows.append((ipc, frames, cpu, wall, mem))
                print(f"ipc {ipc:>2} frames {frames:>2}: CPU ms/it bare {cpu['bare'] * 1e3:.1f} lightning "
                      f"{cpu['lightning'] * 1e3:.1f} ({cpu['lightning'] / cpu['bare']:.3f}x); wall ms/it bare "
                      f"{wall['bare'] * 1e3:.1f} lightning {wall['lightning'] * 1e3:.1f}; MiB bare {mem['bare']:.1f} "
                      f"lightning {mem['lightning']:.1f}; max |videos diff| {float(diff):.1e}", flush=True)
    device = raw[0]["device"]
    unit = "peak RSS - baseline, MiB" if device == "cpu" else "max_memory_allocated, MiB"
    print(f"\ndevice {device}, {raw[0]['threads']} intra-op threads, {args.classes} classes, {SIZE}x{SIZE}, "
          f"MiniC3D {CHANNELS} random-weight teacher, {args.warmup} warm-up + {args.iters} timed iterations x "
          f"{args.rounds} rounds\n")
    print("| IPC | frames | videos | bare CPU ms/it | Lightning CPU ms/it | CPU ratio | bare wall ms/it "
          f"| Lightning wall ms/it | wall ratio | bare {unit} | Lightning {unit} | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ipc, frames, cpu, wall, mem in rows:
        b, lt = "bare", "lightning"
        print(f"| {ipc} | {frames} | {ipc * args.classes} | {cpu[b] * 1e3:.1f} | {cpu[lt] * 1e3:.1f} | "
              f"{cpu[lt] / cpu[b]:.3f} | {wall[b] * 1e3:.1f} | {wall[lt] * 1e3:.1f} | {wall[lt] / wall[b]:.3f} | "
              f"{mem[b]:.0f} | {mem[lt]:.0f} | {mem[lt] / mem[b]:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
