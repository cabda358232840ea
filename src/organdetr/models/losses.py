"""Losses more than one architecture uses: semantic segmentation, matched masks, the pair-count normaliser.

* segmentation (Organ-DETR's auxiliary heads, ``seg2box``, MaskMed's point-wise head, MTMed3D's ``seg``):
  :func:`segmentation_loss` = CE (+ :func:`dice_loss`) of logits ``[B, K+1, i, j, k]`` against labels
  ``[B, I, J, K]`` (dense class + 1, 0 = background) brought to each level by :func:`downsample_labels`;
* matched masks (MaskMed's criterion, Organ-DETR's ``model.mask_head``): :func:`matched_mask_losses` = the
  mean per-voxel sigmoid BCE (:func:`sigmoid_bce_loss`) and the soft Dice (:func:`sigmoid_dice_loss`) of
  the (query, segment) pairs a matcher made, target masks resampled by :func:`resize_masks`;
* :func:`global_count`: a number of matched pairs (or positives) averaged over the processes of a
  torch.distributed run, at least 1 - what set losses divide by (DETR).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def global_count(total: float, device: torch.device) -> float:
    """``total`` averaged over the processes of a torch.distributed run (DETR), at least 1."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        count = torch.tensor([total], dtype=torch.float64, device=device)
        dist.all_reduce(count)
        total = float(count.item()) / dist.get_world_size()
    return max(total, 1.0)


# ---------------------------------------------------------------------------------------------- segmentation


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Soft Dice loss over foreground classes, batch-wise (nnU-Net "batch dice").

    ``logits [B, K+1, i, j, k]``, ``target [B, i, j, k]`` int64 in ``0..K`` -> scalar ``1 - mean Dice``.
    """
    prob = logits.float().softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(prob.dtype)
    dims = (0, 2, 3, 4)
    intersection = (prob * onehot).sum(dims)
    denominator = prob.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + eps) / (denominator + eps)).mean()


def downsample_labels(seg: Tensor, size: tuple[int, ...]) -> Tensor:
    """Nearest-neighbour downsampling of labels ``[B, I, J, K]`` to ``size`` -> ``[B, *size]`` int64."""
    if tuple(seg.shape[1:]) == tuple(size):
        return seg
    return F.interpolate(seg[:, None].float(), size=size, mode="nearest")[:, 0].long()


def segmentation_loss(seg_logits: list[Tensor], seg: Tensor, dice: bool = True) -> Tensor:
    """Mean over levels of CE (+ Dice) of ``seg_logits [B, K+1, i, j, k]`` against labels ``seg [B, I, J, K]``
    (dense class + 1, 0 background) downsampled to each level."""
    terms = []
    for logits in seg_logits:
        labels = downsample_labels(seg.to(logits.device).long(), tuple(logits.shape[2:]))
        term = F.cross_entropy(logits.float(), labels)
        if dice:
            term = term + dice_loss(logits, labels)
        terms.append(term)
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------------- matched masks


def resize_masks(masks: Tensor, size: tuple[int, ...]) -> Tensor:
    """Nearest-neighbour resampling of binary masks ``[M, I, J, K]`` to ``[M, *size]`` (bool)."""
    if tuple(masks.shape[1:]) == tuple(size):
        return masks.bool()
    return F.interpolate(masks[None].float(), size=size, mode="nearest")[0].bool()


def sigmoid_bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean per-voxel sigmoid cross-entropy of each pair: ``[P, V], [P, V] -> [P]``."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(1)


def sigmoid_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Soft Dice loss (+1 smoothing) of each pair: ``[P, V], [P, V] -> [P]``."""
    prob, targets = logits.float().sigmoid(), targets.float()
    return 1 - (2 * (prob * targets).sum(1) + 1) / (prob.sum(1) + targets.sum(1) + 1)


def matched_mask_losses(
    pred_masks: Tensor, indices: list[tuple[Tensor, Tensor]], target_masks: list[Tensor], num_pairs: float
) -> tuple[Tensor, Tensor]:
    """``(BCE, Dice)`` of the matched pairs, each summed and divided by ``num_pairs``.

    ``pred_masks [B, N, i, j, k]`` logits; ``indices[b] = (query_idx [P_b], target_idx [P_b])``;
    ``target_masks[b] [M_b, I, J, K]`` bool (resampled to ``(i, j, k)`` by nearest neighbour). With no
    pair the losses are zeros that keep the graph (DDP).
    """
    size = tuple(pred_masks.shape[2:])
    src, tgt = [], []
    for b, (query_idx, target_idx) in enumerate(indices):
        if query_idx.numel() == 0:
            continue
        src.append(pred_masks[b, query_idx.to(pred_masks.device)].flatten(1))
        masks = resize_masks(target_masks[b], size).to(pred_masks.device)
        tgt.append(masks[target_idx.to(pred_masks.device)].flatten(1))
    if not src:
        zero = pred_masks.sum() * 0.0
        return zero, zero
    src_t, tgt_t = torch.cat(src), torch.cat(tgt)
    return sigmoid_bce_loss(src_t, tgt_t).sum() / num_pairs, sigmoid_dice_loss(src_t, tgt_t).sum() / num_pairs


__all__ = [
    "dice_loss",
    "downsample_labels",
    "global_count",
    "matched_mask_losses",
    "resize_masks",
    "segmentation_loss",
    "sigmoid_bce_loss",
    "sigmoid_dice_loss",
]
