"""ConvNet3D: VDSD's normalisation-free 3D ConvNet, used for cross-architecture evaluation.

The same conv/pool stack as :class:`~tsgf_lightning.models.MiniC3D` without BatchNorm, then
``AvgPool3d -> Dropout -> 1x1x1 conv -> max over time``.

Choice of the average pool. VDSD picks the pool from the resolution: ``AvgPool3d((2,2,2), stride 1)``
above 64 pixels, ``AvgPool3d((2,1,1), stride 1)`` otherwise; then it squeezes the spatial axes, which
only works when they are 1. After the stack, 8x64x64 is a ``(c3, 2, 1, 1)`` map and 16x112x112 a
``(c3, 4, 2, 2)`` map, so both of VDSD's pools amount to "window of ``temporal_pool`` frames, stride 1,
over time; mean over all remaining space". That is what this module does, at every resolution:
``AvgPool3d((temporal_pool, 1, 1), stride 1)`` followed by a spatial mean. Time is kept (it is
max-pooled after the classifier); space is averaged before the classifier, as in VDSD.

The ``1x1x1`` conv on the ``(B, c3, T'', 1, 1)`` map is written as ``Linear(c3, num_classes)`` over
the channel axis: the same function (weights ``(K, c3)`` instead of ``(K, c3, 1, 1, 1)``), and it lets
``classifier`` act on :meth:`ConvNet3D.features` like the other networks' classifiers.

Sizes: ``H, W >= 43`` (the stack) and ``T >= 4 * temporal_pool`` (8 by default: the stack leaves
``floor(T/4)`` frames and the average pool needs ``temporal_pool`` of them). 8 frames leave one
time step (``T'' = 1``), 16 frames leave three.
"""

from __future__ import annotations

from torch import Tensor, nn

from tsgf_lightning.models.c3d_stack import check_channels, conv_pool_stack, minimum_length
from tsgf_lightning.models.input_check import check_video_batch


class ConvNet3D(nn.Module):
    """ConvNet3D: ``(B, C, T, H, W)`` float clips to ``(B, num_classes)`` logits.

    ``logits[b, k] = max_t (W z[b, :, t] + bias)[k]`` where ``z`` (``(B, c3, T'')``) is the
    time-windowed, spatially averaged last feature map; :meth:`feature_map` returns ``z``.

    Args:
        num_classes: number of output classes.
        channels: widths ``(c1, c2, c3)`` of the three conv blocks.
        in_channels: input channels C (3 for RGB).
        dropout: drop probability before the classifier (0.5 in VDSD).
        temporal_pool: temporal window of the average pool (stride 1); 2 as in VDSD.

    Attributes:
        classifier: ``Linear(c3, num_classes)``, applied at every remaining time step (PyTorch's
            default init, as in VDSD).
        feature_dim: ``c3``.
        min_frames, min_size: the smallest T and H/W accepted (8 and 43 by default).
        init_args: the constructor arguments as JSON types.
    """

    def __init__(
        self,
        num_classes: int,
        channels: tuple[int, int, int] = (64, 128, 128),
        in_channels: int = 3,
        dropout: float = 0.5,
        temporal_pool: int = 2,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive int but got {num_classes}")
        channels = check_channels(channels, in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Expected argument `dropout` to be in [0, 1) but got {dropout}")
        if not isinstance(temporal_pool, int) or temporal_pool < 1:
            raise ValueError(
                f"Expected argument `temporal_pool` to be a positive int but got {temporal_pool}"
            )
        self.init_args = {
            "num_classes": num_classes,
            "channels": list(channels),
            "in_channels": in_channels,
            "dropout": float(dropout),
            "temporal_pool": temporal_pool,
        }
        self.in_channels = in_channels
        self.features_stack = conv_pool_stack(channels, in_channels, norm="none")
        self.avg_pool = nn.AvgPool3d(kernel_size=(temporal_pool, 1, 1), stride=1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.feature_dim = channels[-1]
        layers = [*self.features_stack, self.avg_pool]
        self.min_frames = minimum_length(layers, axis=0)
        self.min_size = max(minimum_length(layers, axis) for axis in (1, 2))

    def feature_map(self, x: Tensor) -> Tensor:
        """Per-time-step embedding ``z``: ``(B, C, T, H, W) -> (B, c3, T'')``."""
        check_video_batch(x, self.in_channels, self.min_frames, self.min_size, type(self).__name__)
        fmap = self.avg_pool(self.features_stack(x))  # (B, c3, T'', H', W')
        return fmap.mean(dim=(3, 4))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding ``(B, c3)``: ``z`` averaged over its ``T''`` time steps.

        With one remaining time step (8-frame clips) ``classifier(features(x))`` is the forward in
        eval mode; with more, the forward takes the max over time *after* the classifier, so the two
        differ and ``features`` is the natural time-pooled summary for coreset selection.
        """
        return self.feature_map(x).mean(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``: the classifier at every time step, then max over time."""
        z = self.feature_map(x).transpose(1, 2)  # (B, T'', c3)
        return self.classifier(self.dropout(z)).amax(dim=1)
