"""The ``seg2box`` baseline: MONAI's BasicUNet segments, boxes are read off its masks.

The strongest simple baseline a detector must beat (DEVELOPERS.md): a plain 3D U-Net (MONAI
``BasicUNet``, instance norm, LeakyReLU, transposed-conv upsampling) trained by the same engine on the same
cache with CE + Dice; detection = largest connected component per class, score = its mean probability
(:class:`~organdetr.models.segmentation_detector.SegmentationDetector`).
"""

from __future__ import annotations

from organdetr.models.config import ModelConfig, Seg2BoxConfig
from organdetr.models.segmentation_detector import SegmentationDetector


def build_seg2box(model_cfg: ModelConfig, cfg: Seg2BoxConfig, num_classes: int) -> SegmentationDetector:
    """BasicUNet with ``num_classes + 1`` outputs (background first) behind the Detector protocol."""
    from monai.networks.nets import BasicUNet

    network = BasicUNet(
        spatial_dims=3,
        in_channels=model_cfg.in_channels,
        out_channels=num_classes + 1,
        features=cfg.features,
        dropout=cfg.dropout,
    )
    return SegmentationDetector(network, num_classes, weight=cfg.weight, dice=cfg.dice)


__all__ = ["build_seg2box"]
