"""Boxes of several predictions of one scan -> one box per organ; flips of voxel boxes (test-time mirroring).

**Fusion** (ensembles of models, test-time augmentation): per organ class, each member contributes its
highest-scoring box of that class (the toolkit's detectors give one box per organ). The fused box is the
score-weighted mean of the members' boxes, ``sum_m s_m b_m / sum_m s_m`` (corner by corner), and the fused
score the mean over *all* members, a member without a box of that class counting 0 - Weighted Boxes Fusion
(Solovyev et al. 2021, ``conf_type="avg"``) with one cluster per organ. ``ensemble-boxes``'
``weighted_boxes_fusion_3d`` computes the same for boxes that overlap above its IoU threshold, but splits
members whose boxes overlap less into separate clusters (two boxes of one organ), needs boxes normalised to
``[0, 1]`` and numba; one organ, one box, is what every consumer here expects, so the fusion is done here.

**Flips**: mirroring axis ``a`` of a grid of ``N`` voxels sends voxel ``v`` to ``N - 1 - v``, so a half-open
voxel box ``[lo, hi)`` (docs/conventions.md) becomes ``[N - hi, N - lo)``: exact, and its own inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def flip_voxel_boxes(boxes: np.ndarray, axes: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Voxel boxes ``[..., 6]`` (xyzxyz, half-open, ``(i, j, k)``) on a grid of ``size`` ``(I, J, K)``
    voxels -> the same boxes after mirroring the grid along ``axes`` (0 = i, 1 = j, 2 = k). float64."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    for axis in axes:
        n = float(size[axis])
        lo, hi = out[..., axis].copy(), out[..., axis + 3].copy()
        out[..., axis], out[..., axis + 3] = n - hi, n - lo
    return out


def _best_per_class(labels: np.ndarray, scores: np.ndarray) -> dict[int, int]:
    """Class -> index of its highest-scoring detection."""
    best: dict[int, int] = {}
    for index in np.argsort(-scores, kind="stable"):
        best.setdefault(int(labels[index]), int(index))
    return best


def fuse_organ_boxes(members: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Weighted box fusion, one box per organ class, of ``members``' detections of one scan.

    Args:
        members: per member ``labels [D]`` (class index), ``scores [D]`` in ``[0, 1]``, ``boxes [D, 6]``
            (xyzxyz, any unit, the same for every member).

    Returns:
        ``labels [K']``, ``scores [K']``, ``boxes [K', 6]`` (float64), one row per class any member found,
        sorted by descending fused score: box = score-weighted mean of the members' best boxes of that
        class (the plain mean when all their scores are 0), score = sum of those scores / ``len(members)``.
    """
    if not members:
        raise ValueError("fusion needs at least one member")
    boxes: dict[int, list[np.ndarray]] = {}
    scores: dict[int, list[float]] = {}
    for member in members:
        member_scores = np.asarray(member["scores"], dtype=np.float64)
        member_boxes = np.asarray(member["boxes"], dtype=np.float64).reshape(-1, 6)
        for label, index in _best_per_class(np.asarray(member["labels"]), member_scores).items():
            boxes.setdefault(label, []).append(member_boxes[index])
            scores.setdefault(label, []).append(float(member_scores[index]))
    labels = sorted(boxes)
    fused_boxes = np.zeros((len(labels), 6))
    fused_scores = np.zeros(len(labels))
    for row, label in enumerate(labels):
        weights, stacked = np.asarray(scores[label]), np.stack(boxes[label])
        total = weights.sum()
        fused_boxes[row] = (weights @ stacked) / total if total > 0 else stacked.mean(axis=0)
        fused_scores[row] = total / len(members)
    order = np.argsort(-fused_scores, kind="stable")
    return {
        "labels": np.asarray(labels, dtype=np.int64)[order],
        "scores": fused_scores[order],
        "boxes": fused_boxes[order],
    }


__all__ = ["flip_voxel_boxes", "fuse_organ_boxes"]
