"""Is the data pipeline ever what the teacher waits for?

For each dataset, with the clip geometry, augmentation, batch size and backbone of its teacher config:

1. **uncached decode**: PyAV decoding of the training split into a fresh cache (what the first run
   of a config pays once), in clips/s (a training video caches ``train_clips_per_video`` clips);
2. **cached load**: reading that cache back (``torch.load(mmap=True)``);
3. **cached loader**: iterating the DataModule's training DataLoader (random crop/flip on every clip,
   normalisation, collation) with ``num_workers`` 0, 1 and 2: steady-state clips/s after the first
   batch, and the time to the first batch (worker start-up);
4. **teacher step**: MiniC3D forward + backward + AdamW step on a batch of the same shape, clips/s,
   with torch's default intra-op threads and with one (on a shared machine one can be faster).

All are measured in one process, one after the other, so their ratios are comparable even on a
shared, noisy machine (absolute numbers are not). The claim to check: loader clips/s >> training
clips/s for every worker count.

    python benchmarks/data_pipeline.py [--ucf-root /work/shared/datasets/ucf101-mini9]
        [--embedded-root data/embedded] [--out benchmarks/results/data_pipeline.md]

The UCF101 videos are read in place (never copied); decoded caches go to a temporary directory that
is deleted at the end. A dataset whose root is missing is skipped (the embedded one is generated).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from _report import write_report

from tsgf_lightning.data.cache import load_or_decode
from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.sources import UCF101, Embedded, VideoSource
from tsgf_lightning.models import MiniC3D

REPO = Path(__file__).resolve().parent.parent

#: Everything below this line of the results file is hand-written and kept when the tables are rewritten.


@dataclass
class Setup:
    """What a teacher config fixes: the data geometry and augmentation, the batch and the network."""

    name: str
    config: Path
    source: VideoSource
    data: dict  # VideoDataModule keyword arguments taken from the config
    channels: tuple[int, int, int]


def from_config(name: str, config: Path, source: VideoSource) -> Setup:
    cfg = yaml.safe_load(config.read_text())
    keys = ("frames", "size", "resize", "sampling", "gap", "train_clips_per_video", "val_fraction", "crop_scale",
            "crop_ratio", "flip", "batch_size")
    data = {k: v for k, v in cfg["data"].items() if k in keys}
    backbone = cfg["model"]["init_args"]["backbone"]
    channels = tuple((backbone.get("init_args") or {}).get("channels", (64, 128, 128)))
    return Setup(name, config, source, data, channels)


def decode_once(setup: Setup, cache_dir: str) -> dict:
    """Uncached decode of the training part, then a cached load; seconds and clips."""
    dm = VideoDataModule(setup.source, cache_dir=cache_dir, **setup.data)  # decode_workers: the default
    items = dm.items_by_part()["fit"]
    spec = dm._spec("fit")
    t0 = time.perf_counter()
    decoded = load_or_decode(cache_dir, setup.source.cache_key(), "fit", items, spec, dm.hparams.decode_workers)
    t1 = time.perf_counter()
    again = load_or_decode(cache_dir, setup.source.cache_key(), "fit", items, spec)
    t2 = time.perf_counter()
    assert torch.equal(again.clips[:4], decoded.clips[:4])
    clips = decoded.clips.shape[0] * decoded.clips.shape[1]
    return {"videos": decoded.clips.shape[0], "clips": clips, "decode_s": t1 - t0, "load_s": t2 - t1,
            "workers": dm.hparams.decode_workers, "shape": tuple(decoded.clips.shape)}


def loader_rate(setup: Setup, cache_dir: str, workers: int, min_clips: int) -> dict:
    """Steady-state clips/s of the training DataLoader, and the time to its first batch."""
    dm = VideoDataModule(setup.source, cache_dir=cache_dir, num_workers=workers, **setup.data)
    dm.setup("fit")
    loader = dm.train_dataloader()
    served, epochs = 0, 0
    t0 = time.perf_counter()
    first = None
    while served < min_clips:
        for batch in loader:
            if first is None:
                first = time.perf_counter()
            else:
                served += batch["video"].shape[0]
        epochs += 1
    end = time.perf_counter()
    del loader
    return {"clips_per_s": served / (end - first), "first_batch_s": first - t0, "clips": served}


def training_rate(setup: Setup, num_classes: int, min_seconds: float, threads: int) -> dict:
    """clips/s of MiniC3D forward + backward + AdamW step on random clips of the loader's batch shape,
    on ``threads`` intra-op threads."""
    B, T, S = setup.data.get("batch_size", 16), setup.data.get("frames", 8), setup.data.get("size", 64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _training_rate(setup, num_classes, min_seconds, B, T, S) | {"threads": threads}
    finally:
        torch.set_num_threads(before)


def _training_rate(setup: Setup, num_classes: int, min_seconds: float, B: int, T: int, S: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    net = MiniC3D(num_classes, channels=setup.channels).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(B, 3, T, S, S, generator=gen)
    y = torch.randint(num_classes, (B,), generator=gen)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: allocator, kernels
        step()
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < min_seconds:
        step()
        steps += 1
    seconds = time.perf_counter() - t0
    return {"clips_per_s": steps * B / seconds, "steps": steps, "batch_shape": (B, 3, T, S, S)}


def bench(setup: Setup, workers: tuple[int, ...], min_clips: int, train_seconds: float) -> dict:
    cache_dir = tempfile.mkdtemp(prefix=f"bench-cache-{setup.name}-")
    try:
        print(f"[{setup.name}] decoding (uncached)", flush=True)
        decode = decode_once(setup, cache_dir)
        loaders = {}
        for w in workers:
            print(f"[{setup.name}] loader, num_workers={w}", flush=True)
            loaders[w] = loader_rate(setup, cache_dir, w, min_clips)
        train = {}
        for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
            print(f"[{setup.name}] teacher step, {threads} threads", flush=True)
            train[threads] = training_rate(setup, setup.source.num_classes, train_seconds, threads)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"decode": decode, "loaders": loaders, "train": train}


def report(results: dict[str, dict], setups: dict[str, Setup], command: str, started: str, load: str) -> str:
    lines = [
        "# Data pipeline vs teacher throughput",
        "",
        "Produced by `benchmarks/data_pipeline.py` (all numbers of a table from one process, measured one",
        "after the other: compare ratios, not absolute rates, on a shared machine).",
        "",
        "```",
        command,
        "```",
        "",
        f"- started {started}; host: {platform.node()}, {os.cpu_count()} CPU cores, load average at start {load}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads in the main process "
        "(DataLoader workers use 1 each)",
        "",
    ]
    for name, res in results.items():
        s, d = setups[name], res["decode"]
        # Ratios against the faster teacher step: the most the loader ever has to keep up with.
        fastest = max(res["train"].values(), key=lambda r: r["clips_per_s"])
        rate = fastest["clips_per_s"]
        lines += [
            f"## {name}",
            "",
            f"Config `{s.config.relative_to(REPO)}`: clips {d['shape'][2:]} (C, T, H, W) cached, "
            f"{d['shape'][1]} per training video; batch {fastest['batch_shape']}; MiniC3D channels {list(s.channels)}.",
            "",
            "| stage | clips/s | x fastest teacher step | notes |",
            "|---|---:|---:|---|",
            f"| uncached decode (once per config) | {d['clips'] / d['decode_s']:.0f} | "
            f"{d['clips'] / d['decode_s'] / rate:.1f} | {d['videos']} videos in {d['decode_s']:.1f} s, "
            f"{d['workers']} decode processes |",
            f"| cached load (mmap) | {d['clips'] / d['load_s']:.0f} | {d['clips'] / d['load_s'] / rate:.0f} | "
            f"{d['load_s'] * 1000:.0f} ms for the split |",
        ]
        for w, r in res["loaders"].items():
            lines.append(f"| cached loader, num_workers={w} | {r['clips_per_s']:.0f} | "
                         f"{r['clips_per_s'] / rate:.1f} | first batch after {r['first_batch_s']:.2f} s; "
                         f"{r['clips']} clips timed |")
        for threads, t in res["train"].items():
            lines.append(f"| **teacher step** (fwd + bwd + AdamW), {threads} thread{'s' if threads > 1 else ''} | "
                         f"**{t['clips_per_s']:.1f}** | {t['clips_per_s'] / rate:.2f} | {t['steps']} steps |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ucf-root", default="/work/shared/datasets/ucf101-mini9")
    parser.add_argument("--embedded-root", default=str(REPO / "data" / "embedded"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-clips", type=int, default=480, help="clips timed per loader setting")
    parser.add_argument("--train-seconds", type=float, default=10.0, help="time spent timing teacher steps")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_pipeline.md"))
    args = parser.parse_args(argv)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    setups: dict[str, Setup] = {}
    if Path(args.ucf_root).is_dir():
        setups["ucf101-mini9"] = from_config("ucf101-mini9", REPO / "configs" / "ucf101_mini9" / "teacher.yaml",
                                             UCF101(args.ucf_root))
    else:
        print(f"skipping ucf101-mini9: {args.ucf_root} not found", flush=True)
    embedded_cfg = REPO / "configs" / "embedded" / "teacher.yaml"
    embedded_args = yaml.safe_load(embedded_cfg.read_text())["data"]["source"].get("init_args") or {}
    embedded = Embedded(**{**embedded_args, "root": args.embedded_root})
    setups["embedded"] = from_config("embedded", embedded_cfg, embedded)

    results = {name: bench(s, tuple(args.workers), args.min_clips, args.train_seconds) for name, s in setups.items()}
    command = "python " + " ".join([os.path.relpath(__file__, REPO)] + (argv if argv is not None else sys.argv[1:]))
    text = report(results, setups, command, started, load)
    print(write_report(args.out, text))


if __name__ == "__main__":
    main()
