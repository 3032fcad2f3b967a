"""Video classifiers as plain ``nn.Module``s (nothing from Lightning).

Every network takes ``num_classes`` first, maps ``(B, C, T, H, W)`` float clips to
``(B, num_classes)`` logits, exposes ``features(x) -> (B, feature_dim)`` (the vector its
``classifier`` reads, used for herding/k-center selection) and records its constructor arguments
in ``init_args`` so :func:`describe` can store the architecture next to the weights.

- :class:`MiniC3D`: C3D-like, BatchNorm after each conv; the teacher of TSGF's BN-matching loss.
- :class:`ConvNet3D`: the same stack without normalisation, max over time (VDSD).
- :class:`CNNRNN`, :class:`CNNLSTM`, :class:`CNNGRU`: a 2D ConvNet per frame + a recurrent layer.
"""

from tsgf_lightning.models.architecture import build, describe
from tsgf_lightning.models.cnn_rnn import CNNGRU, CNNLSTM, CNNRNN
from tsgf_lightning.models.convnet3d import ConvNet3D
from tsgf_lightning.models.minic3d import MiniC3D

__all__ = ["CNNGRU", "CNNLSTM", "CNNRNN", "ConvNet3D", "MiniC3D", "build", "describe"]
