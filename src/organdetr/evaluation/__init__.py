"""3D organ-detection metrics: COCO-style mAP / AP50 / AP75 / mAR per organ, nnDetection mAP@.10:.50,
centre and per-face errors in mm; segmentation metrics of label maps (Dice, NSD, HD95 in mm:
``evaluation.segmentation``).

Conventions (details, worked examples and the MONAI differences: docs/metrics.md)

* Boxes are LPS mm ``(x0, y0, z0, x1, y1, z1)``, ``min <= max``; IoU is the volume ratio of the
  continuous boxes (no ``+1``). Matching is per case and per organ class.
* Matching (pycocotools / nnDetection): detections by descending score (ties: stable, input order)
  greedily take the unmatched ground-truth box of highest IoU with ``IoU >= t``. Only the
  ``max_detections`` best detections per case and class count - **1 by default** (the Organ-DETR
  protocol: one box per organ per scan), 100 is the COCO / MONAI default.
* Accumulation: per class, detections of all cases ranked by score (stable: ties keep case order);
  precision is made monotone (the "envelope") and read at the 101 recall points 0, .01, ..., 1 at the
  first rank whose recall reaches the point (COCO's ``searchsorted(side="left")``); a point never
  reached has precision 0. AP = mean over the 101 points; mAP = mean over IoU thresholds and classes.
* Classes absent from a scan's ground truth: their detections in that scan are false positives, as in
  COCO. A class absent from *all* ground truth has no AP: COCO mode leaves it out of every mean (its
  per-class AP is NaN / ``null``); MONAI mode gives it -1 and **includes** the -1 in mAP (MONAI and
  nnDetection behaviour). mAR skips such classes in both modes.
* ``mode="coco"`` (default) works in exact arithmetic: IoU in float64 compared with the decimal
  thresholds 0.50, 0.55, ... (an IoU equal to a threshold up to 1e-12 reaches it; exactly 0.7 counts at
  0.70), recall points compared as integers (9 of 10 found reaches the 0.90 point).
* ``mode="monai"`` reproduces ``monai.apps.detection.metrics`` (``matching_batch`` with ``box_iou`` +
  ``COCOMetric``) to 1e-6: float32 IoU (exactly 0.7 becomes 0.6999999 and misses 0.70), float32 recall
  (9/10 misses the 0.90 point), ``np.linspace`` thresholds, -1 for absent classes inside mAP, and mAR
  averaged over the union of ``iou_list`` and the range (for mAR_10_50 that adds IoU 0.75, as MONAI's
  default ``COCOMetric`` does).
* mAP, AP50, AP75 and mAR use ``iou_thresholds`` (COCO 0.50:0.05:0.95); mAP_10_50, mAR_10_50, AP10 use
  nnDetection's 0.10:0.05:0.50. mAR is taken at the same ``max_detections`` as everything else.
* Centre error (mm, Euclidean distance of box centres) and per-face errors (mm) are reported for every
  ground-truth organ matched at IoU >= 0.10 by the same greedy matching.
"""

from organdetr.core.boxes.iou import box_iou_3d, box_iou_3d_monai
from organdetr.evaluation.coco import (
    COCO,
    NNDETECTION,
    BoxArrays,
    Detection,
    EvaluationResult,
    GroundTruth,
    IoURange,
    MatchedOrgan,
    evaluate_arrays,
    evaluate_detections,
)
from organdetr.evaluation.io import GroundTruthSet, PredictionSet, load_ground_truth, load_predictions
from organdetr.evaluation.report import describe, print_table, write_report
from organdetr.evaluation.segmentation import SegmentationResult, evaluate_segmentation

__all__ = [
    "COCO",
    "NNDETECTION",
    "BoxArrays",
    "Detection",
    "EvaluationResult",
    "GroundTruth",
    "GroundTruthSet",
    "IoURange",
    "MatchedOrgan",
    "PredictionSet",
    "SegmentationResult",
    "box_iou_3d",
    "box_iou_3d_monai",
    "describe",
    "evaluate_arrays",
    "evaluate_detections",
    "evaluate_segmentation",
    "load_ground_truth",
    "load_predictions",
    "print_table",
    "write_report",
]
