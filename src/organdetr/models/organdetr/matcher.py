"""Query-to-organ assignment: one-to-one Hungarian matching and Organ-DETR's Dense Query Matching (DQM).

Both use the DETR matching cost between query ``q`` and ground-truth organ ``t``::

    C[q, t] = w_class * cost_class(q, class_t) + w_bbox * ||b_q - b_t||_1 + w_giou * (-GIoU(b_q, b_t))

with boxes in normalised ``cxcyczwhd`` (GIoU on ``xyzxyz``). The class cost follows the class head:
softmax (DETR) ``-p_q(class_t)``; sigmoid (Deformable DETR) the focal-loss difference
``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))`` at ``p = sigmoid(logit_q[class_t])``,
i.e. how much cheaper the focal loss gets when ``q`` is made a positive of ``class_t``.

DQM (one-to-many, training only): each of the ``M`` organs of a scan is repeated ``1 + eta`` times,
``eta = ceil(lambda * N / M)`` for ``N`` queries, and ONE Hungarian problem is solved over the repeated
targets, so every organ gets exactly ``1 + eta`` distinct queries. If ``(1 + eta) * M > N`` the repeat
count is capped at ``N // M`` (a warning is logged once). ``lambda = 0`` reduces to one-to-one matching.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz, generalized_box_iou_3d
from organdetr.runtime.text import brief

log = logging.getLogger(__name__)

MatcherKind = Literal["dqm", "hungarian"]


@dataclass
class MatcherConfig:
    """Matching costs (DETR defaults scaled to the paper's loss weights) and the DQM ratio lambda."""

    kind: MatcherKind = "dqm"
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    dqm_lambda: float = 0.3  # paper range (0, 0.9); 0 = one-to-one

    def __post_init__(self) -> None:
        if self.kind not in ("dqm", "hungarian"):
            raise ValueError(f"MatcherConfig.kind must be 'dqm' or 'hungarian', got {brief(self.kind)}")
        if not 0.0 <= self.dqm_lambda < 1.0:
            raise ValueError(f"MatcherConfig.dqm_lambda must be in [0, 1), got {self.dqm_lambda}")
        if min(self.cost_class, self.cost_bbox, self.cost_giou) < 0:
            raise ValueError("MatcherConfig costs must be >= 0")


def dqm_repeats(num_queries: int, num_targets: int, dqm_lambda: float) -> int:
    """Queries per organ under DQM: ``1 + ceil(lambda * N / M)``, capped at ``N // M`` (at least 1)."""
    if num_targets == 0:
        return 0
    eta = math.ceil(dqm_lambda * num_queries / num_targets - 1e-9) if dqm_lambda > 0 else 0
    return max(1, min(1 + eta, num_queries // num_targets))


FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
"""Focal-loss constants of the sigmoid class cost (Deformable DETR's)."""


def matching_cost(
    logits: Tensor,
    boxes: Tensor,
    tgt_labels: Tensor,
    tgt_boxes: Tensor,
    cfg: MatcherConfig,
    sigmoid: bool = False,
) -> Tensor:
    """Cost ``[N, M]`` of one image: logits ``[N, K]`` (``sigmoid``) or ``[N, K+1]`` (softmax), boxes
    ``[N, 6]``; targets ``[M]``, ``[M, 6]``."""
    if not (torch.isfinite(logits).all() and torch.isfinite(boxes).all()):
        raise ValueError("matching: predictions contain NaN/inf (training diverged?)")
    if sigmoid:
        prob = logits.float().sigmoid()[:, tgt_labels]
        positive = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * -(prob + 1e-8).log()
        negative = (1 - FOCAL_ALPHA) * prob**FOCAL_GAMMA * -(1 - prob + 1e-8).log()
        cost_class = positive - negative
    else:
        cost_class = -logits.float().softmax(-1)[:, tgt_labels]
    cost_bbox = torch.cdist(boxes.float(), tgt_boxes.float(), p=1)
    cost_giou = -generalized_box_iou_3d(
        box_cxcyczwhd_to_xyzxyz(boxes.float()), box_cxcyczwhd_to_xyzxyz(tgt_boxes.float())
    )
    return cfg.cost_class * cost_class + cfg.cost_bbox * cost_bbox + cfg.cost_giou * cost_giou


class HungarianMatcher(nn.Module):
    """One-to-one (``repeats = 1``) or dense (DQM) assignment; ``kind`` chosen by :class:`MatcherConfig`.

    ``forward(outputs, targets) -> list[(query_idx [P] int64, target_idx [P] int64)]`` per image, sorted by
    query index. ``outputs``: ``pred_logits [B, N, K+1]``, ``pred_boxes [B, N, 6]``; ``targets``: list of
    dicts with ``labels [M]`` and ``boxes [M, 6]``. ``P = repeats * M`` (``M`` for one-to-one).
    """

    def __init__(self, cfg: MatcherConfig, sigmoid: bool = False):
        super().__init__()
        self.cfg = cfg
        self.sigmoid = sigmoid  # class cost for a sigmoid (focal) class head, else softmax
        self._warned_cap = False

    def repeats(self, num_queries: int, num_targets: int) -> int:
        if self.cfg.kind == "hungarian":
            return 1 if num_targets else 0
        return dqm_repeats(num_queries, num_targets, self.cfg.dqm_lambda)

    def _warn_if_capped(self, num_queries: int, num_targets: int, repeats: int) -> None:
        if self.cfg.kind != "dqm" or self._warned_cap or num_targets == 0:
            return
        wanted = 1 + (
            math.ceil(self.cfg.dqm_lambda * num_queries / num_targets - 1e-9)
            if self.cfg.dqm_lambda > 0
            else 0
        )
        if repeats < wanted:
            self._warned_cap = True
            log.warning(
                "DQM: %d organs x %d queries each exceeds the %d queries; capped at %d per organ "
                "(raise num_queries for full dense matching). Warned once.",
                num_targets,
                wanted,
                num_queries,
                repeats,
            )

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        num_queries = logits.shape[1]
        indices = []
        for b, target in enumerate(targets):
            num_targets = int(target["labels"].numel())
            if num_targets == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = matching_cost(
                logits[b], boxes[b], target["labels"], target["boxes"], self.cfg, self.sigmoid
            )
            repeats = self.repeats(num_queries, num_targets)
            self._warn_if_capped(num_queries, num_targets, repeats)
            indices.append(_solve(cost.cpu().numpy(), repeats))
        return indices


def _solve(cost: np.ndarray, repeats: int) -> tuple[Tensor, Tensor]:
    """One Hungarian solve with every target column repeated ``repeats`` times -> (query_idx, target_idx)."""
    rows, cols = linear_sum_assignment(np.repeat(cost, repeats, axis=1))
    order = np.argsort(rows)
    return (
        torch.as_tensor(rows[order], dtype=torch.int64),
        torch.as_tensor(cols[order] // repeats, dtype=torch.int64),
    )


def build_matcher(cfg: MatcherConfig, sigmoid: bool = False) -> HungarianMatcher:
    """Matcher for ``cfg.kind`` ("dqm" or "hungarian"); ``sigmoid``: sigmoid class head (focal cost)."""
    return HungarianMatcher(cfg, sigmoid)


__all__ = ["HungarianMatcher", "MatcherConfig", "build_matcher", "dqm_repeats", "matching_cost"]
