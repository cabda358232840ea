"""Organ-DETR training losses: classification, box (L1 + 3D GIoU), multiscale segmentation (CE + Dice).

``total = w_class * L_class + w_bbox * L_L1 + w_giou * L_GIoU + w_seg * L_seg`` (+ the class and box terms
of every auxiliary decoder layer), defaults 2 / 5 / 5 / 2 (paper: cls/bbox/seg = 2/5/2, box = L1 + GIoU).

Classification is softmax cross-entropy over ``K + 1`` classes with the no-object class down-weighted by
``eos_coef`` (DETR). We keep CE rather than sigmoid focal loss because (a) each organ class occurs at most
once per scan, so the softmax's "one class per query" competition is the right prior and inference reads
a per-class probability directly, and (b) DQM already supplies ``1 + eta`` positives per organ, which
removes most of the foreground/background imbalance focal loss exists to fix.

Box losses are summed over matched (query, organ) pairs and divided by the number of pairs in the batch
(DETR); under DQM that is the repeated count. Organs absent from a scan are simply not in its targets, so
they contribute no box loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcyczwhd_to_xyzxyz, generalized_box_iou_3d
from .matcher import HungarianMatcher


@dataclass
class LossConfig:
    """Loss weights. ``weight_bbox`` scales L1, ``weight_giou`` scales 1 - GIoU."""

    weight_class: float = 2.0
    weight_bbox: float = 5.0
    weight_giou: float = 5.0
    weight_seg: float = 2.0
    eos_coef: float = 0.1  # weight of the no-object class in the CE
    aux_loss: bool = True  # class + box losses on every decoder layer
    seg_dice: bool = True  # CE + Dice (False: CE only)

    def __post_init__(self) -> None:
        for name in ("weight_class", "weight_bbox", "weight_giou", "weight_seg"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0")
        if not 0 < self.eos_coef <= 1:
            raise ValueError(f"LossConfig.eos_coef must be in (0, 1], got {self.eos_coef}")


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


class SetCriterion(nn.Module):
    """DETR set loss with a pluggable matcher (one-to-one or DQM).

    ``forward(outputs, targets) -> dict[str, Tensor]`` of already-weighted terms (``loss_class``,
    ``loss_bbox``, ``loss_giou``, ``loss_seg``, ``loss_class_<i>`` ... for aux layer ``i``) plus ``"loss"``,
    their sum. Targets: ``labels [M]`` int64, ``boxes [M, 6]`` normalised cxcyczwhd, optional
    ``seg [I, J, K]`` int64 (0 background, c + 1 for class c).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, cfg: LossConfig):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.cfg = cfg
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = cfg.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _class_loss(
        self, logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for b, (query_idx, target_idx) in enumerate(indices):
            target_classes[b, query_idx.to(logits.device)] = targets[b]["labels"][
                target_idx.to(logits.device)
            ]
        return F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)

    def _box_losses(
        self, boxes: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_pairs: float
    ) -> tuple[Tensor, Tensor]:
        src = torch.cat([boxes[b, q.to(boxes.device)] for b, (q, _) in enumerate(indices)])
        tgt = torch.cat([targets[b]["boxes"][t.to(boxes.device)] for b, (_, t) in enumerate(indices)])
        if src.numel() == 0:
            zero = boxes.sum() * 0.0  # keeps the graph (DDP) with no gradient
            return zero, zero
        src, tgt = src.float(), tgt.float().to(src.device)
        l1 = F.l1_loss(src, tgt, reduction="none").sum() / num_pairs
        giou = torch.diag(generalized_box_iou_3d(box_cxcyczwhd_to_xyzxyz(src), box_cxcyczwhd_to_xyzxyz(tgt)))
        return l1, (1 - giou).sum() / num_pairs

    def _seg_loss(self, seg_logits: list[Tensor], targets: list[dict]) -> Tensor | None:
        if not seg_logits or any("seg" not in t for t in targets):
            return None
        seg = torch.stack([t["seg"] for t in targets]).to(seg_logits[0].device).long()
        terms = []
        for logits in seg_logits:
            labels = downsample_labels(seg, tuple(logits.shape[2:]))
            term = F.cross_entropy(logits.float(), labels)
            if self.cfg.seg_dice:
                term = term + dice_loss(logits, labels)
            terms.append(term)
        return torch.stack(terms).mean()

    def _decoder_layer_losses(
        self, outputs: dict, targets: list[dict], num_pairs: float
    ) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        l1, giou = self._box_losses(outputs["pred_boxes"], targets, indices, num_pairs)
        return {
            "loss_class": self.cfg.weight_class * self._class_loss(outputs["pred_logits"], targets, indices),
            "loss_bbox": self.cfg.weight_bbox * l1,
            "loss_giou": self.cfg.weight_giou * giou,
        }

    def num_pairs(self, num_queries: int, targets: list[dict]) -> float:
        """Matched pairs per process (``repeats * M`` per image under DQM), at least 1.

        Under torch.distributed this is the mean over all processes (as in DETR), so that every rank
        normalises by the same number and DDP's gradient averaging gives the single-process loss.
        """
        total = float(
            sum(
                self.matcher.repeats(num_queries, int(t["labels"].numel())) * int(t["labels"].numel())
                for t in targets
            )
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = targets[0]["labels"].device if targets else torch.device("cpu")
            if dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            count = torch.tensor([total], dtype=torch.float64, device=device)
            dist.all_reduce(count)
            total = float(count.item()) / dist.get_world_size()
        return max(total, 1.0)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_pairs = self.num_pairs(outputs["pred_logits"].shape[1], targets)
        losses = self._decoder_layer_losses(outputs, targets, num_pairs)
        if self.cfg.aux_loss:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._decoder_layer_losses(aux, targets, num_pairs)
                losses.update({f"{name}_{i}": value for name, value in aux_losses.items()})
        seg = self._seg_loss(outputs.get("seg_logits", []), targets)
        if seg is not None:
            losses["loss_seg"] = self.cfg.weight_seg * seg
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses


def build_criterion(num_classes: int, matcher: HungarianMatcher, cfg: LossConfig) -> SetCriterion:
    """SetCriterion for ``num_classes`` organ classes (no-object added internally)."""
    return SetCriterion(num_classes, matcher, cfg)


__all__ = ["LossConfig", "SetCriterion", "build_criterion", "dice_loss", "downsample_labels"]
