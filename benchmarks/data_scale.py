"""Does the first decode stay bounded in memory and near PyAV's own speed as a dataset grows to 50,000 videos?

For each size N (``--sizes``), on a generated folder-per-class dataset of N small videos (8 frames of
32x32, FFV1 in Matroska as :func:`tsgf_lightning.data.embedded.write_clip` writes them; 10 classes):

1. **project decode**: a fresh process lists the folder with
   :class:`~tsgf_lightning.data.sources.VideoFolder` and runs
   :func:`~tsgf_lightning.data.cache.load_or_decode` on every video (content digests, decoding processes
   writing rows, journal, publish) into a cache directory that is deleted afterwards;
2. **plain PyAV loop**: a fresh process with the same number of forked processes opens each video and
   converts the same frames to ``rgb24`` at the same size, keeping nothing: the limit of the decode itself.

Memory is sampled every 50 ms from ``/proc``: ``RssAnon`` of the parent, and ``Pss_Anon`` (anonymous pages,
shared copy-on-write pages split between the processes sharing them) summed over the parent and its
workers, from ``smaps_rollup``. Page cache, including the mapped cache file, is not anonymous and is not
counted. Clips/s is N over the wall time of step 1 or 2 inside its process (imports excluded).

Generated videos are kept under ``--root`` (a pool generated once, in ``--workers`` processes; each size
is hard links to its first N videos), so reruns do not generate them again.

    python benchmarks/data_scale.py [--sizes 1000 10000 50000] [--workers W] [--root /tmp/tsgf_data_scale]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks._report import write_report  # noqa: E402

FRAMES, SIZE, CLASSES = 8, 32, 10


def _video(pool: Path, i: int) -> Path:
    return pool / f"class_{i % CLASSES:02d}" / f"v{i:06d}.mkv"


def _write(args: tuple[str, int]) -> None:
    """One video: a colour ramp that moves by frame, different per video (deterministic)."""
    import torch

    from tsgf_lightning.data.embedded import write_clip

    pool, i = Path(args[0]), args[1]
    g = torch.Generator().manual_seed(i)
    base = torch.randint(0, 200, (3, 1, 1, 1), generator=g)
    ramp = torch.arange(SIZE).view(1, 1, 1, SIZE) + torch.arange(FRAMES).view(1, FRAMES, 1, 1) * 3
    clip = (base + ramp + torch.arange(SIZE).view(1, 1, SIZE, 1)).clamp(0, 255).to(torch.uint8)
    write_clip(str(_video(pool, i)), clip.expand(3, FRAMES, SIZE, SIZE).contiguous())


def prepare(root: Path, n: int, workers: int) -> tuple[Path, float]:
    """The dataset of the first ``n`` pool videos (generating what the pool lacks); seconds spent generating."""
    pool = root / "pool"
    for c in range(CLASSES):
        (pool / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not _video(pool, i).is_file()]
    start = time.perf_counter()
    if todo:
        with get_context("fork").Pool(workers) as p:
            list(p.imap_unordered(_write, [(str(pool), i) for i in todo], chunksize=64))
    generated = time.perf_counter() - start
    data = root / f"n{n}"
    if not (data / ".complete").is_file():
        for i in range(n):
            target = data / _video(pool, i).relative_to(pool)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(_video(pool, i), target)
        (data / ".complete").write_text(str(n))
    return data, generated


# ------------------------------------------------------------------------------------------- children

def child_project(data: str, workers: int, cache: str) -> dict:
    from tsgf_lightning.data.cache import ClipSpec, load_or_decode
    from tsgf_lightning.data.sources import VideoFolder

    start = time.perf_counter()
    source = VideoFolder(data)
    items = sorted(source.items("train") + source.items("test"), key=lambda item: item.path)
    spec = ClipSpec(FRAMES, (SIZE, SIZE), "uniform", 4, (0.5,))
    part = load_or_decode(cache, source.cache_key(), "all", items, spec, workers)
    seconds = time.perf_counter() - start
    return {"videos": len(part.paths), "seconds": seconds, "skipped": len(part.skipped)}


def _plain_one(path: str) -> int:
    import av

    from tsgf_lightning.data.decode import sample_indices

    with av.open(path) as container:
        stream = container.streams.video[0]
        # The loop is told the frame count (Matroska headers have none; the project demuxes once to count).
        wanted = set(sample_indices(FRAMES, FRAMES).tolist())
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frame.reformat(width=SIZE, height=SIZE, format="rgb24", interpolation="AREA").to_ndarray()
            if i >= max(wanted):
                break
    return 1


def child_plain(data: str, workers: int) -> dict:
    import torch

    start = time.perf_counter()
    paths = sorted(str(p) for p in Path(data).glob("*/*.mkv"))
    with get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        done = sum(pool.imap(_plain_one, paths, chunksize=4))
    return {"videos": done, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------- sampling

def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack += children.get(p, [])
    return out


def run_child(args: list[str]) -> dict:
    """Run ``args`` in a fresh process, sampling its anonymous memory; its JSON result plus the peaks (MiB)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak_parent = peak_total = 0
    while proc.poll() is None:
        peak_parent = max(peak_parent, _kib(f"/proc/{proc.pid}/status", "RssAnon:"))
        total = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss_Anon:") for p in _descendants(proc.pid))
        peak_total = max(peak_total, total)
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{args} failed ({proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_parent_rss_anon_mib": peak_parent / 1024,
            "peak_total_pss_anon_mib": peak_total / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--root", default="/tmp/tsgf_data_scale")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_scale.md"))
    parser.add_argument("--child", choices=["project", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "project":
        print(json.dumps(child_project(args.data, args.workers, args.cache)))
        return
    if args.child == "plain":
        print(json.dumps(child_plain(args.data, args.workers)))
        return
    root = Path(args.root)
    started, load = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()
    rows = []
    for n in args.sizes:
        data, generated = prepare(root, n, args.workers)
        cache = root / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        common = ["--data", str(data), "--workers", str(args.workers)]
        project = run_child(["--child", "project", *common, "--cache", str(cache)])
        shutil.rmtree(cache, ignore_errors=True)  # the cache of a size is deleted once measured
        plain = run_child(["--child", "plain", *common])
        rows.append({"videos": n, "generate_s": generated, "project": project, "plain": plain})
        print(json.dumps(rows[-1]), flush=True)
    report(rows, args, started, load)


def _loads(load: tuple) -> str:
    return ", ".join(f"{v:.1f}" for v in load)


def report(rows: list[dict], args, started: str, load: tuple) -> None:
    first = rows[0]
    lines = [
        "# Decoding at scale: memory and throughput of the first decode, 1,000 to 50,000 videos", "",
        f"Command: `python benchmarks/data_scale.py --sizes {' '.join(map(str, args.sizes))} "
        f"--workers {args.workers} --root {args.root}`", "",
        f"- started {started}; host {platform.node()}, {os.cpu_count()} CPU cores shared with other jobs, load "
        f"average at start {_loads(load)}, at end {_loads(os.getloadavg())}",
        f"- videos: {FRAMES} frames of {SIZE}x{SIZE}, FFV1/Matroska, {CLASSES} classes; {args.workers} decoding "
        "processes in both columns; clips decoded at 8x32x32, one per video", "",
        "| videos | generated (s) | project clips/s | plain PyAV clips/s | ratio | parent RssAnon peak (MiB) "
        "| all processes Pss_Anon peak (MiB) | peak / peak at first size | plain loop Pss_Anon peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p, q = row["project"], row["plain"]
        rate_p, rate_q = p["videos"] / p["seconds"], q["videos"] / q["seconds"]
        growth = p["peak_total_pss_anon_mib"] / first["project"]["peak_total_pss_anon_mib"]
        lines.append(f"| {row['videos']:,} | {row['generate_s']:.0f} | {rate_p:.0f} | {rate_q:.0f} | "
                     f"{rate_p / rate_q:.2f} | {p['peak_parent_rss_anon_mib']:.0f} | "
                     f"{p['peak_total_pss_anon_mib']:.0f} | {growth:.2f} | {q['peak_total_pss_anon_mib']:.0f} |")
    lines += ["", "Goals (issue 13): peak at 50,000 within 1.2x of the peak at 1,000; project clips/s at least "
              "0.8x the plain loop. \"generated\" is 0 when the videos were already there.", ""]
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(write_report(args.out, "\n".join(lines)))


if __name__ == "__main__":
    main()
