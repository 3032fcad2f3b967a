"""Saliency and mask (Eq. 6-8) against plain loops written from the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from tsgf_lightning.tsgf.saliency import (
    frame_differences,
    key_frames,
    saliency_threshold,
    smooth_saliency,
    temporal_saliency,
    tsgf_mask,
    window_weights,
)

WINDOWS = ["uniform", "hann", "exponential", "linear"]
FRAMES = [1, 2, 3, 8, 16]


# ---------------------------------------------------------------- naive references (loops)
def naive_differences(video: torch.Tensor) -> torch.Tensor:
    """Eq. 6, one video and one frame at a time; |.| = mean over C, H, W."""
    B, C, T, H, W = video.shape
    d = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for i in range(T):
            terms = []
            if i + 1 < T:
                terms.append((video[b, :, i + 1] - video[b, :, i]).abs().double().mean())
            if i - 1 >= 0:
                terms.append((video[b, :, i] - video[b, :, i - 1]).abs().double().mean())
            d[b, i] = sum(terms) / len(terms) if terms else 0.0
    return d


def naive_weights(length: int, window: str, decay: float = 0.5) -> list[float]:
    if window == "uniform":
        a = [1.0] * length
    elif window == "hann":
        # Right half of the symmetric Hann window of length 2L+1, without the trailing zero.
        full = torch.hann_window(2 * length + 1, periodic=False, dtype=torch.float64).tolist()
        a = full[length : 2 * length]
    elif window == "exponential":
        a = [decay**j for j in range(length)]
    else:
        a = [float(length - j) for j in range(length)]
    total = sum(a)
    return [x / total for x in a]


def naive_smooth(d: torch.Tensor, a: list[float]) -> torch.Tensor:
    """Eq. 7, causal; at the clip start the weights are renormalised over the existing terms."""
    B, T = d.shape
    s = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for i in range(T):
            num = den = 0.0
            for j, aj in enumerate(a):
                if i - j >= 0:
                    num += aj * float(d[b, i - j])
                    den += aj
            s[b, i] = num / den
    return s


def naive_quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics at position q * (n - 1)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def naive_mask(s: torch.Tensor, eps: float, eps_mode: str, shape: str, signed: bool,
               floor: float = 0.0) -> torch.Tensor:
    """Eq. 8 per video and frame, at least ``floor``; flat videos (range <= 1e-12 + 1e-6 max|s|) get ones."""
    B, T = s.shape
    m = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        row = [float(x) for x in s[b]]
        thr = eps if eps_mode == "absolute" else naive_quantile(row, eps)
        span = max(row) - min(row)
        flat = span <= 1e-12 + 1e-6 * max(abs(x) for x in row)
        for i, si in enumerate(row):
            if flat:
                m[b, i] = 1.0
            elif shape == "binary":
                m[b, i] = 1.0 if si <= thr else 0.0
            elif signed:
                m[b, i] = (thr - si) / span
            else:
                m[b, i] = max(thr - si, 0.0) / span
            if not flat and not signed:
                m[b, i] = max(m[b, i], floor)
    return m


# ---------------------------------------------------------------- Eq. 6
@pytest.mark.parametrize("T", FRAMES)
def test_frame_differences_matches_loop(T: int) -> None:
    g = torch.Generator().manual_seed(T)
    video = torch.randn(3, 2, T, 5, 4, generator=g)
    d = frame_differences(video)
    assert d.shape == (3, T)
    torch.testing.assert_close(d.double(), naive_differences(video), rtol=1e-5, atol=1e-6)


def test_frame_differences_uint8_does_not_wrap_and_accepts_grad() -> None:
    video = torch.zeros(1, 3, 3, 2, 2, dtype=torch.uint8)
    video[:, :, 1] = 200  # 0 -> 200 -> 0: wrapping uint8 arithmetic would give 56
    torch.testing.assert_close(frame_differences(video), torch.tensor([[200.0, 200.0, 200.0]]))
    x = torch.randn(2, 3, 4, 3, 3, requires_grad=True)
    torch.testing.assert_close(frame_differences(x).double(), naive_differences(x.detach()), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert frame_differences(x).shape == (2, 4)


def test_frame_differences_one_frame_is_zero() -> None:
    assert torch.equal(frame_differences(torch.randn(2, 3, 1, 4, 4)), torch.zeros(2, 1))


# ---------------------------------------------------------------- windows and Eq. 7
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("length", [1, 2, 3, 5])
def test_window_weights_match_definition(window: str, length: int) -> None:
    a = window_weights(length, window, decay=0.6)
    assert a.shape == (length,) and a.dtype == torch.float32
    torch.testing.assert_close(a.double(), torch.tensor(naive_weights(length, window, 0.6), dtype=torch.float64))
    assert abs(float(a.sum()) - 1.0) < 1e-6
    assert bool((a > 0).all())  # no wasted (zero) taps
    assert bool((a[:-1] >= a[1:]).all())  # never more weight on the past than the present


def test_window_weights_known_values() -> None:
    torch.testing.assert_close(window_weights(3, "hann"), torch.tensor([0.5, 0.375, 0.125]))
    torch.testing.assert_close(window_weights(3, "exponential", decay=0.5), torch.tensor([4.0, 2.0, 1.0]) / 7)
    torch.testing.assert_close(window_weights(3, "linear"), torch.tensor([3.0, 2.0, 1.0]) / 6)
    torch.testing.assert_close(window_weights(4, "uniform"), torch.full((4,), 0.25))
    torch.testing.assert_close(window_weights(1, "hann"), torch.tensor([1.0]))


@pytest.mark.parametrize("T", FRAMES)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("length", [1, 2, 3, 5, 20])
def test_smooth_saliency_matches_loop(T: int, window: str, length: int) -> None:
    g = torch.Generator().manual_seed(100 * T + length)
    d = torch.rand(4, T, generator=g)
    a = window_weights(length, window, decay=0.7)
    s = smooth_saliency(d, a)
    assert s.shape == (4, T)
    torch.testing.assert_close(s.double(), naive_smooth(d, naive_weights(length, window, 0.7)), rtol=1e-5, atol=1e-6)


def test_smooth_saliency_constant_in_constant_out() -> None:
    d = torch.full((2, 9), 0.3)
    torch.testing.assert_close(smooth_saliency(d, window_weights(4, "hann")), d)


def test_smooth_saliency_is_causal() -> None:
    d = torch.rand(1, 10)
    bumped = d.clone()
    bumped[0, 6] += 5.0  # a change at frame 6 cannot move frames 0..5
    s, sb = smooth_saliency(d, window_weights(3)), smooth_saliency(bumped, window_weights(3))
    torch.testing.assert_close(s[:, :6], sb[:, :6])
    assert bool((sb[:, 6:9] > s[:, 6:9]).all()) and torch.allclose(s[:, 9:], sb[:, 9:])


@pytest.mark.parametrize("T", FRAMES)
@pytest.mark.parametrize("window", ["hann", "exponential"])
def test_temporal_saliency_composes_eq6_and_eq7(T: int, window: str) -> None:
    g = torch.Generator().manual_seed(T)
    video = torch.randn(2, 3, T, 6, 6, generator=g)
    expected = naive_smooth(naive_differences(video), naive_weights(3, window))
    torch.testing.assert_close(temporal_saliency(video, 3, window).double(), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- threshold and Eq. 8
@pytest.mark.parametrize("T", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_quantile_threshold_matches_loop(T: int, q: float) -> None:
    s = torch.rand(3, T, generator=torch.Generator().manual_seed(T))
    thr = saliency_threshold(s, q, "quantile")
    assert thr.shape == (3, 1)
    expected = torch.tensor([[naive_quantile(s[b].tolist(), q)] for b in range(3)])
    torch.testing.assert_close(thr, expected)
    torch.testing.assert_close(saliency_threshold(s, 0.25, "absolute"), torch.full((3, 1), 0.25))


@pytest.mark.parametrize("T", FRAMES)
@pytest.mark.parametrize(
    ("eps", "eps_mode"),
    [(0.5, "quantile"), (0.2, "quantile"), (0.8, "quantile"), (0.4, "absolute"), (2.0, "absolute")],
)
@pytest.mark.parametrize(("shape", "signed"), [("eq8", False), ("eq8", True), ("binary", False)])
def test_tsgf_mask_matches_loop(T: int, eps: float, eps_mode: str, shape: str, signed: bool) -> None:
    g = torch.Generator().manual_seed(T)
    video = torch.randn(3, 2, T, 4, 4, generator=g)
    s = temporal_saliency(video, 3, "hann")
    m = tsgf_mask(s, eps, eps_mode, shape, signed)
    assert m.shape == (3, T) and m.dtype == s.dtype
    torch.testing.assert_close(m.double(), naive_mask(s, eps, eps_mode, shape, signed), rtol=1e-5, atol=1e-6)
    # key_frames is always the complement of the binary mask.
    assert torch.equal(key_frames(s, eps, eps_mode), tsgf_mask(s, eps, eps_mode, "binary") == 0)
    if T <= 2:  # Eq. 6 gives both frames of a 2-frame clip the same d: flat, no key frames
        assert torch.equal(m, torch.ones(3, T))
    elif shape == "eq8" and not signed:
        assert bool((m >= 0).all())
        if eps_mode == "quantile":
            assert bool((m <= 1 + 1e-6).all())  # eps <= max(s) keeps Eq. 8 in [0, 1]
        assert torch.equal(m == 0, key_frames(s, eps, eps_mode) | (s == saliency_threshold(s, eps, eps_mode)))


@pytest.mark.parametrize("shape", ["eq8", "binary"])
@pytest.mark.parametrize("floor", [0.25, 0.5])
def test_a_mask_floor_lifts_key_frames_to_it_and_leaves_the_rest(shape: str, floor: float) -> None:
    video = torch.randn(3, 2, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    s = temporal_saliency(video, 3, "hann")
    m = tsgf_mask(s, 0.5, "quantile", shape, floor=floor)
    torch.testing.assert_close(m.double(), naive_mask(s, 0.5, "quantile", shape, False, floor), rtol=1e-5, atol=1e-6)
    key = key_frames(s, 0.5, "quantile")
    assert key.any() and torch.all(m[key] == floor)  # no frame stands still any more
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="`mask_floor`"):
            tsgf_mask(s, 0.5, "quantile", shape, floor=bad)
    with pytest.raises(ValueError, match="`mask_floor` 0 with a signed mask"):
        tsgf_mask(s, 0.5, "quantile", "eq8", signed=True, floor=floor)


def test_signed_mask_goes_negative_on_key_frames_only() -> None:
    s = torch.tensor([[0.0, 0.1, 0.9, 1.0, 0.2]])
    m = tsgf_mask(s, 0.5, "absolute", "eq8", signed=True)
    torch.testing.assert_close(m, torch.tensor([[0.5, 0.4, -0.4, -0.5, 0.3]]))
    torch.testing.assert_close(tsgf_mask(s, 0.5, "absolute"), m.clamp_min(0))


def test_flat_saliency_gives_ones_and_no_key_frames() -> None:
    static = torch.rand(1, 3, 1, 4, 4).expand(2, 3, 6, 4, 4).clone()  # no motion at all
    s = temporal_saliency(static)
    assert torch.equal(s, torch.zeros(2, 6))
    for shape in ("eq8", "binary"):
        assert torch.equal(tsgf_mask(s, 0.5, "quantile", shape), torch.ones(2, 6))
    # Constant non-zero saliency plus float32 rounding noise is flat too (the relative guard) ...
    noisy = torch.full((1, 8), 0.3) + torch.tensor([[0, 1, -1, 0, 2, 0, -2, 1]]) * 1e-8
    assert float(noisy.max() - noisy.min()) > 1e-12
    assert torch.equal(tsgf_mask(noisy, 0.5, "quantile"), torch.ones(1, 8))
    assert not key_frames(noisy, 0.5, "quantile").any()
    assert torch.equal(tsgf_mask(noisy, 0.1, "absolute", "binary"), torch.ones(1, 8))
    # ... but a real, small range is not: only the flat video of the batch gets ones.
    mixed = torch.cat([noisy, torch.full((1, 8), 0.3) + torch.arange(8.0)[None] * 1e-3])
    m = tsgf_mask(mixed, 0.5, "quantile")
    assert torch.equal(m[0], torch.ones(8)) and bool((m[1, 4:] == 0).all()) and bool((m[1, :4] > 0).all())


def test_static_video_with_one_cut() -> None:
    """Frames 0-3 are 0, frames 4-7 are 1 (a cut between frames 3 and 4); C=3, H=W=4.

    Eq. 6: |f4 - f3| = 1, all other differences 0, so d = [0, 0, 0, .5, .5, 0, 0, 0]
    (frame 3 and its successor 4 each see the cut on one side).
    No smoothing, eps = 0.25 absolute: key frames {3, 4}; range of s = 0.5, so Eq. 8 gives
    calm frames (0.25 - 0) / 0.5 = 0.5 and key frames 0; the binary mask is 1/0.
    Hann window of 2 taps (a = [2/3, 1/3]): s = [0, 0, 0, 1/3, 1/2, 1/6, 0, 0]; with eps = 0.25
    the key frames are still {3, 4}; frame 5 (the echo of the cut) gets (0.25 - 1/6) / 0.5 = 1/6.
    With eps = the median (0, since 5 of 8 frames are static) Eq. 8 zeroes every frame: a quantile
    eps at the minimum of s freezes the whole video.
    """
    video = torch.zeros(1, 3, 8, 4, 4)
    video[:, :, 4:] = 1.0
    d = frame_differences(video)
    torch.testing.assert_close(d, torch.tensor([[0, 0, 0, 0.5, 0.5, 0, 0, 0]]))

    s = temporal_saliency(video, window_length=1)
    keys = key_frames(s, 0.25, "absolute")
    assert keys[0].nonzero().flatten().tolist() == [3, 4]
    torch.testing.assert_close(tsgf_mask(s, 0.25, "absolute"), torch.tensor([[0.5, 0.5, 0.5, 0, 0, 0.5, 0.5, 0.5]]))
    torch.testing.assert_close(tsgf_mask(s, 0.25, "absolute", "binary"), torch.tensor([[1.0, 1, 1, 0, 0, 1, 1, 1]]))

    s2 = temporal_saliency(video, window_length=2, window="hann")
    torch.testing.assert_close(s2, torch.tensor([[0, 0, 0, 1 / 3, 1 / 2, 1 / 6, 0, 0]]))
    assert key_frames(s2, 0.25, "absolute")[0].nonzero().flatten().tolist() == [3, 4]
    torch.testing.assert_close(
        tsgf_mask(s2, 0.25, "absolute"), torch.tensor([[0.5, 0.5, 0.5, 0, 0, 1 / 6, 0.5, 0.5]])
    )
    assert torch.equal(tsgf_mask(s2, 0.5, "quantile"), torch.zeros(1, 8))
    assert key_frames(s2, 0.5, "quantile")[0].nonzero().flatten().tolist() == [3, 4, 5]


# ---------------------------------------------------------------- validation
def test_arguments_are_validated_by_name() -> None:
    s = torch.rand(2, 5)
    with pytest.raises(ValueError, match="`length`"):
        window_weights(0)
    with pytest.raises(ValueError, match="`window`"):
        window_weights(3, "gauss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`decay`"):
        window_weights(3, "exponential", decay=1.5)
    with pytest.raises(ValueError, match="`video`"):
        frame_differences(torch.rand(3, 4, 5, 5))
    with pytest.raises(ValueError, match="`d`"):
        smooth_saliency(torch.rand(5), window_weights(2))
    with pytest.raises(ValueError, match="`weights`"):
        smooth_saliency(s, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="`eps`"):
        tsgf_mask(s, 1.5, "quantile")
    with pytest.raises(ValueError, match="`eps`"):
        tsgf_mask(s, float("nan"), "absolute")
    with pytest.raises(ValueError, match="`eps_mode`"):
        tsgf_mask(s, 0.5, "relative")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`shape`"):
        tsgf_mask(s, 0.5, "quantile", "soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`signed`"):
        tsgf_mask(s, 0.5, "quantile", "binary", signed=True)
    with pytest.raises(ValueError, match="`s`"):
        key_frames(torch.rand(5), 0.5, "quantile")
