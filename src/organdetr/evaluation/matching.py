"""Greedy COCO matching of detections to ground truth, per (case, class), all IoU thresholds at once.

The rule (pycocotools ``evaluateImg`` = nnDetection / MONAI ``matching_batch``): within one case and
one class, detections are visited by descending score (ties: input order, a stable sort) and each takes
the still-unmatched ground-truth box of highest IoU whose IoU reaches the threshold (ties between
ground-truth boxes: the later one, as the reference loop does). Only the ``max_detections``
highest-scoring detections of each (case, class) take part; the rest are dropped, not counted as FPs.

Vectorisation: with one ground-truth box in a (case, class) - the usual "one box per organ per scan"
case - detection ``d`` is a true positive at threshold ``t`` iff its IoU reaches ``t`` and no earlier
detection of the group did. That is one ``[T, D]`` cumulative sum over all groups at once. Groups with
several ground-truth boxes (rare) run the greedy loop over their few detections, still vectorised over
thresholds and boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from organdetr.core.boxes.iou import box_iou_3d, box_iou_3d_monai, paired_iou_3d, paired_iou_3d_monai

# An IoU that equals a threshold up to float64 rounding of the mm coordinates counts (COCO mode).
IOU_TOLERANCE = 1e-12


@dataclass
class Matching:
    """Matches of the kept detections, sorted by (group, descending score).

    ``order [D]``: index of each kept detection in the input arrays. ``matched [T, D]`` bool: true
    positive at threshold ``t``. ``gt_index [D]``: input index of the ground-truth box matched at the
    reference threshold (``-1`` if none) and ``iou [D]`` its IoU (0 if none).
    """

    order: np.ndarray
    matched: np.ndarray
    gt_index: np.ndarray
    iou: np.ndarray


def match_detections(
    det_group: np.ndarray,
    det_score: np.ndarray,
    det_boxes: np.ndarray,
    gt_group: np.ndarray,
    gt_boxes: np.ndarray,
    thresholds: np.ndarray,
    *,
    max_detections: int,
    monai: bool,
    reference_index: int,
) -> Matching:
    """Match detections ``[D]`` to ground truth ``[G]`` within groups (``group = case * C + class``).

    ``thresholds [T]`` IoU thresholds; ``monai`` selects MONAI's float32 IoU and threshold rule
    (``iou >= min(t, 1 - 1e-10)``) instead of float64 IoU with :data:`IOU_TOLERANCE`.
    ``reference_index`` picks the threshold whose matched pairs are reported in ``gt_index`` / ``iou``.
    """
    order = _kept_order(det_group, det_score, max_detections)
    group = det_group[order]
    boxes = det_boxes[order]
    num = len(order)
    limits = np.minimum(thresholds, 1 - 1e-10) if monai else thresholds - IOU_TOLERANCE
    matched = np.zeros((len(thresholds), num), dtype=bool)
    gt_index = np.full(num, -1, dtype=np.int64)
    iou_ref = np.zeros(num, dtype=np.float64)
    if num == 0:
        return Matching(order, matched, gt_index, iou_ref)

    gt_order = np.argsort(gt_group, kind="stable")
    groups, first, counts = np.unique(gt_group[gt_order], return_index=True, return_counts=True)
    pos = np.minimum(np.searchsorted(groups, group), max(len(groups) - 1, 0))
    has_gt = (groups[pos] == group) if len(groups) else np.zeros(num, dtype=bool)
    n_gt = np.where(has_gt, counts[pos] if len(groups) else 0, 0)

    single = np.flatnonzero(n_gt == 1)
    if len(single):
        gt_of = gt_order[first[pos[single]]]
        pair_iou = paired_iou_3d_monai if monai else paired_iou_3d
        ious = pair_iou(boxes[single], gt_boxes[gt_of])
        reach = np.zeros_like(matched)
        reach[:, single] = ious[None, :] >= limits[:, None]
        matched |= reach & (_count_in_group(reach, group) == 1)
        hit = matched[reference_index, single]
        gt_index[single[hit]] = gt_of[hit]
        iou_ref[single[hit]] = ious[hit]

    multi = np.flatnonzero(n_gt > 1)
    if len(multi):
        iou_fn = box_iou_3d_monai if monai else box_iou_3d
        starts = np.flatnonzero(np.r_[True, group[multi][1:] != group[multi][:-1]])
        for chunk in np.split(multi, starts[1:]):
            p = pos[chunk[0]]
            gts = gt_order[first[p] : first[p] + counts[p]]
            ious = iou_fn(boxes[chunk], gt_boxes[gts])
            _greedy(ious, limits, matched, chunk, gts, gt_index, iou_ref, reference_index)
    return Matching(order, matched, gt_index, iou_ref)


def _kept_order(group: np.ndarray, score: np.ndarray, max_detections: int) -> np.ndarray:
    """Indices sorted by (group, -score, input order), keeping the top ``max_detections`` per group."""
    order = np.lexsort((np.arange(len(group)), -score, group))
    g = group[order]
    rank = np.arange(len(g)) - _group_start(g)
    return order[rank < max_detections]


def _group_start(group_sorted: np.ndarray) -> np.ndarray:
    """For each position in a group-sorted array, the position where its group starts."""
    n = len(group_sorted)
    new = np.r_[True, group_sorted[1:] != group_sorted[:-1]] if n else np.zeros(0, dtype=bool)
    return np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)


def _count_in_group(flags: np.ndarray, group_sorted: np.ndarray) -> np.ndarray:
    """``[T, D]`` running count of ``flags`` within each group (inclusive), groups contiguous along D."""
    cum = np.cumsum(flags, axis=1, dtype=np.int32)
    start = _group_start(group_sorted)
    before = cum[:, start] - flags[:, start]
    return cum - before


def _greedy(
    ious: np.ndarray,
    limits: np.ndarray,
    matched: np.ndarray,
    dets: np.ndarray,
    gts: np.ndarray,
    gt_index: np.ndarray,
    iou_ref: np.ndarray,
    reference_index: int,
) -> None:
    """Reference greedy matching of one group (``ious [d, g]``), vectorised over thresholds."""
    num_t, num_g = len(limits), ious.shape[1]
    taken = np.zeros((num_t, num_g), dtype=bool)
    rows = np.arange(num_t)
    for d, det in enumerate(dets):
        cand = np.where(~taken & (ious[d][None, :] >= limits[:, None]), ious[d][None, :], -1.0)
        best = num_g - 1 - np.argmax(cand[:, ::-1], axis=1)  # last of equal maxima
        ok = cand[rows, best] >= 0
        taken[rows[ok], best[ok]] = True
        matched[ok, det] = True
        if ok[reference_index]:
            gt_index[det] = gts[best[reference_index]]
            iou_ref[det] = ious[d, best[reference_index]]
