"""The Detector protocol around a DETR-style network: ``loss`` for training, ``detect`` for inference."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.organdetr.criterion import SetCriterion
from organdetr.models.organdetr.network import OrganDETR
from organdetr.models.organdetr.postprocess import postprocess


class DETRDetector(nn.Module):
    """Detector protocol around a DETR-style ``network`` (Organ-DETR and its ablations).

    * ``loss(images [B,1,I,J,K], targets) -> dict``: weighted named terms and ``"loss"`` (their sum); the
      network sees the targets too (denoising queries are built from them);
    * ``detect(images) -> list[dict(labels [D], scores [D], boxes [D, 6] voxel xyzxyz on the input grid)]``;
    * ``network``: images -> raw outputs (what ONNX export traces); its ``class_activation`` says how
      ``pred_logits`` become scores.
    """

    def __init__(self, network: nn.Module, criterion: SetCriterion):
        super().__init__()
        self.network = network
        self.criterion = criterion

    def forward(self, images: Tensor) -> dict:
        return self.network(images)

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        return self.criterion(self.network(images, targets), targets)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict]:
        outputs = self.network(images)
        return postprocess(outputs, tuple(images.shape[2:]), activation=self.network.class_activation)


__all__ = ["DETRDetector", "OrganDETR"]
