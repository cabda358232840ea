"""Organ-DETR training losses: classification, box (L1 + 3D GIoU), proposals, denoising, segmentation.

``total = w_class * L_class + w_bbox * L_L1 + w_giou * L_GIoU + w_seg * L_seg``, summed over every decoder
layer (aux loss), plus the same class/box terms for the encoder proposals (x ``weight_proposals``) and the
denoising queries (x ``weight_denoising``). Defaults 2 / 5 / 5 / 2 (paper: cls/bbox/seg = 2/5/2, box =
L1 + GIoU).

Classification follows the network's class head:

* sigmoid (default, Deformable DETR / DINO): sigmoid focal loss (alpha 0.25, gamma 2) over every query
  and class, summed and divided by the matched pairs. Each class is scored independently, which suits
  organs: several may be absent, and "absent" is a low score for that class, not a competition;
* softmax (DETR): cross-entropy over ``K + 1`` classes, no-object down-weighted by ``eos_coef``.

IoU-aware classification (``iou_aware``, sigmoid head only): a matched query's target for its organ's class
is the IoU of its box with the organ's (detached) instead of 1, learned with the quality focal loss (GFL, Li
et al. 2020; the IoU-aware scores of DINO-family detectors). Inference keeps the best-scoring query per
organ, so its score must rank the queries by box quality: with 0/1 targets every matched query of DQM
learns the same score whatever its box (issue 20: score-IoU correlation 0.56, the top-scoring query's
median IoU 0.51 against 0.57 for the best of the 30). The encoder proposals learn the same way, so
that the query selection picks well-placed proposals (IoU-aware query selection).

Box losses are summed over matched (query, organ) pairs and divided by the number of pairs in the batch
(DETR); under DQM that is the repeated count. Organs absent from a scan are simply not in its targets, so
they contribute no box loss. Encoder proposals are supervised densely (:mod:`.proposals`: every token in
an organ's central region); denoising queries by construction (:mod:`.denoising`). The segmentation term
and ``model.mask_head``'s mask terms are the shared ones of :mod:`organdetr.models.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz, generalized_box_iou_3d, paired_box_iou_3d
from organdetr.models.losses import global_count, matched_mask_losses, segmentation_loss
from organdetr.models.organdetr.denoising import DenoisingPlan
from organdetr.models.organdetr.matcher import HungarianMatcher
from organdetr.models.organdetr.proposals import assign_proposals


@dataclass
class LossConfig:
    """Loss weights. ``weight_bbox`` scales L1, ``weight_giou`` scales 1 - GIoU."""

    weight_class: float = 2.0
    weight_bbox: float = 5.0
    weight_giou: float = 5.0
    weight_seg: float = 2.0
    weight_proposals: float = 1.0  # multiplier of the encoder-proposal class / box terms
    weight_denoising: float = 1.0  # multiplier of the denoising queries' class / box terms
    eos_coef: float = 0.1  # softmax head: weight of the no-object class in the CE
    focal_alpha: float = 0.25  # sigmoid head: focal loss alpha (Deformable DETR)
    focal_gamma: float = 2.0
    aux_loss: bool = True  # class + box losses on every decoder layer
    seg_dice: bool = True  # CE + Dice (False: CE only)
    iou_aware: bool = False  # sigmoid head: matched queries' class target = their box IoU (quality focal)
    weight_mask: float = 5.0  # model.mask_head: BCE of the matched queries' masks
    weight_mask_dice: float = 5.0  # model.mask_head: Dice of the matched queries' masks

    def __post_init__(self) -> None:
        for name in (
            "weight_class",
            "weight_bbox",
            "weight_giou",
            "weight_seg",
            "weight_proposals",
            "weight_denoising",
            "weight_mask",
            "weight_mask_dice",
            "focal_gamma",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0")
        if not 0 < self.eos_coef <= 1:
            raise ValueError(f"LossConfig.eos_coef must be in (0, 1], got {self.eos_coef}")
        if not 0 < self.focal_alpha < 1:
            raise ValueError(f"LossConfig.focal_alpha must be in (0, 1), got {self.focal_alpha}")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017) of ``logits`` against 0/1 ``targets`` (same shape)."""
    logits, targets = logits.float(), targets.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    return ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))


def quality_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """Element-wise quality focal loss (Li et al. 2020) of ``logits`` against soft ``targets`` in [0, 1]:
    ``BCE(sigmoid(x), t) * |t - sigmoid(x)| ** gamma`` (a focal loss whose positives aim at ``t``)."""
    logits, targets = logits.float(), targets.float()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return ce * (targets - logits.sigmoid()).abs().pow(gamma)


def pair_iou(src: Tensor, tgt: Tensor) -> Tensor:
    """Detached IoU ``[P]`` of paired cxcyczwhd boxes ``[P, 6]`` (the IoU-aware class targets)."""
    with torch.no_grad():
        return paired_box_iou_3d(box_cxcyczwhd_to_xyzxyz(src.float()), box_cxcyczwhd_to_xyzxyz(tgt.float()))


class SetCriterion(nn.Module):
    """DETR set loss with a pluggable matcher (one-to-one or DQM), plus proposal and denoising terms.

    ``forward(outputs, targets) -> dict[str, Tensor]`` of already-weighted terms plus ``"loss"``, their
    sum: ``loss_class``, ``loss_bbox``, ``loss_giou`` (last decoder layer), the same with ``_<i>`` for
    earlier layer ``i``, with ``_enc`` for the encoder proposals, with ``_dn`` / ``_dn_<i>`` for the
    denoising queries, and ``loss_seg``. Targets: ``labels [M]`` int64, ``boxes [M, 6]`` normalised
    cxcyczwhd, optional ``seg [I, J, K]`` int64 (0 background, c + 1 for class c).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, cfg: LossConfig, sigmoid: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.cfg = cfg
        self.sigmoid = sigmoid
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = cfg.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    # ------------------------------------------------------------------------------ single terms

    def class_loss(
        self,
        logits: Tensor,
        labels: Tensor,
        num_pairs: float,
        valid: Tensor | None = None,
        quality: Tensor | None = None,
    ) -> Tensor:
        """``logits [B, N, C]`` against per-query labels ``[B, N]`` (``num_classes`` = no object);
        ``valid [B, N]`` (optional) masks queries out; ``quality [B, N]`` (sigmoid head, ``iou_aware``):
        each query's box IoU, the soft target of its label's class."""
        if self.sigmoid:
            onehot = F.one_hot(labels, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
            if quality is not None:
                loss = quality_focal_loss(logits, onehot * quality[..., None], self.cfg.focal_gamma)
            else:
                loss = sigmoid_focal_loss(logits, onehot, self.cfg.focal_alpha, self.cfg.focal_gamma)
            if valid is not None:
                loss = loss * valid[..., None]
            return loss.sum() / num_pairs
        if valid is not None:
            labels = torch.where(valid, labels, torch.full_like(labels, -100))
        return F.cross_entropy(logits.float().transpose(1, 2), labels, self.empty_weight, ignore_index=-100)

    @staticmethod
    def box_losses(src: Tensor, tgt: Tensor, num_pairs: float, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """``(L1, 1 - GIoU)`` sums of paired boxes ``[P, 6]`` / ``num_pairs``; ``anchor`` keeps the graph
        (for DDP) when there is no pair."""
        if src.numel() == 0:
            zero = anchor.sum() * 0.0
            return zero, zero
        src, tgt = src.float(), tgt.float().to(src.device)
        l1 = F.l1_loss(src, tgt, reduction="none").sum() / num_pairs
        giou = torch.diag(generalized_box_iou_3d(box_cxcyczwhd_to_xyzxyz(src), box_cxcyczwhd_to_xyzxyz(tgt)))
        return l1, (1 - giou).sum() / num_pairs

    def _weighted(self, cls: Tensor, l1: Tensor, giou: Tensor, scale: float = 1.0) -> dict[str, Tensor]:
        return {
            "loss_class": scale * self.cfg.weight_class * cls,
            "loss_bbox": scale * self.cfg.weight_bbox * l1,
            "loss_giou": scale * self.cfg.weight_giou * giou,
        }

    # ------------------------------------------------------------------------------ groups of terms

    def matched_losses(self, outputs: dict, targets: list[dict], num_pairs: float) -> dict[str, Tensor]:
        """Class and box terms of one decoder layer's matching queries (Hungarian / DQM assignment)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        indices = self.matcher(outputs, targets)
        labels = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (query_idx, target_idx) in enumerate(indices):
            labels[b, query_idx.to(logits.device)] = targets[b]["labels"][target_idx.to(logits.device)]
        src = torch.cat([boxes[b, q.to(boxes.device)] for b, (q, _) in enumerate(indices)])
        tgt = torch.cat([targets[b]["boxes"][t.to(boxes.device)] for b, (_, t) in enumerate(indices)])
        l1, giou = self.box_losses(src, tgt, num_pairs, boxes)
        quality = None
        if self.iou_aware:
            quality = torch.zeros(logits.shape[:2], dtype=torch.float32, device=logits.device)
            batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(logits.device)
            query = torch.cat([q for q, _ in indices]).to(logits.device)
            quality[batch, query] = pair_iou(src, tgt.to(src.device))
        return self._weighted(self.class_loss(logits, labels, num_pairs, quality=quality), l1, giou)

    @property
    def iou_aware(self) -> bool:
        """IoU-aware class targets are on (``loss.iou_aware`` with a sigmoid class head)."""
        return self.cfg.iou_aware and self.sigmoid

    def proposal_losses(self, enc: dict, targets: list[dict]) -> dict[str, Tensor]:
        """Dense terms of the encoder proposals (:func:`.proposals.assign_proposals`); always focal."""
        logits, boxes = enc["pred_logits"], enc["pred_boxes"]  # [B, S, K], [B, S, 6]
        onehot = torch.zeros_like(logits)
        src, tgt = [], []
        for b, target in enumerate(targets):
            index, positive = assign_proposals(enc["anchors"], enc["spacing"], target)
            if positive.any():
                labels = target["labels"].to(logits.device)[index[positive]]
                onehot[b, positive.nonzero()[:, 0], labels] = 1.0
                src.append(boxes[b, positive])
                tgt.append(target["boxes"].to(boxes.device)[index[positive]])
        num_positive = global_count(float(onehot.sum()), logits.device)
        src_t = torch.cat(src) if src else boxes.new_zeros(0, 6)
        tgt_t = torch.cat(tgt) if tgt else boxes.new_zeros(0, 6)
        if self.iou_aware:  # IoU-aware query selection: a proposal's score aims at its box's IoU
            positive_rows = onehot.sum(-1) > 0  # [B, S], the order of src_t
            quality = torch.zeros(logits.shape[:2], dtype=torch.float32, device=logits.device)
            quality[positive_rows] = pair_iou(src_t, tgt_t)
            cls = quality_focal_loss(logits, onehot * quality[..., None], self.cfg.focal_gamma).sum()
        else:
            cls = sigmoid_focal_loss(logits, onehot, self.cfg.focal_alpha, self.cfg.focal_gamma).sum()
        cls = cls / num_positive
        l1, giou = self.box_losses(src_t, tgt_t, num_positive, boxes)
        return self._weighted(cls, l1, giou, self.cfg.weight_proposals)

    def denoising_losses(self, layer: dict, plan: DenoisingPlan, targets: list[dict]) -> dict[str, Tensor]:
        """Terms of one layer's denoising queries: positives reconstruct their organ (class + box),
        negatives predict no object, padding slots are ignored."""
        logits, boxes = layer["pred_logits"], layer["pred_boxes"]  # [B, G*2P, C], [B, G*2P, 6]
        labels = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        valid = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        src, tgt = [], []
        for b, target in enumerate(targets):
            slots, organ = plan.positive_slots(b)
            slots, organ = slots.to(logits.device), organ.to(logits.device)
            labels[b, slots] = target["labels"][organ]
            valid[b, slots] = True
            valid[b, slots + plan.pad] = True
            src.append(boxes[b, slots])
            tgt.append(target["boxes"][organ])
        num_positive = global_count(float(sum(plan.groups * m for m in plan.num_organs)), logits.device)
        cls = self.class_loss(logits, labels, num_positive, valid)
        l1, giou = self.box_losses(torch.cat(src), torch.cat(tgt), num_positive, boxes)
        return self._weighted(cls, l1, giou, self.cfg.weight_denoising)

    def mask_losses(self, outputs: dict, targets: list[dict], num_pairs: float) -> dict[str, Tensor]:
        """``model.mask_head``: BCE + Dice of the last layer's matched queries' masks against their organs'
        masks (``seg == label + 1``); the matcher runs again on the last layer (a second Hungarian solve)."""
        indices = self.matcher(outputs, targets)
        masks = [t["seg"][None] == (t["labels"][:, None, None, None] + 1) for t in targets]
        bce, dice = matched_mask_losses(outputs["pred_masks"], indices, masks, num_pairs)
        return {"loss_mask": self.cfg.weight_mask * bce, "loss_mask_dice": self.cfg.weight_mask_dice * dice}

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
        device = targets[0]["labels"].device if targets else torch.device("cpu")
        return global_count(total, device)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_pairs = self.num_pairs(outputs["pred_logits"].shape[1], targets)
        losses = self.matched_losses(outputs, targets, num_pairs)
        if self.cfg.aux_loss:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(
                    {f"{k}_{i}": v for k, v in self.matched_losses(aux, targets, num_pairs).items()}
                )
        if "enc_outputs" in outputs:
            losses.update(
                {f"{k}_enc": v for k, v in self.proposal_losses(outputs["enc_outputs"], targets).items()}
            )
        if "dn_outputs" in outputs:
            layers, plan = outputs["dn_outputs"]["layers"], outputs["dn_outputs"]["plan"]
            if not self.cfg.aux_loss:
                layers = layers[-1:]
            for i, layer in enumerate(layers):
                suffix = "_dn" if i == len(layers) - 1 else f"_dn_{i}"
                losses.update(
                    {f"{k}{suffix}": v for k, v in self.denoising_losses(layer, plan, targets).items()}
                )
        if "pred_masks" in outputs and all("seg" in t for t in targets):
            losses.update(self.mask_losses(outputs, targets, num_pairs))
        seg_logits = outputs.get("seg_logits", [])
        if seg_logits and all("seg" in t for t in targets):
            seg = torch.stack([t["seg"] for t in targets])
            losses["loss_seg"] = self.cfg.weight_seg * segmentation_loss(seg_logits, seg, self.cfg.seg_dice)
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses


def build_criterion(
    num_classes: int, matcher: HungarianMatcher, cfg: LossConfig, sigmoid: bool = False
) -> SetCriterion:
    """SetCriterion for ``num_classes`` organ classes; ``sigmoid``: the network's class head is sigmoid."""
    return SetCriterion(num_classes, matcher, cfg, sigmoid)


__all__ = ["LossConfig", "SetCriterion", "build_criterion", "quality_focal_loss", "sigmoid_focal_loss"]
