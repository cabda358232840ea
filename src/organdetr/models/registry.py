"""The architecture registry: ``arch`` name -> :class:`~organdetr.models.protocols.DetectorBuilder`.

:data:`ARCHITECTURES` maps every name a training config's ``arch`` may hold to its architecture package's
builder; :func:`build_detector` validates what all architectures share (class count, the data's channel
count) and calls it; :func:`detector_from_config` does the same from a whole ``TrainConfig``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from organdetr.models.baselines.retinanet import build_retinanet_detector
from organdetr.models.baselines.seg2box import build_seg2box_detector
from organdetr.models.blocks.small_volume_conv import guard_small_volume_convs
from organdetr.models.config import ModelConfig
from organdetr.models.maskmed.network import build_maskmed_detector
from organdetr.models.mtmed3d.network import build_mtmed3d_detector
from organdetr.models.organdetr.builder import build_organdetr_detector
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.matcher import MatcherConfig
from organdetr.models.protocols import DetectorBuilder, DetectorSpec
from organdetr.runtime.text import brief

ARCHITECTURES: dict[str, DetectorBuilder] = {
    "organdetr": build_organdetr_detector,  # encoder / decoder / matcher set by the model / matcher sections
    "retinanet": build_retinanet_detector,  # MONAI RetinaNet on the same backbone (models/baselines)
    "seg2box": build_seg2box_detector,  # MONAI BasicUNet, boxes = largest component per class
    "maskmed": build_maskmed_detector,  # its own U-Net: only model.in_channels of the model section is read
    "mtmed3d": build_mtmed3d_detector,  # its own encoder and strides
}


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
    builder = ARCHITECTURES.get(arch)
    if builder is None:
        raise ValueError(f"unknown architecture {brief(arch)}; choose one of {tuple(ARCHITECTURES)}")
    if data is not None and data.in_channels != model_cfg.in_channels:
        model_cfg = replace(model_cfg, in_channels=data.in_channels)
    spec = DetectorSpec(model_cfg, num_classes, input_size, arch_cfg, matcher_cfg, loss_cfg, data)
    return guard_small_volume_convs(builder(spec))  # bf16 on the CPU: the smallest convs stay fp32


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


__all__ = ["ARCHITECTURES", "build_detector", "detector_from_config"]
