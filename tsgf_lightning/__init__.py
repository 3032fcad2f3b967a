"""tsgf_lightning: video dataset distillation with Temporal Saliency-Guided Filtering (TSGF).

Three LightningModules share one LightningDataModule:

- :class:`~tsgf_lightning.modules.teacher.TeacherModule` trains a video classifier on real data;
- :class:`~tsgf_lightning.modules.synthesis.SynthesisModule` optimises a few synthetic videos per
  class against the frozen teacher, with the TSGF mask on each frame's update;
- :class:`~tsgf_lightning.modules.student.StudentModule` trains a fresh network on the distilled set
  with saliency-gated VideoMix and teacher soft labels, and reports accuracy on the real test set.

Video convention, used everywhere in the package (stated once, here):
    a clip is ``(C, T, H, W)``, a batch ``(B, C, T, H, W)``; stored clips are ``uint8`` in
    ``[0, 255]``, network inputs ``float32`` normalised per channel (see :mod:`tsgf_lightning.video`).
    ``torchvision.transforms.v2`` wants ``(..., T, C, H, W)``; only ``data/transforms.py`` permutes.
"""

__version__ = "0.1.0"
