"""MaskMed's set loss: class cross-entropy + mask BCE + mask Dice on matched (query, segment) pairs.

* the mask terms alone (:func:`organdetr.models.losses.matched_mask_losses`, shared with Organ-DETR's
  ``model.mask_head``): given mask logits ``[B, N, i, j, k]``, an assignment (query, target) per image and
  the targets' binary masks, the mean per-voxel sigmoid BCE and the soft Dice loss of the matched pairs,
  each summed over pairs and divided by the number of pairs;
* :class:`MaskSetCriterion` - MaskMed's set loss: bipartite matching (:class:`.matcher.MaskMatcher`) on the
  final prediction, reused for every earlier prediction (deep supervision); per prediction
  ``w_class * CE + w_mask * BCE + w_dice * Dice``, the CE over all queries with the no-object class
  down-weighted by ``eos_coef``.

Segments of a scan (:func:`segments_from_labels`): every class present in its label map, background
included (``seg`` holds dense class + 1, 0 = background; MaskMed's classes are ``0 = background``,
``c + 1`` = organ ``c``), each with its binary mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from organdetr.models.losses import global_count, matched_mask_losses
from organdetr.models.maskmed.matcher import MaskMatcher


def segments_from_labels(seg: Tensor) -> dict[str, Tensor]:
    """``seg [I, J, K]`` int64 -> ``labels [M]`` (the values present, ascending; 0 = background) and
    ``masks [M, I, J, K]`` bool."""
    labels = torch.unique(seg)
    return {"labels": labels, "masks": seg[None] == labels[:, None, None, None]}


class MaskSetCriterion(nn.Module):
    """``forward(outputs, targets) -> dict`` of weighted terms ``loss_class``, ``loss_mask``, ``loss_dice``
    (final prediction), the same with ``_<i>`` for the ``i``-th earlier prediction (when
    ``deep_supervision``), and ``loss``, their sum.

    ``outputs``: ``pred_logits [B, N, C + 1]``, ``pred_masks [B, N, I, J, K]``, ``aux_outputs`` (same keys,
    any grids); ``targets``: per image ``seg [I, J, K]`` int64 (dense class + 1, 0 = background) - or
    ``labels [M]`` + ``masks [M, I, J, K]`` already split into segments.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        weight_class: float = 2.0,
        weight_mask: float = 5.0,
        weight_dice: float = 5.0,
        eos_coef: float = 0.1,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes  # classes incl. background; index num_classes = no object
        self.weights = (weight_class, weight_mask, weight_dice)
        self.deep_supervision = deep_supervision
        self.matcher = MaskMatcher(weight_class, weight_mask, weight_dice)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def prediction_losses(
        self, outputs: dict, segments: list[dict], indices: list[tuple[Tensor, Tensor]], num_pairs: float
    ) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        labels = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (query_idx, target_idx) in enumerate(indices):
            labels[b, query_idx.to(logits.device)] = segments[b]["labels"].to(logits.device)[target_idx]
        class_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, self.empty_weight)
        bce, dice = matched_mask_losses(
            outputs["pred_masks"], indices, [s["masks"] for s in segments], num_pairs
        )
        w_class, w_mask, w_dice = self.weights
        return {"loss_class": w_class * class_loss, "loss_mask": w_mask * bce, "loss_dice": w_dice * dice}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        segments = [t if "masks" in t else segments_from_labels(t["seg"]) for t in targets]
        indices = self.matcher(outputs, segments)
        device = outputs["pred_logits"].device
        num_pairs = global_count(float(sum(len(q) for q, _ in indices)), device)
        losses = self.prediction_losses(outputs, segments, indices, num_pairs)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(
                    {
                        f"{k}_{i}": v
                        for k, v in self.prediction_losses(aux, segments, indices, num_pairs).items()
                    }
                )
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses


__all__ = ["MaskSetCriterion", "segments_from_labels"]
