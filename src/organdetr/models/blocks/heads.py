"""Prediction heads: class, box (normalised cxcyczwhd) and multiscale segmentation."""

from __future__ import annotations

from torch import Tensor, nn


class BoxHead(nn.Module):
    """3-layer MLP ``[..., D] -> [..., 6]`` normalised ``cxcyczwhd`` in ``(0, 1)`` (sigmoid)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.ReLU(inplace=True),
            nn.Linear(d_model, d_model),
            nn.ReLU(inplace=True),
            nn.Linear(d_model, 6),
        )
        nn.init.constant_(self.mlp[-1].bias, 0.0)  # start near centred boxes of ~1/4 of the grid per axis
        self.mlp[-1].bias.data[3:] = -1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).sigmoid()


class SegmentationHead(nn.Module):
    """Per-level segmentation logits ``[B, D, i, j, k] -> [B, K+1, i, j, k]`` (training-only auxiliary)."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(d_model, d_model, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(d_model, num_classes + 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
