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

Before both, every video of the size is read once, so neither decode pays for cold reads of the files
the other has just read (the first measured run, project first, would otherwise pay them alone), and the
plain loop runs unmeasured on up to 2,000 of them (this shared machine runs its first seconds after a pause up
to 2x slower). Then (project, plain) pairs run back to back until the project side has run
``--min-seconds`` (at most ``--max-pairs`` pairs): short sizes are repeated, and the table gives medians.
Generated videos are kept under ``--root`` (a pool generated once, in ``--workers`` processes; each size
is hard links to its first N videos), so reruns do not generate them again.

    python benchmarks/data_scale.py [--sizes 1000 10000 50000] [--workers W] [--root /tmp/tsgf_data_scale]
        [--min-seconds 60] [--max-pairs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
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


def warm(data: Path, workers: int) -> None:
    """Read every video once, so that both decodes find them in the page cache (else the first pays the cold reads),
    and run the plain loop unmeasured on up to 2,000 of them: after a pause this machine's first ~10 s run up to
    2x slower."""
    for path in sorted(data.glob("*/*.mkv")):
        path.read_bytes()
    run_child(["--child", "plain", "--data", str(data), "--workers", str(workers), "--limit", "2000"])


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


def child_plain(data: str, workers: int, limit: int | None = None) -> dict:
    import torch

    start = time.perf_counter()
    paths = sorted(str(p) for p in Path(data).glob("*/*.mkv"))[:limit]
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
    parser.add_argument("--min-seconds", type=float, default=60.0,
                        help="repeat a size's (project, plain) pair until the project side has run this long")
    parser.add_argument("--max-pairs", type=int, default=5, help="at most this many pairs per size")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_scale.md"))
    parser.add_argument("--child", choices=["project", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "project":
        print(json.dumps(child_project(args.data, args.workers, args.cache)))
        return
    if args.child == "plain":
        print(json.dumps(child_plain(args.data, args.workers, args.limit)))
        return
    root = Path(args.root)
    started, load = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()
    rows = []
    for n in args.sizes:
        data, generated = prepare(root, n, args.workers)
        warm(data, args.workers)
        pairs = []  # (project, plain) measured back to back, until the size has --min-seconds of project decoding
        while not pairs or (len(pairs) < args.max_pairs
                            and sum(p["project"]["seconds"] for p in pairs) < args.min_seconds):
            pairs.append(measure_pair(data, root / f"cache-{n}", args.workers))
        rows.append({"videos": n, "generate_s": generated, "pairs": pairs})
        print(json.dumps(rows[-1]), flush=True)
    report(rows, args, started, load)


def measure_pair(data: Path, cache: Path, workers: int) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    common = ["--data", str(data), "--workers", str(workers)]
    project = run_child(["--child", "project", *common, "--cache", str(cache)])
    shutil.rmtree(cache, ignore_errors=True)  # the cache of a size is deleted once measured
    return {"project": project, "plain": run_child(["--child", "plain", *common])}


def _loads(load: tuple) -> str:
    return ", ".join(f"{v:.1f}" for v in load)


def summary(row: dict) -> dict:
    """A size's pairs: median clips/s of each side, median and range of the per-pair ratio, median peak memories
    (a maximum would grow with the number of pairs, and short sizes run more of them)."""
    pairs = row["pairs"]
    rate = {side: [p[side]["videos"] / p[side]["seconds"] for p in pairs] for side in ("project", "plain")}
    ratios = [a / b for a, b in zip(rate["project"], rate["plain"])]
    peak = {f"{side}_{key}": statistics.median(p[side][f"peak_{key}_mib"] for p in pairs)
            for side in ("project", "plain") for key in ("parent_rss_anon", "total_pss_anon")}
    return {"pairs": len(pairs), "project": statistics.median(rate["project"]),
            "plain": statistics.median(rate["plain"]), "ratio": statistics.median(ratios), "low": min(ratios),
            "high": max(ratios), **peak}


def report(rows: list[dict], args, started: str, load: tuple) -> None:
    sums = [summary(row) for row in rows]
    lines = [
        "# Decoding at scale: memory and throughput of the first decode, 1,000 to 50,000 videos", "",
        f"Command: `python benchmarks/data_scale.py --sizes {' '.join(map(str, args.sizes))} "
        f"--workers {args.workers} --root {args.root} --min-seconds {args.min_seconds:g} --max-pairs "
        f"{args.max_pairs}`", "",
        f"- started {started}; host {platform.node()}, {os.cpu_count()} CPU cores shared with other jobs, load "
        f"average at start {_loads(load)}, at end {_loads(os.getloadavg())}",
        f"- videos: {FRAMES} frames of {SIZE}x{SIZE}, FFV1/Matroska, {CLASSES} classes; {args.workers} decoding "
        "processes in both columns; clips decoded at 8x32x32, one per video",
        "- each size: the videos read once (page cache warm for both) and up to 2,000 decoded unmeasured, then pairs "
        "(project decode, plain loop) "
        f"back to back until the project side has run {args.min_seconds:g} s (at most {args.max_pairs} pairs); "
        "rates, ratio and peaks are medians over the pairs, the ratio's range beside it", "",
        "| videos | generated (s) | pairs | project clips/s | plain PyAV clips/s | ratio (range) "
        "| parent RssAnon peak (MiB) | all processes Pss_Anon peak (MiB) | peak / peak at first size "
        "| plain loop Pss_Anon peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, s in zip(rows, sums):
        growth = s["project_total_pss_anon"] / sums[0]["project_total_pss_anon"]
        lines.append(f"| {row['videos']:,} | {row['generate_s']:.0f} | {s['pairs']} | {s['project']:.0f} | "
                     f"{s['plain']:.0f} | {s['ratio']:.2f} ({s['low']:.2f}-{s['high']:.2f}) | "
                     f"{s['project_parent_rss_anon']:.0f} | {s['project_total_pss_anon']:.0f} | {growth:.2f} | "
                     f"{s['plain_total_pss_anon']:.0f} |")
    lines += ["", "Goals (issue 13): peak at 50,000 within 1.2x of the peak at 1,000; project clips/s at least "
              "0.8x the plain loop. \"generated\" is 0 when the videos were already there.", ""]
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(write_report(args.out, "\n".join(lines)))


if __name__ == "__main__":
    main()
