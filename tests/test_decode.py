"""Frame sampling against a naive loop written from the docstring, and PyAV decoding against the exact
frames of lossless videos written here (per-frame random content, so any wrong index shows)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from tsgf_lightning.data.decode import VideoDecodeError, decode_clips, sample_indices

# ------------------------------------------------------------------------------------------- sampling

def naive_indices(n: int, T: int, sampling: str, gap: int, position: float) -> list[int]:
    """The rules of ``tsgf_lightning.data.decode`` read literally, in exact arithmetic.

    ``position`` is taken as the fraction it stands for (``(i + 0.5) / k``, 0.3 = 3/10).
    """
    p = Fraction(position).limit_denominator(1000)
    out = []
    if sampling == "uniform":
        # T equal segments [t n / T, (t + 1) n / T); the frame at relative offset p inside segment t.
        for t in range(T):
            seg_start, seg_end = Fraction(t * n, T), Fraction((t + 1) * n, T)
            if p < 1:
                i = math.floor(seg_start + p * (seg_end - seg_start))
            else:  # the last frame whose index is inside the segment
                i = max(j for j in range(n + 1) if j < seg_end)
            out.append(min(i, n - 1))
    else:
        g = gap if (T - 1) * gap + 1 <= n else max(1, n // T)
        last_start = max(n - ((T - 1) * g + 1), 0)
        x = p * last_start
        start = math.floor(x) + (1 if x - math.floor(x) >= Fraction(1, 2) else 0)  # nearest, halves up
        for t in range(T):
            out.append(min(start + t * g, n - 1))
    return out


POSITIONS = (0.0, 0.1, 0.25, 0.3, 1 / 3, 0.5, 2 / 3, 0.75, 0.9, 1.0, 1 / 6, 5 / 6, 1 / 10, 0.15, 0.45)


@pytest.mark.parametrize("sampling", ["uniform", "fixed_gap"])
def test_sample_indices_match_naive_loop(sampling):
    checked = 0
    for n in list(range(1, 41)) + [63, 64, 100, 101, 250, 301]:
        for T in (1, 2, 3, 4, 5, 7, 8, 16):
            for gap in ((1, 2, 3, 4, 7) if sampling == "fixed_gap" else (4,)):
                for position in POSITIONS:
                    got = sample_indices(n, T, sampling, gap, position)
                    want = naive_indices(n, T, sampling, gap, position)
                    assert got.dtype == torch.int64 and got.shape == (T,)
                    assert got.tolist() == want, (n, T, gap, position)
                    checked += 1
    assert checked > 5000


def test_positions_on_segment_boundaries_are_exact():
    # The DataModule's k = 3 clip positions are 1/6, 1/2, 5/6. Where an index is a whole number in
    # exact arithmetic, naive float arithmetic lands just below it: (2 + 1/6) * 54 / 3 must give 39, not 38.
    assert sample_indices(54, 3, "uniform", position=1 / 6).tolist() == [3, 21, 39]
    assert sample_indices(9, 3, "uniform", position=2 / 3).tolist() == [2, 5, 8]
    assert sample_indices(9, 3, "uniform", position=5 / 6).tolist() == [2, 5, 8]


def test_uniform_covers_the_video_and_stays_in_range():
    for n in (1, 5, 8, 9, 31, 300):
        for position in (0.0, 0.5, 1.0):
            idx = sample_indices(n, 8, "uniform", position=position)
            assert idx.min() >= 0 and idx.max() <= n - 1
            assert torch.all(idx[1:] >= idx[:-1])
    # Position 0 starts at frame 0, position 1 ends at the last frame: the clip spans the video.
    assert sample_indices(300, 8, "uniform", position=0.0)[0] == 0
    assert sample_indices(300, 8, "uniform", position=1.0)[-1] == 299


def test_fixed_gap_span_and_short_video_fallback():
    # Long enough: frames `gap` apart, from the first start (0) to the last possible start (1).
    assert sample_indices(100, 8, "fixed_gap", gap=4, position=0.0).tolist() == list(range(0, 29, 4))
    assert sample_indices(100, 8, "fixed_gap", gap=4, position=1.0).tolist() == list(range(71, 100, 4))
    # 20 frames cannot hold the span 29 of gap 4: gap becomes 20 // 8 = 2 (span 15, last start 5).
    assert sample_indices(20, 8, "fixed_gap", gap=4, position=0.5).tolist() == [3, 5, 7, 9, 11, 13, 15, 17]


def test_short_video_repeats_frames_as_documented():
    # n < T: indices are clamped to the last frame, so frames repeat; every frame is still used.
    idx = sample_indices(5, 8, "uniform", position=0.5)
    assert idx.tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert set(idx.tolist()) == set(range(5))
    gap_idx = sample_indices(5, 8, "fixed_gap", gap=4, position=0.5)
    assert gap_idx.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]  # gap max(1, 5 // 8) = 1, then clamped
    assert sample_indices(1, 8).tolist() == [0] * 8


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_frames=0, frames=8), "num_frames"),
    (dict(num_frames=10, frames=0), "frames"),
    (dict(num_frames=10, frames=8, position=1.5), "position"),
    (dict(num_frames=10, frames=8, position=-0.1), "position"),
    (dict(num_frames=10, frames=8, sampling="fixed_gap", gap=0), "gap"),
    (dict(num_frames=10, frames=8, sampling="random"), "sampling"),
])
def test_sample_indices_name_the_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        sample_indices(**kwargs)


# ------------------------------------------------------------------------------------------- decoding

# FFV1/Matroska has no frame count in its header (the decoder counts packets); lossless H.264 in MP4 has one.
SUFFIX = {"ffv1": "mkv", "libx264rgb": "mp4"}


def random_frames(T: int, H: int = 24, W: int = 40, seed: int = 0) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 noise: every frame (and every pixel) distinct with overwhelming probability."""
    return torch.randint(0, 256, (T, H, W, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("codec", list(SUFFIX))
@pytest.mark.parametrize("sampling, gap", [("uniform", 4), ("fixed_gap", 3)])
def test_decoded_clips_are_the_source_frames(tmp_path, write_video, codec, sampling, gap):
    n, T = 29, 8
    frames = random_frames(n)  # (n, H, W, 3), H != W so a transposition would show
    path = write_video(tmp_path / f"v.{SUFFIX[codec]}", frames, codec)
    positions = (0.0, 1 / 6, 0.5, 5 / 6, 1.0)
    clips = decode_clips(str(path), T, None, sampling, gap, positions)
    assert clips.dtype == torch.uint8 and clips.shape == (len(positions), 3, T, 24, 40)
    for k, position in enumerate(positions):
        want = frames[naive_indices(n, T, sampling, gap, position)]  # (T, H, W, 3)
        assert torch.equal(clips[k], want.permute(3, 0, 1, 2)), position


def test_video_shorter_than_the_clip_repeats_frames(tmp_path, write_video):
    frames = random_frames(5, seed=1)
    path = write_video(tmp_path / "short.mkv", frames)
    clip = decode_clips(str(path), 8)[0]  # (C, T, H, W)
    want = frames[[0, 0, 1, 2, 2, 3, 4, 4]].permute(3, 0, 1, 2)
    assert torch.equal(clip, want)


def test_resize_gives_the_requested_size_and_keeps_flat_colours(tmp_path, write_video):
    frames = torch.zeros(6, 24, 40, 3, dtype=torch.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 200, 30, 90  # one flat colour: any area filter keeps it
    path = write_video(tmp_path / "flat.mkv", frames)
    clip = decode_clips(str(path), 4, (12, 16))
    assert clip.shape == (1, 3, 4, 12, 16)
    assert torch.equal(clip[0, :, 0, 0, 0], torch.tensor([200, 30, 90], dtype=torch.uint8))
    assert (clip[0] == clip[0, :, :1, :1, :1]).all()


def test_unreadable_files_raise_decode_errors_naming_them(tmp_path):
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    for path in (garbage, empty, tmp_path / "absent.mkv"):
        with pytest.raises(VideoDecodeError, match=path.name):
            decode_clips(str(path), 8)
