"""MiniC3D with BatchNorm: the proxy/teacher network of TSGF (Video-DC's ``MyConv3d``).

The paper (Appendix H.1) describes MiniC3D after VDSD: three ``Conv3d(3x7x7, stride 1x2x2, pad 1x3x3)``
blocks with max pools ``1x2x2, 2x2x2, 2x2x2``, an average pool and a ``1x1x1`` conv classifier. TSGF's
synthesis loss matches batch statistics, so it needs the BatchNorm variant: BN after every conv.
A global average pool followed by a Linear layer is the paper's "average pool + 1x1x1 conv" head
(a ``1x1x1`` conv on a ``1x1x1`` map is a Linear layer); Dropout sits between them.

Sizes (see :mod:`~tsgf_lightning.models.c3d_stack`): the smallest clip is ``T >= 4, H, W >= 43``;
8x64x64 ends as a ``(c3, 2, 1, 1)`` map and 16x112x112 as ``(c3, 4, 2, 2)``, both averaged to ``(c3,)``.
At the default width the three convs hold ``3,641,216`` parameters
(``sum(c_out * c_in * 3 * 7 * 7 + c_out)`` over ``3->64, 64->128, 128->128``).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from tsgf_lightning.models.c3d_stack import check_channels, conv_pool_stack, minimum_length
from tsgf_lightning.models.input_check import check_video_batch


class MiniC3D(nn.Module):
    """MiniC3D: ``(B, C, T, H, W)`` float clips to ``(B, num_classes)`` logits.

    Args:
        num_classes: number of output classes.
        channels: widths ``(c1, c2, c3)`` of the three conv blocks.
        in_channels: input channels C (3 for RGB).
        dropout: drop probability before the classifier (0.5 in the reference code).
        norm: ``"batch"`` (BatchNorm3d after each conv, needed by TSGF's BN-matching loss) or
            ``"none"``.

    Attributes:
        features_stack: the three conv blocks.
        classifier: ``Linear(c3, num_classes)``, weights ``N(0, 0.01^2)``, bias 0.
        feature_dim: ``c3``, the length of :meth:`features`.
        min_frames, min_size: the smallest T and H/W the stack accepts (4 and 43 by default).
        init_args: the constructor arguments as JSON types (see :func:`~tsgf_lightning.models.describe`).
    """

    def __init__(
        self,
        num_classes: int,
        channels: tuple[int, int, int] = (64, 128, 128),
        in_channels: int = 3,
        dropout: float = 0.5,
        norm: Literal["batch", "none"] = "batch",
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive int but got {num_classes}")
        channels = check_channels(channels, in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Expected argument `dropout` to be in [0, 1) but got {dropout}")
        self.init_args = {
            "num_classes": num_classes,
            "channels": list(channels),
            "in_channels": in_channels,
            "dropout": float(dropout),
            "norm": norm,
        }
        self.in_channels = in_channels
        self.features_stack = conv_pool_stack(channels, in_channels, norm)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.feature_dim = channels[-1]
        self.min_frames = minimum_length(self.features_stack, axis=0)
        self.min_size = max(minimum_length(self.features_stack, axis) for axis in (1, 2))
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding: the globally averaged last feature map, ``(B, C, T, H, W) -> (B, c3)``."""
        check_video_batch(x, self.in_channels, self.min_frames, self.min_size, type(self).__name__)
        fmap = self.features_stack(x)  # (B, c3, T', H', W')
        return fmap.mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``; in eval mode equal to ``classifier(features(x))``."""
        return self.classifier(self.dropout(self.features(x)))

