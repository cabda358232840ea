"""Evaluation speed: organdetr.evaluation vs MONAI's matching_batch + COCOMetric, same process, same data.

    .venv/bin/python benchmarks/bench_evaluation.py                 # 200 cases x 15 organs x 100 preds
    .venv/bin/python benchmarks/bench_evaluation.py --scale         # + 1,000 cases x 104 organs

Both sides compute the same numbers: mAP/AP50/AP75/mAR over IoU .50:.05:.95 and mAP/mAR over
.10:.05:.50 (MONAI needs two COCOMetric configurations for that). Ours runs in ``mode="monai"`` so the
numbers can be compared for equality, and in the default ``mode="coco"``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from organdetr.evaluation import BoxArrays, Detection, GroundTruth, evaluate_arrays, evaluate_detections


def make_data(num_cases: int, num_classes: int, preds_per_organ: int, seed: int = 0):
    """Per case: every organ has one GT box (10% missing) and ``preds_per_organ`` jittered/random boxes."""
    rng = np.random.default_rng(seed)
    n_gt = num_cases * num_classes
    gt_case = np.repeat(np.arange(num_cases), num_classes)
    gt_label = np.tile(np.arange(num_classes), num_cases)
    lo = rng.uniform(-200, 200, (n_gt, 3))
    gt_box = np.concatenate([lo, lo + rng.uniform(10, 120, (n_gt, 3))], axis=1)
    keep = rng.random(n_gt) > 0.1
    n_det = n_gt * preds_per_organ
    det_case = np.repeat(gt_case, preds_per_organ)
    det_label = np.repeat(gt_label, preds_per_organ)
    base = np.repeat(gt_box, preds_per_organ, axis=0)
    size = base[:, 3:] - base[:, :3]
    noise = rng.normal(0, 0.15, (n_det, 6)) * np.concatenate([size, size], axis=1)
    det_box = base + noise
    det_box[:, 3:] = np.maximum(det_box[:, 3:], det_box[:, :3])
    det_score = rng.random(n_det)
    gts = BoxArrays(gt_case[keep], gt_label[keep], gt_box[keep])
    dets = BoxArrays(det_case, det_label, det_box, det_score)
    return dets, gts


def to_objects(dets: BoxArrays, gts: BoxArrays, case_ids, classes):
    d = [
        Detection(case_ids[c], classes[k], float(s), b)
        for c, k, s, b in zip(dets.case, dets.label, dets.score, dets.box_mm, strict=True)
    ]
    g = [
        GroundTruth(case_ids[c], classes[k], b)
        for c, k, b in zip(gts.case, gts.label, gts.box_mm, strict=True)
    ]
    return d, g


def run_monai(dets: BoxArrays, gts: BoxArrays, num_cases: int, classes, max_det: int) -> dict[str, float]:
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    def split(arrays: BoxArrays, c: int):
        sel = arrays.case == c
        return arrays.box_mm[sel], arrays.label[sel], None if arrays.score is None else arrays.score[sel]

    pred = [split(dets, c) for c in range(num_cases)]
    true = [split(gts, c) for c in range(num_cases)]
    out = {}
    for iou_list, iou_range in (((0.5, 0.75), (0.5, 0.95, 0.05)), ((0.1, 0.5, 0.75), (0.1, 0.5, 0.05))):
        metric = COCOMetric(
            classes, iou_list=iou_list, iou_range=iou_range, max_detection=(max_det,), verbose=False
        )
        results = matching_batch(
            box_iou,
            metric.iou_thresholds,
            [p[0] for p in pred],
            [p[1] for p in pred],
            [p[2] for p in pred],
            [t[0] for t in true],
            [t[1] for t in true],
            max_detections=max_det,
        )
        out.update(metric(results)[0])
    m = f"MaxDet_{max_det}"
    return {
        "mAP": out[f"mAP_IoU_0.50_0.95_0.05_{m}"],
        "AP50": out[f"AP_IoU_0.50_{m}"],
        "AP75": out[f"AP_IoU_0.75_{m}"],
        "mAR": out[f"mAR_IoU_0.50_0.95_0.05_{m}"],
        "mAP_10_50": out[f"mAP_IoU_0.10_0.50_0.05_{m}"],
        "mAR_10_50": out[f"mAR_IoU_0.10_0.50_0.05_{m}"],
    }


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def compare(num_cases: int, num_classes: int, preds: int, max_det: int, with_monai: bool) -> None:
    classes = [f"organ_{k:03d}" for k in range(num_classes)]
    case_ids = [f"case_{c:04d}" for c in range(num_cases)]
    dets, gts = make_data(num_cases, num_classes, preds)
    print(
        f"\n{num_cases} cases x {num_classes} organs x {preds} predictions ({len(dets.case):,} boxes), "
        f"max_detections={max_det}"
    )
    d_obj, g_obj = to_objects(dets, gts, case_ids, classes)
    ours, t_obj = timed(
        evaluate_detections, d_obj, g_obj, classes, max_detections=max_det, mode="monai", case_ids=case_ids
    )
    _, t_arr = timed(evaluate_arrays, dets, gts, classes, case_ids, max_detections=max_det, mode="monai")
    coco, t_coco = timed(evaluate_arrays, dets, gts, classes, case_ids, max_detections=max_det, mode="coco")
    print(f"  organdetr monai mode, Detection objects : {t_obj:8.3f} s")
    print(f"  organdetr monai mode, arrays            : {t_arr:8.3f} s")
    print(f"  organdetr coco mode, arrays             : {t_coco:8.3f} s   mAP {coco.summary['mAP']:.6f}")
    if not with_monai:
        return
    theirs, t_monai = timed(run_monai, dets, gts, num_cases, classes, max_det)
    diff = max(abs(ours.summary[k] - v) for k, v in theirs.items())
    print(f"  MONAI matching_batch + COCOMetric (x2)  : {t_monai:8.3f} s")
    print(f"  speed-up (objects / arrays)             : {t_monai / t_obj:8.1f}x / {t_monai / t_arr:.1f}x")
    print(f"  max |ours - MONAI| over {sorted(theirs)}: {diff:.2e}  (mAP {theirs['mAP']:.6f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="store_true", help="also 1,000 cases x 104 organs")
    parser.add_argument("--scale-monai", action="store_true", help="run MONAI at scale too (slow)")
    args = parser.parse_args()
    compare(200, 15, 100, 100, True)
    compare(200, 15, 100, 1, True)
    if args.scale:
        compare(1000, 104, 1, 1, args.scale_monai)
        compare(1000, 104, 10, 100, args.scale_monai)


if __name__ == "__main__":
    main()
