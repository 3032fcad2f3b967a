"""CNN+RNN video classifiers (VDSD's CNN+LSTM / CNN+GRU): a 2D ConvNet per frame, a recurrent layer.

Per frame: ``depth`` times ``Conv2d(3x3, pad 1) -> InstanceNorm2d(affine) -> ReLU -> AvgPool2d(2)``
(width 128, depth 3: the dataset-distillation "ConvNet"), then ``AdaptiveAvgPool2d(spatial_pool)``
and a flatten, giving ``D = width * spatial_pool**2`` features per frame. The recurrent layer runs
over the T frame vectors; its outputs are averaged over time and a Linear layer gives the logits.

Why pool to a fixed spatial size before flattening. A plain flatten gives ``D = 128 * 8 * 8 = 8192``
at 64x64 and ``128 * 14 * 14 = 25088`` at 112x112; with VDSD's rule "LSTM hidden = D" that is an
LSTM of ``8 D^2 ~ 0.5e9`` (64x64) or ``5e9`` (112x112) weights. VDSD's optional final pool
(``AvgPool2d(4)``, 8x8 -> 2x2 at 64x64) gives ``D = 512``; the default ``spatial_pool=2`` reproduces it
exactly at 64x64 and keeps ``D = 512`` at every resolution (an LSTM of 2.1M weights). ``spatial_pool=1``
is a per-frame global average pool (``D = 128``), which leaves a GRU only 16 hidden units.

Hidden sizes (VDSD): LSTM ``hidden = D``; GRU and vanilla RNN ``hidden = D // 8``. The embedding
returned by :meth:`CNNRNN.features` is the time-averaged recurrent output, ``(B, hidden)``.
Instance norm keeps no running statistics, so these networks have no BatchNorm layers.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from tsgf_lightning.models.input_check import check_video_batch

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def frame_convnet(in_channels: int, width: int, depth: int) -> nn.Sequential:
    """The per-frame 2D ConvNet: ``(N, in_channels, H, W) -> (N, width, H / 2^depth, W / 2^depth)``."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for _ in range(depth):
        layers += [
            nn.Conv2d(c_in, width, kernel_size=3, padding=1),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(),
            nn.AvgPool2d(kernel_size=2),
        ]
        c_in = width
    return nn.Sequential(*layers)


class CNNRNN(nn.Module):
    """Per-frame ConvNet + recurrent layer: ``(B, C, T, H, W)`` float clips to ``(B, num_classes)``.

    Args:
        num_classes: number of output classes.
        cell: recurrent cell, ``"lstm"``, ``"gru"`` or ``"rnn"`` (tanh).
        width: channels of every 2D conv.
        depth: number of conv blocks; H and W must be at least ``2**depth``.
        in_channels: input channels C (3 for RGB).
        spatial_pool: side of the adaptive average pool applied to each frame's last feature map
            before flattening (see the module docstring).
        hidden_size: recurrent hidden size; ``None`` applies VDSD's rule (``D`` for LSTM, ``D // 8``
            for GRU/RNN, with ``D = width * spatial_pool**2``).

    Attributes:
        classifier: ``Linear(hidden, num_classes)`` (PyTorch's default init).
        feature_dim: ``hidden``, the length of :meth:`features`.
        frame_dim: ``D``, the per-frame feature size fed to the recurrent layer.
        min_frames, min_size: the smallest T (1) and H/W (``2**depth``, 8 by default) accepted.
        init_args: the constructor arguments as JSON types.
    """

    def __init__(
        self,
        num_classes: int,
        cell: Literal["lstm", "gru", "rnn"] = "lstm",
        width: int = 128,
        depth: int = 3,
        in_channels: int = 3,
        spatial_pool: int = 2,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive int but got {num_classes}")
        if cell not in _CELLS:
            raise ValueError(f"Expected argument `cell` to be one of {sorted(_CELLS)} but got {cell!r}")
        sizes = {"width": width, "depth": depth, "in_channels": in_channels, "spatial_pool": spatial_pool}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be a positive int but got {value}")
        if hidden_size is not None and (not isinstance(hidden_size, int) or hidden_size < 1):
            raise ValueError(
                f"Expected argument `hidden_size` to be a positive int or None but got {hidden_size}"
            )
        self.init_args: dict = {
            "num_classes": num_classes,
            "cell": cell,
            "width": width,
            "depth": depth,
            "in_channels": in_channels,
            "spatial_pool": spatial_pool,
            "hidden_size": hidden_size,
        }
        frame_dim = width * spatial_pool**2
        if hidden_size is None:
            hidden_size = max(frame_dim if cell == "lstm" else frame_dim // 8, 1)
        self.in_channels = in_channels
        self.min_frames = 1
        self.min_size = 2**depth  # each AvgPool2d(2) halves H and W (floor)
        self.frame_dim = frame_dim
        self.feature_dim = hidden_size
        self.convnet = frame_convnet(in_channels, width, depth)
        self.frame_pool = nn.AdaptiveAvgPool2d(spatial_pool)
        self.rnn = _CELLS[cell](input_size=frame_dim, hidden_size=hidden_size, batch_first=True)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding: recurrent outputs averaged over time, ``(B, C, T, H, W) -> (B, hidden)``."""
        check_video_batch(x, self.in_channels, self.min_frames, self.min_size, type(self).__name__)
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # every frame through the same 2D ConvNet
        per_frame = self.frame_pool(self.convnet(frames)).flatten(1)  # (B*T, D)
        out, _ = self.rnn(per_frame.view(B, T, self.frame_dim))  # (B, T, hidden); zero initial state
        return out.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` = ``classifier(features(x))``."""
        return self.classifier(self.features(x))


class CNNLSTM(CNNRNN):
    """:class:`CNNRNN` with an LSTM (hidden = per-frame feature size), for ``class_path`` configs."""

    def __init__(
        self,
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        in_channels: int = 3,
        spatial_pool: int = 2,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__(num_classes, "lstm", width, depth, in_channels, spatial_pool, hidden_size)
        del self.init_args["cell"]  # fixed by the class: not an argument of this constructor


class CNNGRU(CNNRNN):
    """:class:`CNNRNN` with a GRU (hidden = per-frame feature size // 8), for ``class_path`` configs."""

    def __init__(
        self,
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        in_channels: int = 3,
        spatial_pool: int = 2,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__(num_classes, "gru", width, depth, in_channels, spatial_pool, hidden_size)
        del self.init_args["cell"]
