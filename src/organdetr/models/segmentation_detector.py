"""The Detector protocol for semantic-segmentation networks: train on masks, read boxes off them.

A segmenting model (the ``seg2box`` U-Net baseline, MaskMed, a multi-task model's segmentation head) gives
per-voxel class logits; :class:`SegmentationDetector` makes it a detector like every other architecture:

* ``loss(images, targets)``: cross-entropy + soft Dice against ``targets[b]["seg"]`` (dense class + 1,
  0 = background), averaged over the network's outputs when it returns several (deep supervision);
* ``detect(images)``: per image and organ class, the largest connected component of the voxels whose
  arg-max is that class gives the box (half-open voxel ``xyzxyz`` on the input grid); its score is the mean
  probability of the class inside the component. A class without voxels yields no detection. This is
  what users of TotalSegmentator do today (segment, then take the mask's extent): the bar a detector has
  to clear;
* ``segment(images) -> [B, I, J, K]`` int64 (dense class + 1), what ``organdetr predict`` writes as the
  label map.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.core.boxes.labels import largest_component_boxes
from organdetr.models.losses import segmentation_loss


class SegmentationDetector(nn.Module):
    """Detector protocol around ``network(images) -> logits [B, K+1, I, J, K]`` (or a list of such, finest
    first, for deep supervision; the first is the prediction)."""

    def __init__(self, network: nn.Module, num_classes: int, *, weight: float = 1.0, dice: bool = True):
        super().__init__()
        self.network = network
        self.num_classes = num_classes
        self.weight = weight
        self.dice = dice

    def forward(self, images: Tensor) -> Tensor:
        out = self.network(images)
        return out[0] if isinstance(out, list | tuple) else out

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        out = self.network(images)
        logits = list(out) if isinstance(out, list | tuple) else [out]
        seg = torch.stack([t["seg"] for t in targets])
        loss_seg = self.weight * segmentation_loss(logits, seg, self.dice)
        return {"loss_seg": loss_seg, "loss": loss_seg}

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax ``[B, K+1, I, J, K]`` on the input grid."""
        logits = self.forward(images).float()
        if tuple(logits.shape[2:]) != tuple(images.shape[2:]):
            logits = nn.functional.interpolate(logits, size=images.shape[2:], mode="trilinear")
        return logits.softmax(1)

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """Label map ``[B, I, J, K]`` int64, dense class + 1 (0 = background)."""
        return self.probabilities(images).argmax(1)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict]:
        probs = self.probabilities(images)
        labels = probs.argmax(1)
        results = []
        for b in range(images.shape[0]):
            found = largest_component_boxes(labels[b].cpu().numpy(), probs[b].cpu().numpy(), self.num_classes)
            results.append({k: torch.from_numpy(v).to(images.device) for k, v in found.items()})
        return results


__all__ = ["SegmentationDetector"]
