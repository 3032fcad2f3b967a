"""Multi-formation packing against naive per-tile loops."""

import pytest
import torch
from torch.nn import functional as F

from tsgf_lightning.tsgf.multiformation import pack_tiles, tile_map, unpack_tiles


def naive_pack(clips, f):
    M, C, T, H, W = clips.shape
    h, w = H // f, W // f
    out = torch.zeros(M // (f * f), C, T, H, W)
    for n in range(M // (f * f)):
        for k in range(f * f):
            r, c = divmod(k, f)
            clip = clips[n * f * f + k]
            for t in range(T):
                small = F.avg_pool2d(clip[:, t][None], f)[0]  # area downsampling = mean of f x f blocks
                out[n, :, t, r * h:(r + 1) * h, c * w:(c + 1) * w] = small
    return out


def naive_unpack(videos, f):
    N, C, T, H, W = videos.shape
    h, w = H // f, W // f
    out = []
    for n in range(N):
        for k in range(f * f):
            r, c = divmod(k, f)
            tile = videos[n, :, :, r * h:(r + 1) * h, c * w:(c + 1) * w]  # (C, T, h, w)
            frames = [F.interpolate(tile[:, t][None], size=(H, W), mode="bilinear", align_corners=False)[0]
                      for t in range(T)]
            out.append(torch.stack(frames, 1))
    return torch.stack(out)


@pytest.mark.parametrize("f", [1, 2, 3])
def test_pack_and_unpack_match_naive_loops(f):
    g = torch.Generator().manual_seed(f)
    clips = torch.rand(2 * f * f, 3, 4, 12, 12, generator=g)
    packed = pack_tiles(clips, f)
    assert packed.shape == (2, 3, 4, 12, 12)
    torch.testing.assert_close(packed, naive_pack(clips, f))
    torch.testing.assert_close(unpack_tiles(packed, f), naive_unpack(packed, f))


def test_tiles_keep_their_class_order_and_constant_clips_round_trip():
    # Clip k is constant k: after packing and unpacking, tile k is still constant k (order kept).
    clips = torch.arange(8.0).view(8, 1, 1, 1, 1).expand(8, 3, 2, 8, 8).contiguous()
    back = unpack_tiles(pack_tiles(clips, 2), 2)
    torch.testing.assert_close(back, clips)


def test_unpack_is_differentiable_and_factor_one_is_identity():
    v = torch.rand(1, 3, 2, 8, 8, requires_grad=True)
    unpack_tiles(v, 2).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert unpack_tiles(v, 1) is v and pack_tiles(v, 1) is v


def test_tile_map_places_each_tiles_values_on_its_region():
    f, T = 2, 3
    per_tile = torch.arange(2 * f * f * T, dtype=torch.float32).view(2 * f * f, T)
    m = tile_map(per_tile, f, 6, 6)
    assert m.shape == (2, 1, T, 6, 6)
    for n in range(2):
        for k in range(f * f):
            r, c = divmod(k, f)
            region = m[n, 0, :, r * 3:(r + 1) * 3, c * 3:(c + 1) * 3]
            assert torch.all(region == per_tile[n * f * f + k].view(T, 1, 1))


def test_bad_factor_is_named():
    with pytest.raises(ValueError, match="factor"):
        pack_tiles(torch.rand(4, 3, 2, 10, 10), 3)
    with pytest.raises(ValueError, match="multiple of factor"):
        pack_tiles(torch.rand(3, 3, 2, 8, 8), 2)
    with pytest.raises(ValueError, match="factor"):
        unpack_tiles(torch.rand(1, 3, 2, 8, 8), 0)
