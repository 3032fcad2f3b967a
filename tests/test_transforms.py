"""ClipTransform: one crop and one flip per clip (never per frame), the evaluation framing against a
naive resize-and-crop, and the normalisation against ``(x / 255 - mean) / std`` channel by channel.

Training augmentation draws from torch's global RNG (torchvision v2 takes no generator); the tests
fix it inside ``torch.random.fork_rng`` so the rest of the session is unaffected.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tsgf_lightning.data.transforms import ClipTransform, center_crop

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)




def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_normalize(pixels01: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """``(C, T, H, W)`` in [0, 1] -> ``(x - mean_c) / std_c``, one channel at a time."""
    out = torch.empty_like(pixels01)
    for c in range(pixels01.shape[0]):
        out[c] = (pixels01[c] - mean[c]) / std[c]
    return out


def draws(transform: ClipTransform, clip: torch.Tensor, n: int, seed: int = 0) -> list[torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return [transform(clip) for _ in range(n)]


# ------------------------------------------------------------------------------- training transform

def test_identical_frames_stay_identical_under_random_crop_and_flip():
    frame = torch.randint(0, 256, (3, 1, 40, 56), generator=_gen(), dtype=torch.uint8)
    clip = frame.expand(3, 6, 40, 56).contiguous()  # (C, T, H, W): six copies of one frame
    transform = ClipTransform(24, train=True, crop_scale=(0.2, 1.0), flip=True)
    outs = draws(transform, clip, 30)
    for out in outs:
        assert out.shape == (3, 6, 24, 24) and out.dtype == torch.float32
        assert torch.equal(out, out[:, :1].expand_as(out)), "frames of one clip got different crops or flips"
    # The augmentation is really random (else the check above would be empty).
    assert len({tuple(o[:, 0].flatten()[:50].tolist()) for o in outs}) > 20


def test_a_brightness_ramp_survives_as_a_constant_difference():
    # Frame t = base + 5 t: a per-frame crop would make frame differences vary over the pixels;
    # one shared crop/flip (a linear map with weights summing to 1) keeps each difference at 5 t / 255.
    T = 8
    base = torch.randint(0, 200, (3, 1, 36, 50), generator=_gen(1), dtype=torch.int16)
    clip = (base + 5 * torch.arange(T, dtype=torch.int16).view(1, T, 1, 1)).to(torch.uint8)
    transform = ClipTransform(20, train=True, crop_scale=(0.2, 1.0), flip=True, mean=MEAN, std=STD)
    std = torch.tensor(STD).view(3, 1, 1, 1)
    for out in draws(transform, clip, 20, seed=3):
        diff = (out - out[:, :1]) * std  # back to [0, 1] pixel units, (C, T, 20, 20)
        want = (5 * torch.arange(T) / 255.0).view(1, T, 1, 1).expand_as(diff)
        torch.testing.assert_close(diff, want, atol=2e-5, rtol=0)


def test_flip_is_all_frames_or_none_and_happens():
    # Identity crop (whole square frame, aspect 1), so the output is the clip or its mirror image.
    clip = torch.randint(0, 256, (3, 5, 16, 16), generator=_gen(2), dtype=torch.uint8)
    transform = ClipTransform(16, train=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True)
    plain = naive_normalize(clip.float() / 255)
    mirrored = naive_normalize(clip.flip(-1).float() / 255)
    seen = set()
    for out in draws(transform, clip, 24, seed=5):
        if torch.allclose(out, plain, atol=1e-5):
            seen.add("plain")
        elif torch.allclose(out, mirrored, atol=1e-5):
            seen.add("mirrored")
        else:
            raise AssertionError("output is neither the clip nor its mirror image: frames flipped separately?")
    assert seen == {"plain", "mirrored"}


def test_no_flip_when_disabled():
    clip = torch.randint(0, 256, (3, 4, 16, 16), generator=_gen(4), dtype=torch.uint8)
    transform = ClipTransform(16, train=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
    plain = naive_normalize(clip.float() / 255)
    for out in draws(transform, clip, 16, seed=6):
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------- eval transform

def naive_eval(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` (long side ``int(size * long / short)``, bilinear with
    antialiasing), crop the centre ``size x size``, normalise. ``clip``: uint8 (C, T, H, W)."""
    C, T, H, W = clip.shape
    if H <= W:
        h, w = size, int(size * W / H)
    else:
        h, w = int(size * H / W), size
    frames = clip.float().permute(1, 0, 2, 3) / 255  # (T, C, H, W)
    if (h, w) != (H, W):
        frames = F.interpolate(frames, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    # Half the margin, rounded down. torchvision rounds half to even: the same for the margins used
    # here (21, UCF's 85 -> 64, gives 10 both ways); margins like 23 would differ by half a pixel.
    top, left = (h - size) // 2, (w - size) // 2
    frames = frames[:, :, top:top + size, left:left + size]
    return naive_normalize(frames.permute(1, 0, 2, 3))


@pytest.mark.parametrize("H, W, size", [(30, 50, 16), (50, 30, 16), (40, 40, 20), (64, 85, 64), (48, 64, 48)])
def test_eval_transform_is_resize_short_side_then_centre_crop(H, W, size):
    clip = torch.randint(0, 256, (3, 4, H, W), generator=_gen(H * W), dtype=torch.uint8)
    out = ClipTransform(size, train=False)(clip)
    assert out.shape == (3, 4, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, naive_eval(clip, size), atol=1e-4, rtol=0)


def test_eval_transform_without_resize_is_an_exact_centre_slice():
    clip = torch.randint(0, 256, (3, 3, 48, 64), generator=_gen(7), dtype=torch.uint8)
    out = ClipTransform(48, train=False)(clip)
    torch.testing.assert_close(out, naive_normalize(clip[..., 8:56].float() / 255), atol=1e-6, rtol=0)


def test_eval_transform_is_deterministic():
    clip = torch.randint(0, 256, (3, 4, 30, 50), generator=_gen(8), dtype=torch.uint8)
    transform = ClipTransform(16, train=False)
    assert torch.equal(transform(clip), transform(clip))


def test_normalisation_matches_per_channel_formula():
    # Size equal to the (square) frames: no resampling, only (x / 255 - mean) / std.
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    clip = torch.randint(0, 256, (3, 2, 12, 12), generator=_gen(9), dtype=torch.uint8)
    out = ClipTransform(12, train=False, mean=mean, std=std)(clip)
    want = torch.empty(3, 2, 12, 12)
    for c in range(3):
        for t in range(2):
            for y in range(12):
                for x in range(12):
                    want[c, t, y, x] = (clip[c, t, y, x].item() / 255 - mean[c]) / std[c]
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    # Float clips are taken as [0, 1] pixels (distilled videos), not divided again.
    torch.testing.assert_close(ClipTransform(12, train=False, mean=mean, std=std)(clip.float() / 255), want,
                               atol=1e-6, rtol=0)


def test_center_crop_frames_real_clips_like_the_eval_transform():
    clips = torch.randint(0, 256, (2, 3, 4, 30, 50), generator=_gen(10), dtype=torch.uint8)
    cropped = center_crop(clips, 16)
    assert cropped.shape == (2, 3, 4, 16, 16) and cropped.dtype == torch.uint8
    for i in range(2):
        # uint8 output: the eval transform's pixels up to rounding to whole grey levels.
        want = naive_eval(clips[i], 16)
        got = naive_normalize(cropped[i].float() / 255)
        assert (got - want).abs().max() <= 1.01 / 255 / min(STD)


def test_arguments_are_validated_by_name():
    with pytest.raises(ValueError, match="`size`"):
        ClipTransform(0, train=True)
    with pytest.raises(ValueError, match="`crop_scale`"):
        ClipTransform(16, train=True, crop_scale=(0.8, 0.5))
    with pytest.raises(ValueError, match="`crop_scale`"):
        ClipTransform(16, train=True, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(C, T, H, W\)"):
        ClipTransform(16, train=False)(torch.zeros(2, 3, 4, 16, 16, dtype=torch.uint8))
