"""Bipartite matching of mask queries to ground-truth masks (MaskFormer / Mask2Former, MaskMed).

The cost of assigning query ``q`` to ground-truth segment ``t`` (class ``c_t``, binary mask ``m_t``)::

    C[q, t] = w_class * (-p_q(c_t)) + w_mask * BCE(mask_q, m_t) + w_dice * (1 - Dice(sigmoid(mask_q), m_t))

with ``p_q`` the softmax over the query's classes, BCE the mean per-voxel sigmoid cross-entropy and Dice the
soft Dice (+1 smoothing), all on the prediction's grid (targets resampled by nearest neighbour). One
Hungarian solve per image gives every ground-truth segment exactly one query (more queries than segments:
the rest predict no-object).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from organdetr.models.losses import resize_masks


def mask_matching_cost(
    logits: Tensor,
    masks: Tensor,
    tgt_labels: Tensor,
    tgt_masks: Tensor,
    *,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
) -> Tensor:
    """Cost ``[N, M]`` of one image: ``logits [N, C + 1]``, mask logits ``masks [N, V]``; targets
    ``tgt_labels [M]`` int64 and ``tgt_masks [M, V]`` (0/1) on the same ``V`` voxels."""
    if not (torch.isfinite(logits).all() and torch.isfinite(masks).all()):
        raise ValueError("mask matching: predictions contain NaN/inf (training diverged?)")
    logits, masks, tgt = logits.float(), masks.float(), tgt_masks.float()
    class_term = -logits.softmax(-1)[:, tgt_labels]
    voxels = masks.shape[1]
    pos = F.binary_cross_entropy_with_logits(masks, torch.ones_like(masks), reduction="none")
    neg = F.binary_cross_entropy_with_logits(masks, torch.zeros_like(masks), reduction="none")
    bce = (pos @ tgt.T + neg @ (1 - tgt).T) / voxels
    prob = masks.sigmoid()
    dice = 1 - (2 * prob @ tgt.T + 1) / (prob.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
    return cost_class * class_term + cost_mask * bce + cost_dice * dice


class MaskMatcher:
    """``matcher(outputs, targets) -> list[(query_idx [M], target_idx [M])]`` per image, sorted by query.

    ``outputs``: ``pred_logits [B, N, C + 1]``, ``pred_masks [B, N, i, j, k]``; ``targets``: per image
    ``labels [M]`` int64 and ``masks [M, I, J, K]`` (bool; resampled to ``(i, j, k)`` by nearest neighbour).
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0):
        self.costs = {"cost_class": cost_class, "cost_mask": cost_mask, "cost_dice": cost_dice}

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        indices = []
        for b, target in enumerate(targets):
            if target["labels"].numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            tgt = resize_masks(target["masks"], tuple(masks.shape[2:])).flatten(1).to(masks.device)
            cost = mask_matching_cost(
                logits[b], masks[b].flatten(1), target["labels"].to(logits.device), tgt, **self.costs
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices


__all__ = ["MaskMatcher", "mask_matching_cost"]
