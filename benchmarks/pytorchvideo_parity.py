"""Is pytorchvideo's listing or decoding faster than ours where the two give the same result?

``tests/test_pytorchvideo_parity.py`` checks on fixtures where they agree; this measures the speed, in one
process, the methods interleaved round-robin (``--repeats`` rounds, medians) so a load change on a shared
machine hits each alike:

1. **folder listing**, ``--classes`` x ``--per-class`` empty ``.mp4`` files in a folder per class: our
   walk (:func:`~tsgf_lightning.data.sources.folder.list_class_dirs` and ``list_videos``, what
   ``VideoFolder`` and the class-folder ``Kinetics`` run) against ``LabeledVideoPaths.from_directory``;
2. **HMDB51 fold files**, 51 classes x ``--per-class`` lines: our reader (our line check, then
   pytorchvideo's parser) against pytorchvideo's parser alone;
3. **decode per clip**, ``--videos`` generated H.264 MP4 videos of ``--frames`` frames: our
   :func:`~tsgf_lightning.data.decode.decode_clips` (8 frames, uniform, no resize) against
   ``EncodedVideo.from_path(..., decoder="pyav")`` and ``get_clip`` over the whole video, indexed at the
   same frames (the tests show the frames are equal).

    python benchmarks/pytorchvideo_parity.py [--classes 40 --per-class 100 --videos 4 --frames 32 300 --repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks._report import write_report  # noqa: E402
from tsgf_lightning.data.decode import decode_clips, sample_indices  # noqa: E402
from tsgf_lightning.data.sources import HMDB51, VIDEO_EXTENSIONS  # noqa: E402
from tsgf_lightning.data.sources.folder import list_class_dirs, list_videos  # noqa: E402


def write_h264(path: Path, frames: int, height: int = 128, width: int = 170) -> None:
    """A moving ramp as H.264 (yuv420p, 30 fps): the codec and frame rate of most Kinetics clips."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ramp = torch.arange(width).view(1, width, 1) + torch.arange(height).view(height, 1, 1)
        for t in range(frames):
            rgb = ((ramp + 4 * t + torch.tensor([0, 60, 120])) % 256).to(torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def ours_listing(root: Path) -> list[tuple[str, int]]:
    return [(str(p), label) for label, name in enumerate(list_class_dirs(root))
            for p in list_videos(root / name, VIDEO_EXTENSIONS)]


def pv_listing(root: Path) -> list[tuple[str, int]]:
    from pytorchvideo.data.labeled_video_paths import LabeledVideoPaths

    parsed = LabeledVideoPaths.from_directory(str(root))
    return [(path, meta["label"]) for path, meta in (parsed[i] for i in range(len(parsed)))]


def pv_hmdb(split_dir: Path) -> int:
    from pytorchvideo.data.hmdb51 import Hmdb51LabeledVideoPaths

    return sum(len(Hmdb51LabeledVideoPaths.from_dir(str(split_dir), 1, kind)) for kind in ("train", "unused"))


def ours_hmdb(root: Path) -> int:
    return len(HMDB51(str(root))._list("train"))


def pv_decode(path: str, frames: int = 8) -> torch.Tensor:
    from pytorchvideo.data.encoded_video import EncodedVideo

    video = EncodedVideo.from_path(path, decode_audio=False, decoder="pyav")
    try:
        every = video.get_clip(0, video.duration + 1)["video"]
    finally:
        video.close()
    return every[:, sample_indices(every.shape[1], frames)].to(torch.uint8)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def race(methods: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each method, interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, (fn, args) in methods.items():
            times[name].append(timed(fn, *args))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 300])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pytorchvideo_parity.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, load = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tsgf-pv-") as tmp:
        folder, hmdb = Path(tmp) / "folder", Path(tmp) / "hmdb"
        for c in range(args.classes):
            (folder / f"class_{c:03d}").mkdir(parents=True)
            for i in range(args.per_class):
                (folder / f"class_{c:03d}" / f"v{i:05d}.mp4").touch()
        (hmdb / "testTrainMulti_7030_splits").mkdir(parents=True)
        for c in range(51):
            action = f"action_{c:02d}"
            (hmdb / action).mkdir()
            names = [f"Film{i}_{action}_u_nm_np1_fr_goo_{i}.avi" for i in range(args.per_class)]
            for name in names:
                (hmdb / action / name).touch()
            lines = "".join(f"{name} {i % 3} \n" for i, name in enumerate(names))
            (hmdb / "testTrainMulti_7030_splits" / f"{action}_test_split1.txt").write_text(lines)
        assert sorted(ours_listing(folder)) == sorted(pv_listing(folder))
        t = race({"ours": (ours_listing, (folder,)), "pytorchvideo": (pv_listing, (folder,))}, args.repeats)
        rows.append((f"list {args.classes * args.per_class} files, {args.classes} class folders", t))
        t = race({"ours": (ours_hmdb, (hmdb,)), "pytorchvideo": (pv_hmdb, (hmdb / "testTrainMulti_7030_splits",))},
                 args.repeats)
        rows.append((f"HMDB51 fold files, 51 x {args.per_class} lines (train + unused)", t))
        for frames in args.frames:
            paths = [Path(tmp) / f"v{frames}_{i}.mp4" for i in range(args.videos)]
            for path in paths:
                write_h264(path, frames)
            for path in paths:
                assert torch.equal(decode_clips(str(path), 8)[0], pv_decode(str(path)))
            each = {"ours": (lambda ps: [decode_clips(str(p), 8) for p in ps], (paths,)),
                    "pytorchvideo": (lambda ps: [pv_decode(str(p)) for p in ps], (paths,))}
            t = {k: v / len(paths) for k, v in race(each, args.repeats).items()}
            rows.append((f"decode one 8-frame clip of a {frames}-frame 170x128 H.264 video", t))
    report(rows, args, started, load)


def report(rows, args, started: str, load: tuple) -> None:
    lines = ["# pytorchvideo against our listing and decoding", "",
             f"Command: `python benchmarks/pytorchvideo_parity.py --classes {args.classes} --per-class "
             f"{args.per_class} --videos {args.videos} --frames {' '.join(map(str, args.frames))} "
             f"--repeats {args.repeats}`", "",
             f"- started {started}; host {platform.node()}, {os.cpu_count()} CPU cores shared with other jobs, load "
             f"average {', '.join(f'{v:.1f}' for v in load)}; one thread; medians of {args.repeats} interleaved rounds",
             f"- pytorchvideo {__import__('pytorchvideo').__version__}, PyAV {av.__version__}, "
             f"torch {torch.__version__}", "",
             "| task | ours | pytorchvideo | pytorchvideo / ours |", "|---|---:|---:|---:|"]
    for task, t in rows:
        lines.append(f"| {task} | {t['ours'] * 1e3:.1f} ms | {t['pytorchvideo'] * 1e3:.1f} ms | "
                     f"{t['pytorchvideo'] / t['ours']:.2f} |")
    lines += ["", "Both sides give equal results on these inputs (asserted before timing).", ""]
    print(write_report(args.out, "\n".join(lines)))


if __name__ == "__main__":
    main()
