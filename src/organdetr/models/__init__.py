"""Organ-DETR models and the Detector protocol shared by every architecture.

``build_detector(arch, model_cfg, matcher_cfg, loss_cfg, num_classes, input_size)`` returns an
``nn.Module`` with ``loss(images, targets) -> dict``, ``detect(images) -> list[dict]`` and ``.network``.
Architectures: ``"organdetr"`` (encoder / decoder / matcher set by the configs: MSA encoder, deformable
two-stage decoder with denoising and DQM by default; the ``detr`` preset, deformable / FPN / single-scale
encoders and one-to-one matching are the ablations); ``"retinanet"`` (MONAI's dense anchor detector with
NMS on the same backbone); ``"seg2box"`` (MONAI BasicUNet segmentation, boxes = largest component per
class: the baseline a detector must beat); ``"maskmed"`` (MaskMed: U-Net + FSAD-Transformer + decoupled
mask / class head, or its point-wise-head U-Net baseline; segments, and gives boxes from its masks);
``"mtmed3d"`` (MTMed3D: one Swin encoder, detection /
segmentation / case classification heads, any subset of the three).

Module layout: one module per architecture (``organdetr.py``, ``retinanet.py``) over shared blocks
(``backbone``, ``attention``, ``deformable_attention``, ``position``, ``heads``, ``encoder``, ``decoder``,
``deformable_decoder``, ``proposals``, ``denoising``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from organdetr.models.config import (
    DECODER_KINDS,
    ENCODER_KINDS,
    PRESET_NAMES,
    MaskMedConfig,
    ModelConfig,
    MTMed3DConfig,
    Seg2BoxConfig,
    model_preset,
)
from organdetr.models.organdetr.criterion import LossConfig, build_criterion
from organdetr.models.organdetr.detector import DETRDetector
from organdetr.models.organdetr.matcher import MatcherConfig, build_matcher
from organdetr.models.organdetr.network import OrganDETR

ARCHITECTURES: tuple[str, ...] = ("organdetr", "retinanet", "seg2box", "maskmed", "mtmed3d")


def build_model(cfg: ModelConfig) -> OrganDETR:
    """The Organ-DETR network for ``cfg`` (``cfg.num_classes`` must be set)."""
    return OrganDETR(cfg)


def build_detector(
    arch: str,
    model_cfg: ModelConfig,
    matcher_cfg: MatcherConfig,
    loss_cfg: LossConfig,
    num_classes: int,
    input_size: tuple[int, int, int],
    *,
    arch_cfg: Any = None,
    data: Any = None,
) -> nn.Module:
    """Detector for ``arch`` with ``num_classes`` organ classes on an ``input_size`` (I, J, K) voxel grid.

    ``arch_cfg``: the architecture's own config section where it has one (``Seg2BoxConfig`` for
    ``seg2box``, ``MaskMedConfig`` for ``maskmed``, ``MTMed3DConfig`` for ``mtmed3d``; defaults when
    ``None``). ``data``: the :class:`~organdetr.data.properties.DataProperties` of the cache (its channel
    count overrides ``model.in_channels``; regions and case classes feed ``mtmed3d``); ``None`` = one
    channel, no regions, no case labels.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if data is not None and data.in_channels != model_cfg.in_channels:
        model_cfg = replace(model_cfg, in_channels=data.in_channels)
    if arch == "maskmed":  # its own U-Net: only model.in_channels of the model section is read
        from organdetr.models.maskmed.network import build_maskmed

        maskmed_cfg = arch_cfg or MaskMedConfig()
        if any(int(s) % maskmed_cfg.divisor for s in input_size):
            raise ValueError(
                f"input_size {tuple(input_size)} must be divisible by {maskmed_cfg.divisor} "
                f"(the bottleneck stride of {len(maskmed_cfg.features)} U-Net stages)"
            )
        return build_maskmed(maskmed_cfg, num_classes, model_cfg.in_channels)
    if arch == "mtmed3d":  # its own encoder and strides (models/mtmed3d.py)
        from organdetr.models.mtmed3d.network import build_mtmed3d

        return build_mtmed3d(model_cfg, arch_cfg or MTMed3DConfig(), num_classes, input_size, data)
    coarsest = model_cfg.strides[-1]
    if any(int(s) % coarsest for s in input_size):
        raise ValueError(
            f"input_size {tuple(input_size)} must be divisible by the coarsest stride {coarsest}"
        )
    if arch == "organdetr" and model_cfg.queries_for(num_classes) < num_classes:
        raise ValueError(
            f"num_queries={model_cfg.num_queries} < num_classes={num_classes}: every organ needs its own "
            f"query (DQM wants 1 + ceil(lambda * N / M) each); set model.num_queries >= {2 * num_classes}"
        )
    if arch == "organdetr":
        network = build_model(replace(model_cfg, num_classes=num_classes))
        sigmoid = model_cfg.class_head == "sigmoid"
        criterion = build_criterion(num_classes, build_matcher(matcher_cfg, sigmoid), loss_cfg, sigmoid)
        if model_cfg.mask_head:  # class, box and mask per query; segments too
            from organdetr.models.organdetr.mask_detr import MaskDETRDetector

            return MaskDETRDetector(network, criterion)
        return DETRDetector(network, criterion)
    if arch == "retinanet":  # MONAI RetinaNet on the same backbone (models/retinanet.py)
        from organdetr.models.baselines.retinanet import build_retinanet

        return build_retinanet(model_cfg, num_classes, input_size)
    if arch == "seg2box":
        from organdetr.models.baselines.seg2box import build_seg2box

        return build_seg2box(model_cfg, arch_cfg or Seg2BoxConfig(), num_classes)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


def detector_from_config(
    cfg: Any, num_classes: int, input_size: tuple[int, int, int], data: Any = None
) -> nn.Module:
    """:func:`build_detector` from a whole ``TrainConfig`` (its ``arch`` and that architecture's section);
    ``data``: the cache's ``DataProperties`` (channels, regions, case classes)."""
    return build_detector(
        cfg.arch,
        cfg.model,
        cfg.matcher,
        cfg.loss,
        num_classes,
        input_size,
        arch_cfg=getattr(cfg, cfg.arch, None),
        data=data,
    )


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
