"""COCO-style 3D detection metrics: precision/recall accumulation and the summary.

See the package docstring (``organdetr.evaluation``) and docs/metrics.md for the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from organdetr.evaluation.matching import match_detections
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

Mode = Literal["coco", "monai"]
NUM_RECALL_POINTS = 101
CENTER_IOU = 0.10  # matched pairs for centre / face errors: greedy matches at IoU >= 0.10


@dataclass(frozen=True)
class IoURange:
    """IoU thresholds ``start:step:stop`` (inclusive), e.g. COCO ``0.50:0.05:0.95``."""

    start: float
    stop: float
    step: float

    def values(self, mode: Mode = "coco") -> np.ndarray:
        """Thresholds ``[T]``: exact decimals (COCO mode) or MONAI's ``np.linspace`` values (MONAI mode)."""
        num = int(np.round((self.stop - self.start) / self.step)) + 1
        if mode == "monai":
            return np.linspace(self.start, self.stop, num, endpoint=True)
        return np.round(self.start + self.step * np.arange(num), 10)

    @property
    def label(self) -> str:
        return f"{self.start:.2f}:{self.step:.2f}:{self.stop:.2f}"


COCO = IoURange(0.50, 0.95, 0.05)
NNDETECTION = IoURange(0.10, 0.50, 0.05)
_COCO_IOU_LIST = (0.5, 0.75)  # MONAI iou_list used for the COCO-range metric
_NNDET_IOU_LIST = (0.1, 0.5, 0.75)  # MONAI COCOMetric default iou_list (nnDetection)


@dataclass
class Detection:
    """One predicted organ box: ``box_mm [6]`` LPS mm ``(x0, y0, z0, x1, y1, z1)``."""

    case_id: str
    label: str
    score: float
    box_mm: np.ndarray


@dataclass
class GroundTruth:
    """One ground-truth organ box: ``box_mm [6]`` LPS mm ``(x0, y0, z0, x1, y1, z1)``."""

    case_id: str
    label: str
    box_mm: np.ndarray


@dataclass
class BoxArrays:
    """Boxes as arrays: ``case [N]`` index into ``case_ids``, ``label [N]`` class index, ``box_mm [N, 6]``,
    ``score [N]`` (detections only)."""

    case: np.ndarray
    label: np.ndarray
    box_mm: np.ndarray
    score: np.ndarray | None = None


@dataclass
class MatchedOrgan:
    """A ground-truth organ matched at IoU >= 0.10: centre distance and per-face errors in mm.

    ``face_error_mm [6]`` = ``pred - gt`` per face ``(x0, y0, z0, x1, y1, z1)`` (signed, LPS mm).
    """

    case_id: str
    label: str
    score: float
    iou: float
    center_error_mm: float
    face_error_mm: np.ndarray


@dataclass
class EvaluationResult:
    """Summary, per-class table, curves and matched pairs of one evaluation.

    ``summary``: mAP, AP50, AP75, mAR (over ``iou_thresholds``), mAP_10_50, mAR_10_50, AP10
    (nnDetection range), center_error_mm (mean), center_error_mm_median, face_error_mm (mean |error|).
    ``precision [T, R, C]`` at the 101 ``recall_points`` and ``recall [T, C]`` for ``thresholds [T]``
    (-1 where a class has no ground truth).
    """

    summary: dict[str, float]
    per_class: dict[str, dict[str, float]]
    settings: dict
    thresholds: np.ndarray
    recall_points: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    matches: list[MatchedOrgan] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN -> ``None``): settings, summary, per_class, pr_curves at IoU 0.50 / 0.75."""
        curves = {}
        for iou in (0.5, 0.75):
            t = _index_of(self.thresholds, iou)
            curves[f"{iou:.2f}"] = {
                name: [round(float(p), 6) for p in self.precision[t, :, c]]
                for c, name in enumerate(self.per_class)
            }
        return _json_safe(
            {
                "settings": self.settings,
                "summary": self.summary,
                "per_class": self.per_class,
                "pr_curves": {
                    "recall": [round(float(r), 2) for r in self.recall_points],
                    "precision": curves,
                },
            }
        )


def evaluate_detections(
    detections: Sequence[Detection],
    ground_truth: Sequence[GroundTruth],
    classes: Sequence[str],
    *,
    max_detections: int = 1,
    iou_thresholds: IoURange = COCO,
    mode: Mode = "coco",
    case_ids: Sequence[str] | None = None,
) -> EvaluationResult:
    """Score detections against ground truth (all boxes LPS mm) per class, COCO style.

    ``classes``: the organ names (order = table order). ``max_detections``: kept per case and class
    (1 = the Organ-DETR protocol, 100 = MONAI/COCO default). ``mode``: ``"coco"`` (default) or
    ``"monai"`` (agrees with ``monai.apps.detection.metrics`` to 1e-6). ``case_ids``: the evaluated
    cases (default: every case named by either list; a case without ground truth still scores its
    detections as false positives). Raises :class:`InputError` for unknown organ names, NaN scores,
    boxes with min > max, or detections of a case outside ``case_ids``.
    """
    classes = list(classes)
    if case_ids is None:
        case_ids = sorted({d.case_id for d in detections} | {g.case_id for g in ground_truth})
    case_ids = list(case_ids)
    if len(set(case_ids)) != len(case_ids):
        raise InputError(None, "duplicate case ids in case_ids")
    dets = _to_arrays(detections, classes, case_ids, scored=True)
    gts = _to_arrays(ground_truth, classes, case_ids, scored=False)
    return evaluate_arrays(
        dets, gts, classes, case_ids, max_detections=max_detections, iou_thresholds=iou_thresholds, mode=mode
    )


def evaluate_arrays(
    detections: BoxArrays,
    ground_truth: BoxArrays,
    classes: Sequence[str],
    case_ids: Sequence[str],
    *,
    max_detections: int = 1,
    iou_thresholds: IoURange = COCO,
    mode: Mode = "coco",
) -> EvaluationResult:
    """:func:`evaluate_detections` on already-indexed arrays (no per-box Python objects)."""
    if mode not in ("coco", "monai"):
        raise ValueError(f"mode must be 'coco' or 'monai', got {brief(mode)}")
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    classes = list(classes)
    _check_boxes(detections, "detection")
    _check_boxes(ground_truth, "ground-truth")
    main = iou_thresholds.values(mode)
    nndet = NNDETECTION.values(mode)
    thresholds = np.union1d(np.union1d(main, nndet), _list_values(_COCO_IOU_LIST + _NNDET_IOU_LIST, mode))
    ref = _index_of(thresholds, CENTER_IOU)
    num_classes = len(classes)
    matching = match_detections(
        detections.case.astype(np.int64) * num_classes + detections.label,
        detections.score.astype(np.float64),
        detections.box_mm,
        ground_truth.case.astype(np.int64) * num_classes + ground_truth.label,
        ground_truth.box_mm,
        thresholds,
        max_detections=int(max_detections),
        monai=mode == "monai",
        reference_index=ref,
    )
    num_gt = np.bincount(ground_truth.label, minlength=num_classes)
    label = detections.label[matching.order]
    score = detections.score[matching.order]
    precision, recall = _accumulate(matching.matched, label, score, num_gt, mode)
    matches = _matched_organs(matching, detections, ground_truth, classes, case_ids)
    recall_points = np.linspace(0.0, 1.0, NUM_RECALL_POINTS)
    summary, per_class = _summarise(precision, recall, thresholds, main, nndet, classes, num_gt, mode)
    _add_errors(summary, per_class, matches, classes)
    for c, name in enumerate(classes):
        per_class[name]["num_gt"] = int(num_gt[c])
        per_class[name]["num_det"] = int(np.count_nonzero(label == c))
    settings = {
        "mode": mode,
        "max_detections": int(max_detections),
        "iou_thresholds": iou_thresholds.label,
        "nndetection_iou_thresholds": NNDETECTION.label,
        "recall_points": NUM_RECALL_POINTS,
        "center_error_iou": CENTER_IOU,
        "num_cases": len(case_ids),
        "num_classes": num_classes,
        "world_frame": "LPS",
    }
    return EvaluationResult(
        summary, per_class, settings, thresholds, recall_points, precision, recall, matches
    )


# ----------------------------------------------------------------------------------------------------
# input checks


def _to_arrays(items, classes: list[str], case_ids: list[str], *, scored: bool) -> BoxArrays:
    kind = "detection" if scored else "ground-truth box"
    class_index = {name: i for i, name in enumerate(classes)}
    case_index = {case: i for i, case in enumerate(case_ids)}
    n = len(items)
    case = np.empty(n, dtype=np.int64)
    label = np.empty(n, dtype=np.int64)
    for i, item in enumerate(items):
        c, k = case_index.get(item.case_id), class_index.get(item.label)
        if c is None or k is None:
            problem = ("is not among the evaluated cases" if c is None
                       else f"has unknown organ {brief(item.label)}")  # fmt: skip
            raise InputError(None, f"{kind} of case {brief(item.case_id)} {problem}")
        case[i], label[i] = c, k
    boxes = (
        np.asarray([item.box_mm for item in items], dtype=np.float64).reshape(n, -1)
        if n
        else np.zeros((0, 6))
    )
    if boxes.shape[1] != 6:
        raise InputError(
            None, f"{kind} boxes must have 6 values (x0, y0, z0, x1, y1, z1), got {boxes.shape[1]}"
        )
    score = np.asarray([item.score for item in items], dtype=np.float64) if scored else None
    out = BoxArrays(case, label, boxes, score)
    _check_boxes(out, kind, case_ids=case_ids, classes=classes)
    return out


def _check_boxes(arrays: BoxArrays, kind: str, *, case_ids=None, classes=None) -> None:
    def where(i: int) -> str:
        if case_ids is None:
            return f"{kind} #{i}"
        return f"{kind} of case {brief(case_ids[arrays.case[i]])} ({classes[arrays.label[i]]})"

    boxes = arrays.box_mm
    bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
    if len(bad):
        raise InputError(None, f"{where(bad[0])} has a non-finite box {boxes[bad[0]].tolist()}")
    bad = np.flatnonzero((boxes[:, 3:] < boxes[:, :3]).any(axis=1))
    if len(bad):
        raise InputError(None, f"{where(bad[0])} has a box with min > max: {boxes[bad[0]].tolist()}")
    if arrays.score is not None:
        bad = np.flatnonzero(~np.isfinite(arrays.score))
        if len(bad):
            raise InputError(None, f"{where(bad[0])} has a non-finite score ({arrays.score[bad[0]]})")


# ----------------------------------------------------------------------------------------------------
# precision / recall


def _accumulate(
    matched: np.ndarray, label: np.ndarray, score: np.ndarray, num_gt: np.ndarray, mode: Mode
) -> tuple[np.ndarray, np.ndarray]:
    """Precision ``[T, R, C]`` at the 101 recall points and final recall ``[T, C]`` (-1: no ground truth).

    Per class, detections of all cases are ranked by descending score (stable: ties keep case order,
    then within-case rank - the reference concatenation order).
    """
    num_t, num_c = matched.shape[0], len(num_gt)
    precision = -np.ones((num_t, NUM_RECALL_POINTS, num_c))
    recall = -np.ones((num_t, num_c))
    order = np.lexsort((np.arange(len(label)), -score, label))
    bounds = np.searchsorted(label[order], np.arange(num_c + 1))
    for c in range(num_c):
        if num_gt[c] == 0:
            continue
        tps = matched[:, order[bounds[c] : bounds[c + 1]]]
        curve = _curve_monai if mode == "monai" else _curve_coco
        precision[:, :, c], recall[:, c] = curve(tps, int(num_gt[c]))
    return precision, recall


def _curve_coco(tps: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact COCO curve of ``tps [T, n]``: recall point ``r/100`` is reached when ``100 tp >= r num_gt``."""
    num_t, n = tps.shape
    if n == 0:
        return np.zeros((num_t, NUM_RECALL_POINTS)), np.zeros(num_t)
    tp = np.cumsum(tps, axis=1, dtype=np.int64)
    prec = tp / np.arange(1, n + 1)
    envelope = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    targets = np.arange(NUM_RECALL_POINTS, dtype=np.int64) * num_gt
    out = np.zeros((num_t, NUM_RECALL_POINTS))
    for t in range(num_t):
        idx = np.searchsorted(tp[t] * (NUM_RECALL_POINTS - 1), targets, side="left")
        ok = idx < n
        out[t, ok] = envelope[t, idx[ok]]
    return out, tp[:, -1] / num_gt


def _curve_monai(tps: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """The same curve with MONAI's arithmetic: float32 cumulative sums, recall thresholds from linspace."""
    num_t, n = tps.shape
    recall_thresholds = np.linspace(0.0, 1.00, NUM_RECALL_POINTS, endpoint=True)
    out = np.zeros((num_t, NUM_RECALL_POINTS))
    if n == 0:
        return out, np.zeros(num_t)
    tp = np.cumsum(tps, axis=1).astype(np.float32)
    fp = np.cumsum(~tps, axis=1).astype(np.float32)
    rc = tp / num_gt
    pr = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(num_t):
        idx = np.searchsorted(rc[t], recall_thresholds, side="left")
        ok = idx < n
        out[t, ok] = envelope[t, idx[ok]]
    return out, rc[:, -1].astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# summary


def _summarise(precision, recall, thresholds, main, nndet, classes, num_gt, mode: Mode):
    """Summary dict and per-class dict from the curves (COCO: classes without GT left out; MONAI: -1)."""
    idx_main, idx_nndet = _indices(thresholds, main), _indices(thresholds, nndet)
    i50, i75, i10 = (_index_of(thresholds, v) for v in (0.5, 0.75, 0.1))
    if mode == "monai":  # MONAI's mAR averages the union of iou_list and the range
        ar_main = _indices(thresholds, np.union1d(_list_values(_COCO_IOU_LIST, mode), main))
        ar_nndet = _indices(thresholds, np.union1d(_list_values(_NNDET_IOU_LIST, mode), nndet))
    else:
        ar_main, ar_nndet = idx_main, idx_nndet
    present = np.flatnonzero(num_gt > 0)

    def ap(t_idx, c_idx) -> float:
        if mode == "monai":
            return float(np.mean(precision[np.ix_(t_idx, range(precision.shape[1]), c_idx)]))
        c_idx = [c for c in c_idx if num_gt[c] > 0]
        return (
            float(np.mean(precision[np.ix_(t_idx, range(precision.shape[1]), c_idx)])) if c_idx else math.nan
        )

    def ar(t_idx, c_idx) -> float:
        values = recall[np.ix_(t_idx, c_idx)]
        values = values[values > -1]
        if len(values) == 0:
            return -1.0 if mode == "monai" else math.nan
        return float(np.mean(values))

    all_c = list(range(len(classes)))
    summary = {
        "mAP": ap(idx_main, all_c),
        "AP50": ap([i50], all_c),
        "AP75": ap([i75], all_c),
        "mAR": ar(ar_main, all_c),
        "mAP_10_50": ap(idx_nndet, all_c),
        "mAR_10_50": ar(ar_nndet, all_c),
        "AP10": ap([i10], all_c),
        "num_classes_with_gt": float(len(present)),
    }
    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "AP": ap(idx_main, [c]),
            "AP50": ap([i50], [c]),
            "AP75": ap([i75], [c]),
            "AR": ar(ar_main, [c]),
            "AP_10_50": ap(idx_nndet, [c]),
            "AR_10_50": ar(ar_nndet, [c]),
        }
    return summary, per_class


def _matched_organs(matching, dets: BoxArrays, gts: BoxArrays, classes, case_ids) -> list[MatchedOrgan]:
    hit = np.flatnonzero(matching.gt_index >= 0)
    det_idx = matching.order[hit]
    gt_idx = matching.gt_index[hit]
    pred, true = dets.box_mm[det_idx], gts.box_mm[gt_idx]
    faces = pred - true
    centre = np.linalg.norm((pred[:, :3] + pred[:, 3:]) / 2 - (true[:, :3] + true[:, 3:]) / 2, axis=1)
    return [
        MatchedOrgan(
            case_ids[gts.case[g]], classes[gts.label[g]], float(dets.score[d]), float(iou), float(err), face
        )
        for d, g, iou, err, face in zip(det_idx, gt_idx, matching.iou[hit], centre, faces, strict=True)
    ]


def _add_errors(summary: dict, per_class: dict, matches: list[MatchedOrgan], classes) -> None:
    """Centre error (mean, median) and mean |face error| in mm, overall and per class (NaN: no match)."""
    centre = np.array([m.center_error_mm for m in matches])
    faces = np.array([np.abs(m.face_error_mm).mean() for m in matches])
    labels = np.array([m.label for m in matches])
    summary["center_error_mm"] = float(centre.mean()) if len(centre) else math.nan
    summary["center_error_mm_median"] = float(np.median(centre)) if len(centre) else math.nan
    summary["face_error_mm"] = float(faces.mean()) if len(faces) else math.nan
    for name in classes:
        sel = labels == name
        per_class[name]["num_matched"] = int(np.count_nonzero(sel))
        per_class[name]["center_error_mm"] = float(centre[sel].mean()) if sel.any() else math.nan
        per_class[name]["face_error_mm"] = float(faces[sel].mean()) if sel.any() else math.nan


def _list_values(values: Sequence[float], mode: Mode) -> np.ndarray:
    return np.array(values, dtype=np.float64) if mode == "monai" else np.round(np.array(values), 10)


def _index_of(thresholds: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(thresholds - value)))


def _indices(thresholds: np.ndarray, values: np.ndarray) -> list[int]:
    return [_index_of(thresholds, v) for v in values]


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
