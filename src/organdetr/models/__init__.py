"""Organ-DETR models and the Detector protocol shared by every architecture.

``build_detector(arch, model_cfg, matcher_cfg, loss_cfg, num_classes, input_size)`` returns an
``nn.Module`` with ``loss(images, targets) -> dict``, ``detect(images) -> list[dict]`` and ``.network``.
Architectures: ``"organdetr"`` (encoder/matcher set by the configs: MSA + DQM by default; FPN / single-scale
encoder and one-to-one matching are the ablations); ``"retinanet"`` (MONAI's dense anchor detector with
NMS on the same backbone, the baseline).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..criterion import LossConfig, build_criterion
from ..matcher import MatcherConfig, build_matcher
from .config import ENCODER_KINDS, PRESET_NAMES, ModelConfig, model_preset
from .detector import DETRDetector, OrganDETR

ARCHITECTURES: tuple[str, ...] = ("organdetr", "retinanet")


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
) -> nn.Module:
    """Detector for ``arch`` with ``num_classes`` organ classes on an ``input_size`` (I, J, K) voxel grid."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    coarsest = model_cfg.strides[-1]
    if any(int(s) % coarsest for s in input_size):
        raise ValueError(
            f"input_size {tuple(input_size)} must be divisible by the coarsest stride {coarsest}"
        )
    if arch == "organdetr" and model_cfg.num_queries < num_classes:
        raise ValueError(
            f"num_queries={model_cfg.num_queries} < num_classes={num_classes}: every organ needs its own "
            f"query (DQM wants 1 + ceil(lambda * N / M) each); set model.num_queries >= {2 * num_classes}"
        )
    if arch == "organdetr":
        network = build_model(replace(model_cfg, num_classes=num_classes))
        criterion = build_criterion(num_classes, build_matcher(matcher_cfg), loss_cfg)
        return DETRDetector(network, criterion)
    if arch == "retinanet":  # MONAI RetinaNet on the same backbone (models/retinanet.py)
        from .retinanet import build_retinanet

        return build_retinanet(model_cfg, num_classes, input_size)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


__all__ = [
    "ARCHITECTURES",
    "ENCODER_KINDS",
    "PRESET_NAMES",
    "DETRDetector",
    "LossConfig",
    "MatcherConfig",
    "ModelConfig",
    "OrganDETR",
    "build_detector",
    "build_model",
    "model_preset",
]
