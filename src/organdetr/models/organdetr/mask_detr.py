"""Organ-DETR with ``model.mask_head``: one query gives the organ's class, box and mask.

The network adds ``pred_masks [B, N, i, j, k]`` to its outputs: the decoupled mask head
(``blocks.mask_head.MaskHead``) applied to the last decoder layer's queries and the finest encoded level's
voxel features (stride 4, or 2 with ``model.fine_level``). The criterion adds the mask BCE and Dice of the
pairs its matcher makes (``loss_mask``, ``loss_mask_dice``; ``models.losses.matched_mask_losses``).

:class:`MaskDETRDetector` is the Detector protocol plus ``segment``, so ``organdetr predict`` also writes
the label map: per organ class ``c`` and voxel ``v``, ``s_c(v) = max_q score_q(c) * sigmoid(mask_q(v))``
over the queries (the max, not Mask2Former's sum, because dense query matching trains several queries per
organ), on the input grid (mask logits upsampled trilinearly); ``v`` takes the class of the largest
``s_c(v)`` when it is >= 0.5, else background. Boxes still come from the box head (``detect``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from organdetr.models.organdetr.detector import DETRDetector


def label_map_from_queries(
    pred_logits: Tensor,
    pred_masks: Tensor,
    size: tuple[int, int, int],
    activation: str,
    threshold: float = 0.5,
) -> Tensor:
    """``[B, I, J, K]`` int64 dense class + 1 (0 = background) from ``pred_logits [B, N, C]`` (sigmoid: C = K
    classes; softmax: K + 1 with no-object last) and mask logits ``pred_masks [B, N, i, j, k]``."""
    if activation == "sigmoid":
        scores = pred_logits.float().sigmoid()
    else:
        scores = pred_logits.float().softmax(-1)[..., :-1]
    masks = pred_masks.float()
    if tuple(masks.shape[2:]) != tuple(size):
        masks = F.interpolate(masks, size=size, mode="trilinear", align_corners=False)
    probs = masks.sigmoid()  # [B, N, I, J, K]
    per_class = torch.stack(
        [(scores[:, :, c, None, None, None] * probs).amax(1) for c in range(scores.shape[-1])], dim=1
    )  # [B, K, I, J, K]
    best, label = per_class.max(1)
    return torch.where(best >= threshold, label + 1, torch.zeros_like(label))


class MaskDETRDetector(DETRDetector):
    """:class:`DETRDetector` + ``segment(images) -> [B, I, J, K]`` (dense class + 1) from the mask head."""

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        outputs = self.network(images)
        return label_map_from_queries(
            outputs["pred_logits"],
            outputs["pred_masks"],
            tuple(images.shape[2:]),
            self.network.class_activation,
        )


__all__ = ["MaskDETRDetector", "label_map_from_queries"]
