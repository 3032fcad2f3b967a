"""Dataset layout readers: which videos, which labels, which split (no decoding here).

Every reader is a :class:`VideoSource` that LightningCLI can build from YAML
(``class_path: tsgf_lightning.data.sources.UCF101``, ``init_args: {root: ..., classes: miniucf}``).
"""

from .base import VIDEO_EXTENSIONS, Split, VideoItem, VideoSource
from .classes import NAMED_CLASS_LISTS, read_class_file, select_classes
from .embedded import Embedded
from .folder import VideoFolder
from .hmdb51 import HMDB51
from .kinetics import Kinetics
from .ssv2 import SomethingSomethingV2
from .ucf101 import UCF101
from .validation import validation_split

__all__ = [
    "Embedded",
    "HMDB51",
    "NAMED_CLASS_LISTS",
    "UCF101",
    "VIDEO_EXTENSIONS",
    "Kinetics",
    "SomethingSomethingV2",
    "Split",
    "VideoFolder",
    "VideoItem",
    "VideoSource",
    "read_class_file",
    "select_classes",
    "validation_split",
]
