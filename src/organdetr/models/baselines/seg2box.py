"""The ``seg2box`` baseline: MONAI's BasicUNet segments, boxes are read off its masks.

The strongest simple baseline a detector must beat (DEVELOPERS.md): a plain 3D U-Net (MONAI
``BasicUNet``, instance norm, LeakyReLU, transposed-conv upsampling) trained by the same engine on the same
cache with CE + Dice; detection = largest connected component per class, score = its mean probability
(:class:`~organdetr.models.segmentation_detector.SegmentationDetector`). Its config section
(``seg2box``) is :class:`Seg2BoxConfig`; :func:`build_seg2box_detector` is the registry's builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import BasicUNet
from torch import Tensor, nn

from organdetr.models.blocks.backbones import UNET_LEVELS, build_segmentation_unet
from organdetr.models.config import check_input_size
from organdetr.models.protocols import DetectorSpec
from organdetr.models.segmentation_detector import SegmentationDetector


@dataclass
class Seg2BoxConfig:
    """The ``seg2box`` baseline: a plain 3D U-Net (MONAI ``BasicUNet``) trained with CE + Dice; boxes are
    the largest connected component per class (``models.segmentation_detector``).

    ``features``: BasicUNet's six widths (encoder levels 0-4, then the last decoder level). The default is
    half of MONAI's (32, 32, 64, 128, 256, 32) per level, to train on a CPU at 64^3 (BENCHMARKS.md compares
    its cost with the detector's); use MONAI's widths on a GPU.

    ``input_stride``: 1 = the U-Net sees the input grid; s > 1 = it sees the input average-pooled by s per
    axis and its logits are upsampled (trilinear) back to the input grid, so the loss, the masks and the
    boxes stay on the input grid (:class:`CoarseGridSegmenter`). Coarse-grid segmentation is how
    TotalSegmentator's fast mode runs (3 mm); it trades boundary detail for an s^3 cheaper network.
    """

    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    dropout: float = 0.0
    weight: float = 1.0  # multiplier of CE + Dice
    dice: bool = True
    input_stride: int = 1

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if len(self.features) != 6 or min(self.features) < 1:
            raise ValueError(f"seg2box.features must be 6 positive widths, got {self.features}")
        self.input_stride = int(self.input_stride)
        if self.input_stride not in (1, 2, 4):
            raise ValueError(f"seg2box.input_stride must be 1, 2 or 4, got {self.input_stride}")
        if not 0.0 <= self.dropout < 1.0 or self.weight <= 0:
            raise ValueError("seg2box.dropout must be in [0, 1) and seg2box.weight > 0")


class CoarseGridSegmenter(nn.Module):
    """``network`` on the input average-pooled by ``stride``, its logits upsampled back (trilinear).

    ``images [B, C, I, J, K] -> logits [B, K+1, I, J, K]``: the U-Net runs on ``[B, C, I/s, J/s, K/s]``
    (``I, J, K`` divisible by ``s`` times the U-Net's own factor). Upsampling inside the network keeps the
    CE + Dice loss on the full-resolution labels, so the interpolated boundaries are trained, not only the
    coarse voxels' classes.
    """

    def __init__(self, network: nn.Module, stride: int):
        super().__init__()
        self.network = network
        self.stride = int(stride)

    def forward(self, images: Tensor) -> Tensor:
        logits = self.network(nn.functional.avg_pool3d(images, self.stride))
        return nn.functional.interpolate(logits, size=images.shape[2:], mode="trilinear", align_corners=False)


def build_seg2box_detector(spec: DetectorSpec) -> SegmentationDetector:
    """BasicUNet with ``num_classes + 1`` outputs (background first) behind the Detector protocol (the
    registry's :class:`~organdetr.models.protocols.DetectorBuilder` of ``"seg2box"``).

    ``spec.arch_cfg``: the ``seg2box`` section (defaults when ``None``); of ``spec.model`` ``in_channels``,
    ``backbone`` and ``backbone_size`` are read, and its coarsest stride must divide ``input_size``.
    ``model.backbone``: ``conv`` = BasicUNet with ``features``; ``mednext_v2`` / ``resenc`` / ``primus`` = the
    registry's U-Net of that size (:func:`~organdetr.models.blocks.backbones.build_segmentation_unet`;
    ``features`` and ``dropout`` are BasicUNet's and not read then). Matcher / loss sections and ``data``
    are not read. ``input_stride`` > 1 wraps the network in :class:`CoarseGridSegmenter`.
    """
    check_input_size(spec.model, spec.input_size)
    cfg = spec.arch_cfg or Seg2BoxConfig()
    if any(int(n) % cfg.input_stride for n in spec.input_size):
        size = tuple(spec.input_size)
        raise ValueError(f"input_size {size} must be divisible by seg2box.input_stride {cfg.input_stride}")
    network = _unet(spec, cfg, tuple(int(n) // cfg.input_stride for n in spec.input_size))
    if cfg.input_stride > 1:
        network = CoarseGridSegmenter(network, cfg.input_stride)
    return SegmentationDetector(network, spec.num_classes, weight=cfg.weight, dice=cfg.dice)


def _unet(spec: DetectorSpec, cfg: Seg2BoxConfig, grid: tuple[int, ...]) -> nn.Module:
    """The U-Net of ``model.backbone`` on the ``grid`` it will see (the input grid / ``input_stride``)."""
    model = spec.model
    if model.backbone != "conv":
        if any(int(n) % 2 ** (UNET_LEVELS - 1) for n in grid):
            raise ValueError(
                f"input_size {tuple(spec.input_size)} / input_stride {cfg.input_stride} must be divisible by "
                f"{2 ** (UNET_LEVELS - 1)} (the {model.backbone} U-Net's {UNET_LEVELS} stages)"
            )
        return build_segmentation_unet(model.backbone, model.backbone_size, model.in_channels,
                                       spec.num_classes + 1, grid)  # fmt: skip
    network = BasicUNet(
        spatial_dims=3,
        in_channels=spec.model.in_channels,
        out_channels=spec.num_classes + 1,
        features=cfg.features,
        dropout=cfg.dropout,
    )
    # Channels-last weights: oneDNN's 3D convolutions on the CPU train the demo's narrow U-Net (widths 8-64)
    # 1.36x faster in fp32 and 1.27x in bf16 per step (`benchmarks/bench_model.py --preset seg2box`, CPU-s,
    # BENCHMARKS.md issue 20) and MONAI's default widths no slower; every convolution follows its weight's
    # layout, so the input may stay contiguous. Checkpoints are unaffected (safetensors stores contiguous
    # copies; loading copies into these weights).
    return network.to(memory_format=torch.channels_last_3d)


__all__ = ["CoarseGridSegmenter", "Seg2BoxConfig", "build_seg2box_detector"]
