"""What does verifying a decode cache on every load cost?

Every load of a cached split streams the file through a checksum before mapping it
(:func:`tsgf_lightning.data.integrity.cache_problem`). This measures, on one cache-like file
(``torch.save`` of a ``uint8`` clip tensor plus labels and paths, stored under its recorded name as
a real cache is), in one process, interleaved round-robin so a load change on a shared machine hits
every method alike:

1. **plain read**: the file read through one reusable buffer, nothing computed (the floor: what any
   verification must pay to see every byte);
2. **checksums** the standard library offers (CRC-32, Adler-32, SHA-1, SHA-256, BLAKE2b, MD5) at
   1 MiB per read, and CRC-32 and the plain read at other chunk sizes: why the cache uses CRC-32 in
   1 MiB chunks;
3. **verification**: ``cache_problem`` itself (stat, size check, CRC-32 in ``CHECK_CHUNK`` reads);
4. **mmap load**: ``torch.load(mmap=True)`` without touching the pages, what a load cost before;
5. **peak memory** of a fresh process that verifies the file, against one that only imports the
   package: verification holds one buffer, never the file.

Seconds per GB (10^9 bytes) are medians over ``--repeats`` passes, and ratios are to the plain read
with the same chunk size. The file stays in the page cache (just written): the usual case for a
cache read by run after run. From a cold disk both the read and the verification wait on the disk,
so their ratio moves toward 1.

    python benchmarks/cache_checksum.py [--mib 384] [--repeats 5] [--out benchmarks/results/cache_checksum.md]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from _report import write_report

from tsgf_lightning.data.integrity import CHECK_CHUNK, cache_problem, file_crc32, recorded_name

REPO = Path(__file__).resolve().parent.parent
GB = 1e9
MIB = 1 << 20
#: Everything below this line of the results file is hand-written and kept when the table is rewritten.


def make_cache(folder: Path, mib: int) -> Path:
    """A cache-shaped file of about ``mib`` MiB: random clips (incompressible, like decoded video), labels, paths."""
    clip = 3 * 8 * 64 * 85
    n = max(1, mib * MIB // clip)
    gen = torch.Generator().manual_seed(0)
    obj = {"clips": torch.randint(0, 256, (n, 1, 3, 8, 64, 85), dtype=torch.uint8, generator=gen),
           "labels": torch.arange(n) % 101, "paths": [f"/data/videos/v{i:06d}.avi" for i in range(n)],
           "groups": [f"g{i // 4}" for i in range(n)], "skipped": []}
    key = folder / "bench-fit-8x64x85-k1-0123456789abcdef.pt"
    tmp = folder / f".{key.name}.tmp"
    torch.save(obj, tmp)
    final = recorded_name(key, tmp.stat().st_size, file_crc32(tmp))
    os.replace(tmp, final)
    return final


def streamed(path: Path, chunk: int, update: Callable[[memoryview], None]) -> None:
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            update(view[:n])


class _Running:
    """A zlib checksum with the ``update`` interface of a hashlib object."""

    def __init__(self, fn):
        self.fn, self.value = fn, 0

    def update(self, data) -> None:
        self.value = self.fn(data, self.value)


def methods(path: Path) -> dict[str, tuple[int, Callable[[], object]]]:
    """name -> (chunk size, one pass over the file)."""
    out: dict[str, tuple[int, Callable[[], object]]] = {}
    for chunk in (256 * 1024, MIB, 4 * MIB, 16 * MIB):
        out[f"plain read, {chunk // 1024} KiB"] = (chunk, lambda c=chunk: streamed(path, c, lambda b: None))
        out[f"crc32, {chunk // 1024} KiB"] = (chunk, lambda c=chunk: streamed(path, c, _Running(zlib.crc32).update))
    out["adler32, 1024 KiB"] = (MIB, lambda: streamed(path, MIB, _Running(zlib.adler32).update))
    for name in ("sha1", "sha256", "blake2b", "md5"):
        out[f"{name}, 1024 KiB"] = (MIB, lambda n=name: streamed(path, MIB, hashlib.new(n).update))
    out["cache_problem (the verification)"] = (CHECK_CHUNK, lambda: cache_problem(path))
    out["torch.load(mmap=True), pages untouched"] = (0, lambda: torch.load(path, mmap=True, weights_only=True))
    return out


def peak_rss_mib(path: Path, verify: bool) -> float:
    """Peak RSS of a fresh process that imports the package and (optionally) verifies ``path``."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    code = ("import sys; from pathlib import Path; from tsgf_lightning.data.integrity import cache_problem; "
            + ("assert cache_problem(Path(sys.argv[1])) is None; " if verify else "")
            + "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024  # kB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=384, help="size of the test cache in MiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cache_checksum.md"))
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cache-checksum-", dir=tempfile.gettempdir()) as tmp:
        path = make_cache(Path(tmp), args.mib)
        size = path.stat().st_size
        runs = methods(path)
        for _, run in runs.values():  # warm up: the file in the page cache, code paths loaded
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (_, run) in runs.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
        rss_import, rss_verify = peak_rss_mib(path, False), peak_rss_mib(path, True)
    load_end = os.getloadavg()

    per_gb = {name: statistics.median(ts) / size * GB for name, ts in times.items()}
    plain = {chunk: per_gb[name] for name, (chunk, _) in runs.items() if name.startswith("plain read")}
    rows = []
    for name, (chunk, _) in runs.items():
        base = plain.get(chunk)
        ratio = f"{per_gb[name] / base:.1f}" if base and not name.startswith("plain read") else (
            "1.0" if name.startswith("plain read") else "")
        spread = f"{min(times[name]) / size * GB:.3f} - {max(times[name]) / size * GB:.3f}"
        ms = statistics.median(times[name]) * 1e3
        rows.append(f"| {name} | {per_gb[name]:.3f} | {spread} | {ratio} | {ms:.0f} |")
    verify = per_gb["cache_problem (the verification)"]
    lines = [
        "# Decode-cache verification cost",
        "",
        "Produced by `benchmarks/cache_checksum.py` (one process, methods interleaved round-robin, medians over "
        "the passes: compare ratios, not absolute rates, on a shared machine).",
        "",
        "```",
        "python benchmarks/cache_checksum.py" + (f" --mib {args.mib}" if args.mib != 384 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "```",
        "",
        f"- started {started}; host: {platform.node()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"load average {', '.join(f'{x:.1f}' for x in load_start)} at start, "
        f"{', '.join(f'{x:.1f}' for x in load_end)} at end",
        f"- Python {platform.python_version()}, zlib {zlib.ZLIB_RUNTIME_VERSION}, torch {torch.__version__}; "
        f"test file {size / MIB:.0f} MiB ({size} bytes), in the page cache; {args.repeats} pass(es) per method",
        "",
        f"**Verification costs {verify:.2f} s per GB** ({verify / plain[CHECK_CHUNK]:.1f}x a plain read of the same "
        f"file; CRC-32 in {CHECK_CHUNK // 1024} KiB reads). A process that verifies the file peaks at "
        f"{rss_verify:.0f} MiB resident against {rss_import:.0f} MiB for one that only imports the package "
        f"({rss_verify - rss_import:+.0f} MiB for a {size / MIB:.0f} MiB file): the file is streamed, never held.",
        "",
        "| method | s/GB (median) | s/GB (min - max) | x plain read, same chunk | ms for this file |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(write_report(args.out, text))


if __name__ == "__main__":
    main()
