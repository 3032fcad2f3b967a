"""The embedded dataset: determinism, lossless files, atomic idempotent generation, and the claim
that within each pair of classes only motion tells them apart."""

import hashlib
import json
import os

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tsgf_lightning.data import embedded
from tsgf_lightning.data.embedded import EMBEDDED_CLASSES, clip_seed, generate_embedded, render_clip, write_clip

TINY = dict(train_per_class=2, test_per_class=1, frames=4, size=16, progress=False)




def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _decode(path: str) -> torch.Tensor:
    """PyAV's ordinary decoding path, back to the package convention (3, T, H, W) uint8."""
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)


def _tree(root: str) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files}


# --------------------------------------------------------------------------------------- rendering
def test_render_shape_dtype_and_validation():
    clip = render_clip(3, _gen(0), frames=5, size=24)
    assert clip.shape == (3, 5, 24, 24) and clip.dtype == torch.uint8
    assert clip.float().std() > 5  # not a blank canvas
    for kwargs, name in ((dict(label=8), "label"), (dict(label=-1), "label"), (dict(frames=1), "frames"),
                         (dict(size=8), "size")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            render_clip(**{"label": 0, "generator": _gen(0), **kwargs})


def test_render_is_deterministic_and_seed_dependent():
    a, b = render_clip(4, _gen(7)), render_clip(4, _gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, render_clip(4, _gen(8)))
    seeds = {clip_seed(0, "train", 1, 2), clip_seed(1, "train", 1, 2), clip_seed(0, "test", 1, 2),
             clip_seed(0, "train", 2, 2), clip_seed(0, "train", 1, 3)}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)
    assert clip_seed(0, "train", 1, 2) == clip_seed(0, "train", 1, 2)


#: SHA-256 of render_clip(5, seed clip_seed(0, "train", 5, 0)) at VERSION 2 (16 x 64 x 64).
GOLDEN = "d4eb268cb52b5804385c63b5e024c29369c7e934ecf37ac8a5c7aa3eb7fea5d6"


def test_golden_checksum():
    # Guards reproducibility across versions and machines: if this fails, the pixels changed, so
    # bump `embedded.VERSION` (stale generated roots are then rebuilt) and update the digest.
    clip = render_clip(5, _gen(clip_seed(0, "train", 5, 0)))
    assert hashlib.sha256(clip.numpy().tobytes()).hexdigest() == GOLDEN
    assert embedded.VERSION == 2


def test_second_class_of_a_pair_is_the_first_played_backwards():
    for pair in range(len(EMBEDDED_CLASSES) // 2):
        forward = render_clip(2 * pair, _gen(100 + pair))
        backward = render_clip(2 * pair + 1, _gen(100 + pair))
        assert torch.equal(backward, forward.flip(1))
        assert not torch.equal(backward, forward)


# -------------------------------------------------------------------------------------------- files
def test_lossless_round_trip_through_pyav(tmp_path):
    clip = render_clip(6, _gen(3), frames=16, size=64)
    path = str(tmp_path / "clip.mkv")
    write_clip(path, clip)
    assert torch.equal(_decode(path), clip)
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "ffv1" and stream.average_rate == embedded.FPS
        assert all(p.is_keyframe for p in container.demux(video=0) if p.size)  # exact seeking
    with pytest.raises(ValueError, match="`clip`"):
        write_clip(path, clip.float())


def test_layout_and_manifest(tmp_path):
    root = generate_embedded(str(tmp_path / "emb"), seed=3, **TINY)
    for split, n in (("train", 2), ("test", 1)):
        assert sorted(os.listdir(os.path.join(root, split))) == sorted(EMBEDDED_CLASSES)
        for name in EMBEDDED_CLASSES:
            assert sorted(os.listdir(os.path.join(root, split, name))) == [f"{name}_{i:04d}.mkv" for i in range(n)]
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["version"] == embedded.VERSION and manifest["classes"] == list(EMBEDDED_CLASSES)
    assert manifest["arguments"] == dict(train_per_class=2, test_per_class=1, frames=4, size=16, seed=3)
    # Any file is its clip, regenerated alone from (seed, split, label, index).
    clip = render_clip(7, _gen(clip_seed(3, "test", 7, 0)), frames=4, size=16)
    assert torch.equal(_decode(os.path.join(root, "test", "shrink", "shrink_0000.mkv")), clip)
    assert os.listdir(tmp_path) == ["emb"]  # no temporary siblings left behind


def test_same_seed_same_decoded_clips_other_seed_different(tmp_path):
    roots = [generate_embedded(str(tmp_path / name), seed=seed, **TINY)
             for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    rel = os.path.join("train", "rotate_cw", "rotate_cw_0001.mkv")
    a, b, c = (_decode(os.path.join(r, rel)) for r in roots)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with open(os.path.join(roots[0], rel), "rb") as fa, open(os.path.join(roots[1], rel), "rb") as fb:
        assert fa.read() == fb.read()  # bit-exact muxing: even the file bytes repeat


def test_idempotent_then_replaced_when_arguments_change(tmp_path):
    root = str(tmp_path / "emb")
    generate_embedded(root, **TINY)
    before = _tree(root)
    assert generate_embedded(root, **TINY) == os.path.abspath(root)
    assert _tree(root) == before  # nothing rewritten: same files, same mtimes

    generate_embedded(root, **{**TINY, "train_per_class": 1})
    after = _tree(root)
    assert len(after) == len(before) - len(EMBEDDED_CLASSES)  # replaced, not merged
    assert "train/grow/grow_0001.mkv" not in after
    assert after["manifest.json"] != before["manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["emb"]

    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["version"] = -1  # another generator version: rebuilt
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    generate_embedded(root, **{**TINY, "train_per_class": 1})
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f)["version"] == embedded.VERSION


def test_interrupted_generation_leaves_no_complete_looking_root(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = embedded.write_clip

    def flaky_write(path, clip):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_write(path, clip)

    monkeypatch.setattr(embedded, "write_clip", flaky_write)
    root = str(tmp_path / "emb")
    with pytest.raises(KeyboardInterrupt):
        generate_embedded(root, **TINY)
    assert os.listdir(tmp_path) == []  # neither a root nor a partial sibling

    monkeypatch.setattr(embedded, "write_clip", real_write)
    generate_embedded(root, **TINY)
    before = _tree(root)
    calls["n"] = 0
    monkeypatch.setattr(embedded, "write_clip", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        generate_embedded(root, **{**TINY, "seed": 1})
    assert _tree(root) == before and os.listdir(tmp_path) == ["emb"]  # old complete root kept


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="`root`"):
        generate_embedded(str(tmp_path), **TINY)
    assert os.listdir(tmp_path) == ["precious.txt"]
    with pytest.raises(ValueError, match="`train_per_class`"):
        generate_embedded(str(tmp_path / "emb"), **{**TINY, "train_per_class": 0})


# ---------------------------------------------------------------------------- motion is the label
N_CLIPS = 50


@pytest.fixture(scope="module")
def clips_by_label():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {label: torch.stack([render_clip(label, _gen(clip_seed(11, "test", label, i))) for i in range(N_CLIPS)])
           for label in range(len(EMBEDDED_CLASSES))}
    torch.set_num_threads(threads)
    return out  # label -> (N, 3, T, H, W) uint8


def _foreground_features(clips: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame foreground centroid (x, y) and mass, (N, T) each. Foreground: summed absolute
    distance of each pixel from its clip's temporal mean, above 60 grey levels (the noise floor)."""
    v = clips.float()
    fg = (v - v.mean(2, keepdim=True)).abs().sum(1)  # (N, T, H, W)
    fg = fg * (fg > 60)
    coords = torch.arange(fg.shape[-1], dtype=torch.float32)
    mass = fg.sum((-1, -2)).clamp_min(1.0)
    return {"x": (fg.sum(-2) * coords).sum(-1) / mass, "y": (fg.sum(-1) * coords).sum(-1) / mass, "mass": mass}


def _z(a: torch.Tensor, b: torch.Tensor) -> float:
    """Welch's two-sample z statistic of per-clip values (N,) each."""
    return ((a.mean() - b.mean()) / (a.var() / a.numel() + b.var() / b.numel()).sqrt()).item()


def test_single_frames_carry_no_label_but_their_order_does(clips_by_label):
    # Averaged over a clip's frames (what a frame-order-blind model sees), where the foreground is
    # and how big it is do not differ between the two classes of a pair beyond sampling noise; the
    # same features read as last-minus-first frame differ by tens of standard errors, so this test
    # would catch, e.g., start positions that depend on the direction (a direction-dependent
    # offset of the foreground of ~4 px, a sixth of the travel, already gives |z| > 3 here).
    for pair in range(len(EMBEDDED_CLASSES) // 2):
        a = _foreground_features(clips_by_label[2 * pair])
        b = _foreground_features(clips_by_label[2 * pair + 1])
        for name in a:
            assert abs(_z(a[name].mean(1), b[name].mean(1))) < 3.0, (pair, name)
        if pair != 2:  # a turning bar's position and area do not change
            name = {0: "x", 1: "y", 3: "mass"}[pair]
            sign = -1.0 if pair == 1 else 1.0  # screen y points down: "up" decreases y
            change = {k: v[name][:, -1] - v[name][:, 0] for k, v in (("a", a), ("b", b))}
            assert sign * _z(change["a"], change["b"]) > 10, (pair, name)


def _global_motion(clips: torch.Tensor, model: str) -> torch.Tensor:
    """Least-squares fit of brightness constancy ``I_t + u I_x + v I_y = 0`` over whole frames
    (grey, blurred), averaged over frame pairs: (N,) signed motion parameter.

    ``right``: u = p (rightward speed); ``down``: v = p; ``clockwise``: (u, v) = p (-y, x) + (a, b)
    (clockwise on screen since y points down; a, b absorb the unknown centre); ``expand``:
    (u, v) = p (x, y) + (a, b)."""
    N, C, T, H, W = clips.shape
    g = clips.float().mean(1).reshape(N * T, 1, H, W)
    for _ in range(2):  # two 5x5 box blurs: a smooth kernel, so motion of ~2 px/frame stays linear
        g = F.avg_pool2d(g, 5, stride=1, padding=2, count_include_pad=False)
    g = g.view(N, T, H, W)
    ix = ((g[..., 2:] - g[..., :-2]) / 2)[:, :-1, 1:-1, :]  # central differences, (N, T-1, H-2, W-2)
    iy = ((g[..., 2:, :] - g[..., :-2, :]) / 2)[:, :-1, :, 1:-1]
    it = (g[:, 1:] - g[:, :-1])[..., 1:-1, 1:-1]
    y = torch.arange(H - 2, dtype=torch.float32).view(-1, 1) - (H - 3) / 2
    x = torch.arange(W - 2, dtype=torch.float32).view(1, -1) - (W - 3) / 2
    columns = {"right": [ix, iy], "down": [iy, ix], "clockwise": [x * iy - y * ix, ix, iy],
               "expand": [x * ix + y * iy, ix, iy]}[model]
    A = torch.stack([c.flatten(2) for c in columns], -1)  # (N, T-1, P, k)
    normal = A.transpose(-1, -2) @ A
    rhs = A.transpose(-1, -2) @ (-it.flatten(2)).unsqueeze(-1)
    return torch.linalg.solve(normal, rhs)[..., 0, 0].mean(1)


def test_a_simple_motion_statistic_separates_each_pair(clips_by_label):
    for pair, (model, sign) in enumerate((("right", 1), ("down", -1), ("clockwise", 1), ("expand", 1))):
        first = sign * _global_motion(clips_by_label[2 * pair], model)
        second = sign * _global_motion(clips_by_label[2 * pair + 1], model)
        assert (first > 0).float().mean() > 0.9, EMBEDDED_CLASSES[2 * pair]
        assert (second < 0).float().mean() > 0.9, EMBEDDED_CLASSES[2 * pair + 1]
