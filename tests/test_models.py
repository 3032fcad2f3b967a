"""Tests of the network zoo: shapes, MiniC3D's exact architecture, size limits, heads and specs."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tsgf_lightning.models import CNNGRU, CNNLSTM, CNNRNN, ConvNet3D, MiniC3D, build, describe

FACTORIES = {
    "minic3d": lambda k: MiniC3D(k),
    "minic3d_nonorm": lambda k: MiniC3D(k, norm="none"),
    "convnet3d": lambda k: ConvNet3D(k),
    "cnnlstm": lambda k: CNNLSTM(k),
    "cnngru": lambda k: CNNGRU(k),
    "cnnrnn": lambda k: CNNRNN(k, cell="rnn"),
}
# Narrow versions for contracts that do not depend on the width (keeps the tests fast on CPU).
SMALL = {
    "minic3d": lambda k: MiniC3D(k, channels=(8, 16, 16)),
    "minic3d_nonorm": lambda k: MiniC3D(k, channels=(8, 16, 16), norm="none"),
    "convnet3d": lambda k: ConvNet3D(k, channels=(8, 16, 16)),
    "cnnlstm": lambda k: CNNLSTM(k, width=16),
    "cnngru": lambda k: CNNGRU(k, width=16),
    "cnnrnn": lambda k: CNNRNN(k, cell="rnn", width=16),
}


def _clip(B: int, T: int, H: int, W: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, T, H, W or H, generator=g)


# -------------------------------------------------------------------------------------------- Shapes


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shape", [(2, 8, 48), (2, 8, 64)], ids=["8x48", "8x64"])
def test_output_and_feature_shapes(name, shape):
    B, T, S = shape
    model = FACTORIES[name](7).eval()
    x = _clip(B, T, S)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (B, 7)
    assert feats.shape == (B, model.feature_dim)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["minic3d", "convnet3d", "cnnlstm", "cnngru"])
def test_one_forward_at_16x112(name):
    model = FACTORIES[name](7).eval()
    with torch.no_grad():
        logits = model(_clip(1, 16, 112))
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()


def test_feature_dims_follow_the_documented_rules():
    assert MiniC3D(3).feature_dim == 128
    assert MiniC3D(3, channels=(8, 16, 24)).feature_dim == 24
    assert ConvNet3D(3, channels=(8, 16, 24)).feature_dim == 24
    # CNN+RNN: D = width * spatial_pool^2 = 128 * 4; LSTM hidden D, GRU/RNN hidden D // 8.
    lstm, gru, rnn = CNNLSTM(3), CNNGRU(3), CNNRNN(3, cell="rnn")
    assert lstm.frame_dim == gru.frame_dim == 512
    assert (lstm.feature_dim, gru.feature_dim, rnn.feature_dim) == (512, 64, 64)
    assert isinstance(lstm.rnn, nn.LSTM) and isinstance(gru.rnn, nn.GRU) and isinstance(rnn.rnn, nn.RNN)
    assert lstm.rnn.hidden_size == 512 and gru.rnn.hidden_size == 64 and rnn.rnn.hidden_size == 64
    assert CNNRNN(3, cell="gru", spatial_pool=1).feature_dim == 16
    assert CNNGRU(3, hidden_size=100).feature_dim == 100
    # The LSTM stays small: 4 gates * (D*D + D*D + 2*D) weights.
    assert sum(p.numel() for p in lstm.rnn.parameters()) == 4 * (512 * 512 * 2 + 2 * 512)


@pytest.mark.parametrize("S", [48, 64, 112])
def test_cnnrnn_frame_vector_is_resolution_free(S):
    model = CNNLSTM(3)
    frames = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(S))
    assert model.frame_pool(model.convnet(frames)).flatten(1).shape == (2, 512)


# ---------------------------------------------------------------------- MiniC3D's exact architecture


def test_minic3d_layer_list():
    model = MiniC3D(10)
    layers = list(model.features_stack)
    expected_types = [nn.Conv3d, nn.BatchNorm3d, nn.ReLU, nn.MaxPool3d] * 3
    assert [type(m) for m in layers] == expected_types
    convs = [m for m in layers if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 128), (128, 128)]
    for c in convs:
        assert c.kernel_size == (3, 7, 7) and c.stride == (1, 2, 2) and c.padding == (1, 3, 3)
    bns = [m for m in layers if isinstance(m, nn.BatchNorm3d)]
    assert [b.num_features for b in bns] == [64, 128, 128]
    pools = [m for m in layers if isinstance(m, nn.MaxPool3d)]
    assert [tuple(p.kernel_size) for p in pools] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert [tuple(p.stride) for p in pools] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (128, 10)
    assert model.dropout.p == 0.5


@pytest.mark.parametrize("channels", [(64, 128, 128), (8, 16, 24)])
def test_minic3d_conv_parameter_count(channels):
    model = MiniC3D(10, channels=channels)
    counted = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv3d) for p in m.parameters())
    # Each conv: c_out * c_in * (3 * 7 * 7) weights + c_out biases.
    widths = (3, *channels)
    expected = sum(widths[i + 1] * widths[i] * 3 * 7 * 7 + widths[i + 1] for i in range(3))
    assert counted == expected
    if channels == (64, 128, 128):
        # By hand: 64*3*147 + 64 = 28_288; 128*64*147 + 128 = 1_204_352; 128*128*147 + 128 = 2_408_576.
        assert expected == 28_288 + 1_204_352 + 2_408_576 == 3_641_216  # "about 3.6M" (method.md)


def test_normalisation_layers():
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    assert count(MiniC3D(5), nn.BatchNorm3d) == 3
    assert count(MiniC3D(5), nn.modules.batchnorm._BatchNorm) == 3
    assert count(MiniC3D(5, norm="none"), nn.modules.batchnorm._BatchNorm) == 0
    assert count(ConvNet3D(5), nn.modules.batchnorm._BatchNorm) == 0
    assert count(ConvNet3D(5), nn.modules.normalization.GroupNorm) == 0
    assert count(ConvNet3D(5), nn.modules.instancenorm._InstanceNorm) == 0
    rnn = CNNGRU(5)
    assert count(rnn, nn.modules.batchnorm._BatchNorm) == 0
    norms = [m for m in rnn.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 and all(m.affine for m in norms)


def test_minic3d_classifier_init():
    model = MiniC3D(400)  # 51_200 weights: the sample std of N(0, 0.01^2) is 0.01 +- 3e-5
    w = model.classifier.weight.detach()
    assert 0.009 < w.std().item() < 0.011  # PyTorch's default would give 1/sqrt(3*128) ~ 0.051
    assert abs(w.mean().item()) < 1e-3
    assert torch.count_nonzero(model.classifier.bias) == 0


# -------------------------------------------------------------- Minimum input sizes and clear errors


def test_minimum_sizes_are_the_real_ones():
    """43 and 4 are where torch's own layers start to fail, not just our check's thresholds."""
    model = MiniC3D(3, channels=(4, 4, 8)).eval()
    assert (model.min_frames, model.min_size) == (4, 43)
    with torch.no_grad():
        assert model.features_stack(_clip(1, 4, 43)).shape == (1, 8, 1, 1, 1)
        assert model.features_stack(_clip(1, 8, 48)).shape == (1, 8, 2, 1, 1)
        assert model.features_stack(_clip(1, 8, 64)).shape == (1, 8, 2, 1, 1)
        assert model.features_stack(_clip(1, 16, 112)).shape == (1, 8, 4, 2, 2)
        for bad in [(1, 4, 42), (1, 3, 64)]:
            with pytest.raises(RuntimeError):
                model.features_stack(_clip(*bad))
    conv = ConvNet3D(3)
    assert (conv.min_frames, conv.min_size) == (8, 43)
    assert ConvNet3D(3, temporal_pool=3).min_frames == 12
    assert CNNGRU(3).min_size == 8 and CNNGRU(3, depth=2).min_size == 4


@pytest.mark.parametrize(
    ("factory", "shape", "minimum"),
    [
        (lambda: MiniC3D(3), (1, 8, 42), "H, W >= 43"),
        (lambda: MiniC3D(3), (1, 8, 32), "H, W >= 43"),
        (lambda: MiniC3D(3), (1, 3, 64), "T=4"),
        (lambda: ConvNet3D(3), (1, 7, 64), "T=8"),
        (lambda: ConvNet3D(3), (1, 8, 40), "H, W >= 43"),
        (lambda: CNNLSTM(3), (1, 4, 7), "H, W >= 8"),
    ],
)
def test_too_small_clip_raises_clear_error(factory, shape, minimum):
    model = factory()
    with pytest.raises(ValueError, match="minimum size") as info:
        model(_clip(*shape))
    assert minimum in str(info.value)
    with pytest.raises(ValueError, match="minimum size"):
        model.features(_clip(*shape))


def test_clip_at_the_minimum_works():
    with torch.no_grad():
        assert MiniC3D(3, channels=(4, 4, 8)).eval()(_clip(1, 4, 43)).shape == (1, 3)
        assert ConvNet3D(3, channels=(4, 4, 8)).eval()(_clip(1, 8, 43)).shape == (1, 3)
        assert CNNGRU(3, width=8).eval()(_clip(1, 1, 8)).shape == (1, 3)


def test_bad_layout_raises():
    model = MiniC3D(3)
    with pytest.raises(ValueError, match="C=3"):
        model(torch.randn(1, 1, 8, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        model(torch.randn(3, 8, 64, 64))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(1, 3, 8, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("factory", "argument"),
    [
        (lambda: MiniC3D(0), "num_classes"),
        (lambda: MiniC3D(3, channels=(64, 128)), "channels"),
        (lambda: MiniC3D(3, dropout=1.0), "dropout"),
        (lambda: MiniC3D(3, norm="group"), "norm"),
        (lambda: ConvNet3D(3, temporal_pool=0), "temporal_pool"),
        (lambda: CNNRNN(3, cell="transformer"), "cell"),
        (lambda: CNNGRU(3, hidden_size=0), "hidden_size"),
    ],
)
def test_bad_arguments_are_named(factory, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        factory()


# --------------------------------------------------------------------- Heads: features -> classifier


@pytest.mark.parametrize("name", ["minic3d", "minic3d_nonorm", "convnet3d", "cnnlstm", "cnngru", "cnnrnn"])
def test_classifier_of_features_is_forward_in_eval(name):
    model = SMALL[name](5).eval()
    x = _clip(3, 8, 48, seed=1)  # 8 frames: ConvNet3D has a single time step left
    with torch.no_grad():
        feats = model.features(x)
        torch.testing.assert_close(model.classifier(feats), model(x))


def test_dropout_acts_in_train_mode_only():
    model = MiniC3D(5, channels=(4, 8, 8))
    x = _clip(2, 8, 48, seed=2)
    with torch.no_grad():
        model.eval()
        a, b = model(x), model(x)
        torch.testing.assert_close(a, b)
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_convnet3d_max_over_time_and_vdsd_pools():
    """16 frames leave T''=3: logits are the max over time of per-step logits."""
    model = ConvNet3D(6, channels=(8, 16, 16)).eval()
    x = _clip(2, 16, 112, seed=3)
    with torch.no_grad():
        fmap = model.features_stack(x)  # (2, 16, 4, 2, 2)
        assert fmap.shape == (2, 16, 4, 2, 2)
        # VDSD's pool above 64 pixels: AvgPool3d((2, 2, 2), stride 1) on the 2x2 spatial map.
        vdsd = F.avg_pool3d(fmap, kernel_size=(2, 2, 2), stride=1).flatten(2)  # (2, 16, 3)
        z = model.feature_map(x)
        torch.testing.assert_close(z, vdsd)
        per_step = torch.stack([model.classifier(z[:, :, t]) for t in range(z.shape[2])], dim=0)
        torch.testing.assert_close(model(x), per_step.max(dim=0).values)
        torch.testing.assert_close(model.features(x), z.mean(dim=2))
        # max_t of an affine map >= the affine map of the time mean, strictly somewhere.
        gap = model(x) - model.classifier(model.features(x))
        assert (gap >= -1e-6).all() and (gap > 1e-6).any()
    # 8x64x64: VDSD's pool at 64 pixels is AvgPool3d((2, 1, 1), stride 1).
    x = _clip(2, 8, 64, seed=4)
    with torch.no_grad():
        vdsd = F.avg_pool3d(model.features_stack(x), kernel_size=(2, 1, 1), stride=1).flatten(2)
        torch.testing.assert_close(model.feature_map(x), vdsd)


def test_cnnrnn_features_are_time_mean_of_recurrent_outputs():
    model = CNNGRU(4, width=16).eval()
    x = _clip(2, 5, 32, seed=5)
    with torch.no_grad():
        B, C, T, H, W = x.shape
        steps = []
        for t in range(T):  # frame by frame, no batching over time
            v = model.frame_pool(model.convnet(x[:, :, t])).flatten(1)
            steps.append(v)
        h = torch.zeros(B, model.feature_dim)
        outs = []
        cell = model.rnn
        for v in steps:  # one GRU step at a time from the zero state
            h = cell(v[:, None], h[None])[1][0]
            outs.append(h)
        torch.testing.assert_close(model.features(x), torch.stack(outs).mean(dim=0))


# ------------------------------------------------------------------------------ describe() / build()

SPEC_CASES = [
    (MiniC3D, {"num_classes": 4, "channels": (8, 16, 12), "dropout": 0.3}),
    (MiniC3D, {"num_classes": 4, "norm": "none"}),
    (ConvNet3D, {"num_classes": 4, "channels": (8, 8, 16), "temporal_pool": 1}),
    (CNNRNN, {"num_classes": 4, "cell": "rnn", "width": 16}),
    (CNNLSTM, {"num_classes": 4, "width": 16, "spatial_pool": 1}),
    (CNNGRU, {"num_classes": 4, "width": 16, "hidden_size": 10}),
]


@pytest.mark.parametrize(("cls", "kwargs"), SPEC_CASES)
def test_describe_round_trip(cls, kwargs):
    model = cls(**kwargs).eval()
    spec = describe(model)
    assert spec["class_path"] == f"tsgf_lightning.models.{cls.__name__}"
    assert spec["init_args"]["num_classes"] == 4
    spec = json.loads(json.dumps(spec))  # what a checkpoint stores
    module_name, _, class_name = spec["class_path"].rpartition(".")
    rebuilt = getattr(importlib.import_module(module_name), class_name)(**spec["init_args"]).eval()
    assert type(rebuilt) is cls
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert describe(rebuilt) == spec
    x = _clip(2, 8, 48, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert type(build(spec)) is cls


def test_describe_records_every_constructor_argument():
    import inspect

    for cls, kwargs in SPEC_CASES:
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(describe(cls(**kwargs))["init_args"]) == params, cls.__name__


def test_describe_rejects_modules_without_plain_init_args():
    with pytest.raises(ValueError, match="init_args"):
        describe(nn.Linear(2, 2))
    model = MiniC3D(3)
    model.init_args = {"num_classes": 3, "channels": (1, 2, 3)}  # a tuple does not survive JSON
    with pytest.raises(ValueError, match="plain JSON"):
        describe(model)


def test_yaml_class_path_instantiates():
    """A LightningCLI-style YAML block builds the networks by ``class_path``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(nn.Module, "model")
    head = "model:\n  class_path: tsgf_lightning.models.{}\n  init_args:\n    num_classes: 5\n"
    for text, cls in [
        (head.format("CNNGRU") + "    width: 16\n", CNNGRU),
        (head.format("MiniC3D") + "    channels: [8, 8, 16]\n", MiniC3D),
    ]:
        model = parser.instantiate(parser.parse_string(text)).model
        assert type(model) is cls and model.init_args["num_classes"] == 5
        json.dumps(describe(model))
