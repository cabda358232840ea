"""MTMed3D's task heads on the shared Swin encoder's outputs (``hidden[l]``, strides ``2 ** (l + 1)``).

* :class:`SwinUNETRDecoder` - segmentation: MONAI ``SwinUNETR``'s own decoder, fed with the encoder outputs;
* :class:`DetectionBranch` - detection: MONAI ``FeaturePyramidNetwork`` + :class:`PANetBottomUp`, then
  MONAI's RetinaNet classification / regression heads shared over the levels;
* :class:`PooledClassifier` - the ``pooled`` case classifier (the ``densenet`` one is MONAI's ``DenseNet``).
"""

from __future__ import annotations

import torch
from monai.apps.detection.networks.retinanet_network import (
    RetinaNetClassificationHead,
    RetinaNetRegressionHead,
)
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
from torch import Tensor, nn


class SwinUNETRDecoder(nn.Module):
    """The decoder of a MONAI ``SwinUNETR`` (its ``encoder1..4``, ``encoder10``, ``decoder1..5``, ``out``),
    fed with the encoder outputs instead of running the encoder itself.

    ``forward(images [B, C, I, J, K], hidden) -> (logits [B, out, I, J, K], features [B, F, I, J, K])``;
    with the same weights it equals ``SwinUNETR.forward`` (tests/test_mtmed3d.py checks).
    """

    def __init__(self, unetr: nn.Module):
        super().__init__()
        for name in ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10"):
            setattr(self, name, getattr(unetr, name))
        for name in ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1", "out"):
            setattr(self, name, getattr(unetr, name))

    def forward(self, images: Tensor, hidden: list[Tensor]) -> tuple[Tensor, Tensor]:
        enc0 = self.encoder1(images)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        dec3 = self.decoder5(dec4, hidden[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        features = self.decoder1(dec0, enc0)
        return self.out(features), features


class PANetBottomUp(nn.Module):
    """PANet's bottom-up path augmentation (Liu et al. 2018) after an FPN.

    ``forward([P_0 .. P_L-1]) -> [N_0 .. N_L-1]`` (finest first, each ``[B, channels, ...]``):
    ``N_0 = P_0``, ``N_l = conv3(P_l + down(N_{l-1}))`` with ``down`` a stride-2 3x3x3 conv. Levels must
    halve in size from one to the next.
    """

    def __init__(self, channels: int, levels: int, norm_groups: int = 8):
        super().__init__()

        def block(stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(channels, channels, 3, stride=stride, padding=1, bias=False),
                nn.GroupNorm(norm_groups, channels),
                nn.ReLU(inplace=True),
            )

        self.down = nn.ModuleList(block(2) for _ in range(levels - 1))
        self.fuse = nn.ModuleList(block(1) for _ in range(levels - 1))

    def forward(self, pyramid: list[Tensor]) -> list[Tensor]:
        out = [pyramid[0]]
        for level, (down, fuse) in enumerate(zip(self.down, self.fuse, strict=True), start=1):
            out.append(fuse(pyramid[level] + down(out[-1])))
        return out


class DetectionBranch(nn.Module):
    """FPN + PANet over the chosen encoder outputs, then MONAI's RetinaNet heads (shared over levels).

    ``forward(hidden) -> {"classification": [B, A * K, ...] per level, "box_regression": [B, A * 6, ...]}``.
    """

    def __init__(self, in_channels: list[int], channels: int, num_anchors: int, num_classes: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(3, in_channels, channels)
        self.pan = PANetBottomUp(channels, len(in_channels))
        self.cls_head = RetinaNetClassificationHead(channels, num_anchors, num_classes, spatial_dims=3)
        self.box_head = RetinaNetRegressionHead(channels, num_anchors, spatial_dims=3)

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        pyramid = list(self.fpn({str(i): f for i, f in enumerate(features)}).values())
        fused = self.pan(pyramid)
        return {"classification": self.cls_head(fused), "box_regression": self.box_head(fused)}


class PooledClassifier(nn.Module):
    """Global average pools of encoder outputs (``[B, c_l, ...]`` each), concatenated, an MLP -> logits."""

    def __init__(self, in_channels: list[int], hidden: int, num_classes: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(sum(in_channels)),
            nn.Linear(sum(in_channels), hidden),
            nn.GELU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.mlp(torch.cat([f.mean(dim=(2, 3, 4)) for f in features], dim=1))


__all__ = ["DetectionBranch", "PANetBottomUp", "PooledClassifier", "SwinUNETRDecoder"]
