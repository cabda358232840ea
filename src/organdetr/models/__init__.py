"""Organ-DETR models and the Detector protocol shared by every architecture.

``build_detector(arch, model_cfg, matcher_cfg, loss_cfg, num_classes, input_size)`` returns an
``nn.Module`` with ``loss(images, targets) -> dict``, ``detect(images) -> list[dict]`` and ``.network``
(the protocol classes: :mod:`.protocols`). Architectures (:data:`ARCHITECTURES`, name -> builder):
``"organdetr"`` (encoder / decoder / matcher set by the configs: MSA encoder, deformable two-stage decoder
with denoising and DQM by default; the ``detr`` preset, deformable / FPN / single-scale encoders and
one-to-one matching are the ablations); ``"retinanet"`` (MONAI's dense anchor detector with NMS on the
same backbone); ``"seg2box"`` (MONAI BasicUNet segmentation, boxes = largest component per class: the
baseline a detector must beat); ``"maskmed"`` (MaskMed: U-Net + FSAD-Transformer + decoupled mask / class
head, or its point-wise-head U-Net baseline; segments, and gives boxes from its masks); ``"mtmed3d"``
(MTMed3D: one Swin encoder, detection / segmentation / case classification heads, any subset of the
three; it is its own network, without ``.network``).

Package layout, bottom to top (a module imports only its own level or lower ones):

* ``blocks/`` - shared building blocks: ``backbone``, ``attention``, ``deformable_attention``,
  ``position``, ``tokens``, ``heads``, ``mask_head``, ``unet``, ``retina`` (MONAI's anchor machinery);
* shared model modules: ``config`` (``ModelConfig``, its presets, ``build_backbone``), ``losses``
  (segmentation, matched-mask and count-normalising terms), ``segmentation_detector`` (the Detector
  protocol for segmenting networks), ``protocols``;
* one package per architecture, none importing another: ``organdetr/`` (network, encoders, decoders,
  proposals, denoising, matcher, criterion, postprocess, detector, mask_detr, builder), ``maskmed/``,
  ``mtmed3d/``, ``baselines/`` (``retinanet``, ``seg2box``, and ``prior``, the image-blind box prior);
* ``registry`` - :data:`ARCHITECTURES`, :func:`build_detector`, :func:`detector_from_config`.
"""

from __future__ import annotations

from organdetr.models.baselines.seg2box import Seg2BoxConfig
from organdetr.models.config import DECODER_KINDS, ENCODER_KINDS, PRESET_NAMES, ModelConfig, model_preset
from organdetr.models.maskmed.config import MaskMedConfig
from organdetr.models.mtmed3d.config import MTMed3DConfig
from organdetr.models.organdetr.builder import build_model
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.detector import DETRDetector
from organdetr.models.organdetr.matcher import MatcherConfig
from organdetr.models.organdetr.network import OrganDETR
from organdetr.models.registry import ARCHITECTURES, build_detector, detector_from_config

__all__ = [
    "ARCHITECTURES",
    "DECODER_KINDS",
    "ENCODER_KINDS",
    "PRESET_NAMES",
    "DETRDetector",
    "LossConfig",
    "MaskMedConfig",
    "MatcherConfig",
    "MTMed3DConfig",
    "ModelConfig",
    "OrganDETR",
    "Seg2BoxConfig",
    "build_detector",
    "detector_from_config",
    "build_model",
    "model_preset",
]
