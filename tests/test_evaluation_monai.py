"""MONAI mode agrees with monai.apps.detection.metrics (matching_batch + COCOMetric) to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest

from organdetr.evaluation import Detection, GroundTruth, evaluate_detections

coco_mod = pytest.importorskip("monai.apps.detection.metrics.coco")
matching_mod = pytest.importorskip("monai.apps.detection.metrics.matching")
box_utils = pytest.importorskip("monai.data.box_utils")

CLASSES = ["liver", "spleen", "kidney_left", "aorta", "never_seen"]  # the last has no ground truth


def random_box(rng: np.random.Generator) -> np.ndarray:
    lo = rng.uniform(-100, 100, 3)
    return np.concatenate([lo, lo + rng.uniform(5, 60, 3)])


def jitter(rng: np.random.Generator, box: np.ndarray, scale: float) -> np.ndarray:
    size = box[3:] - box[:3]
    lo = box[:3] + rng.normal(0, scale, 3) * size
    hi = np.maximum(box[3:] + rng.normal(0, scale, 3) * size, lo)
    return np.concatenate([lo, hi])


def random_dataset(seed: int):
    """Cases with missing organs, 2-box organs, duplicate and tied detections, empty predictions."""
    rng = np.random.default_rng(seed)
    case_ids = [f"case_{i:03d}" for i in range(int(rng.integers(3, 12)))]
    dets, gts = [], []
    for case in case_ids:
        no_predictions = rng.random() < 0.15
        for label in CLASSES[:-1]:
            boxes = [random_box(rng) for _ in range(int(rng.choice([0, 1, 1, 1, 2])))]
            gts += [GroundTruth(case, label, b) for b in boxes]
            if no_predictions:
                continue
            for _ in range(int(rng.integers(0, 5))):
                kind = rng.random()
                if boxes and kind < 0.6:
                    box = jitter(rng, boxes[int(rng.integers(len(boxes)))], rng.choice([0.02, 0.1, 0.3]))
                else:
                    box = random_box(rng)
                score = float(rng.choice([0.3, 0.5, 0.9])) if rng.random() < 0.3 else float(rng.random())
                dets.append(Detection(case, label, score, box))
                if rng.random() < 0.15:  # exact duplicate
                    dets.append(Detection(case, label, score, box.copy()))
        if rng.random() < 0.2:
            dets.append(Detection(case, "never_seen", float(rng.random()), random_box(rng)))
    return dets, gts, case_ids


def monai_reference(dets, gts, case_ids, max_det: int) -> dict[str, float]:
    index = {name: i for i, name in enumerate(CLASSES)}

    def per_case(items, case):
        mine = [x for x in items if x.case_id == case]
        boxes = np.array([x.box_mm for x in mine], dtype=np.float64).reshape(-1, 6)
        labels = np.array([index[x.label] for x in mine], dtype=np.int64)
        scores = np.array([getattr(x, "score", 0.0) for x in mine], dtype=np.float64)
        return boxes, labels, scores

    pred = [per_case(dets, c) for c in case_ids]
    true = [per_case(gts, c) for c in case_ids]
    out = {}
    configs = {
        "coco": dict(iou_list=(0.5, 0.75), iou_range=(0.5, 0.95, 0.05)),
        "nndet": dict(iou_list=(0.1, 0.5, 0.75), iou_range=(0.1, 0.5, 0.05)),
    }
    for name, cfg in configs.items():
        metric = coco_mod.COCOMetric(CLASSES, max_detection=(max_det,), verbose=False, **cfg)
        results = matching_mod.matching_batch(
            iou_fn=box_utils.box_iou,
            iou_thresholds=metric.iou_thresholds,
            pred_boxes=[p[0] for p in pred],
            pred_classes=[p[1] for p in pred],
            pred_scores=[p[2] for p in pred],
            gt_boxes=[t[0] for t in true],
            gt_classes=[t[1] for t in true],
            max_detections=max_det,
        )
        values, _ = metric(results)
        out.update({f"{name}/{k}": v for k, v in values.items()})
    return out


def expected_pairs(result, reference, max_det: int):
    """(ours, MONAI's) for every summary and per-class value."""
    m = f"MaxDet_{max_det}"
    keys = {
        "mAP": f"coco/mAP_IoU_0.50_0.95_0.05_{m}",
        "AP50": f"coco/AP_IoU_0.50_{m}",
        "AP75": f"coco/AP_IoU_0.75_{m}",
        "mAR": f"coco/mAR_IoU_0.50_0.95_0.05_{m}",
        "mAP_10_50": f"nndet/mAP_IoU_0.10_0.50_0.05_{m}",
        "mAR_10_50": f"nndet/mAR_IoU_0.10_0.50_0.05_{m}",
        "AP10": f"nndet/AP_IoU_0.10_{m}",
    }
    per_class = {
        "AP": "mAP",
        "AP50": "AP50",
        "AP75": "AP75",
        "AR": "mAR",
        "AP_10_50": "mAP_10_50",
        "AR_10_50": "mAR_10_50",
    }
    pairs = [(k, result.summary[k], reference[v]) for k, v in keys.items()]
    for name in CLASSES:
        for ours, summary_key in per_class.items():
            group, key = keys[summary_key].split("/")
            pairs.append((f"{name}/{ours}", result.per_class[name][ours], reference[f"{group}/{name}_{key}"]))
    return pairs


@pytest.mark.parametrize("max_det", [1, 100])
def test_monai_mode_matches_monai_on_random_datasets(max_det):
    checked = 0
    for seed in range(30):
        dets, gts, case_ids = random_dataset(seed)
        result = evaluate_detections(
            dets, gts, CLASSES, max_detections=max_det, mode="monai", case_ids=case_ids
        )
        reference = monai_reference(dets, gts, case_ids, max_det)
        for key, ours, theirs in expected_pairs(result, reference, max_det):
            assert ours == pytest.approx(theirs, abs=1e-6), f"seed {seed} max_det {max_det}: {key}"
            checked += 1
    assert checked == 30 * (7 + 6 * len(CLASSES))


def test_monai_mode_empty_predictions_and_absent_class_minus_one():
    _, gts, case_ids = random_dataset(3)
    result = evaluate_detections([], gts, CLASSES, mode="monai", case_ids=case_ids)
    reference = monai_reference([], gts, case_ids, 1)
    for key, ours, theirs in expected_pairs(result, reference, 1):
        assert ours == pytest.approx(theirs, abs=1e-6), key
    assert result.per_class["never_seen"]["AP"] == -1.0
    assert result.summary["mAP"] == pytest.approx(-1 / len(CLASSES))  # four zeros and one -1


def test_monai_iou_is_bit_identical():
    rng = np.random.default_rng(0)
    a = np.stack([random_box(rng) for _ in range(20)])
    b = np.stack([jitter(rng, x, 0.1) for x in a])
    from organdetr.evaluation import box_iou_3d_monai

    assert np.array_equal(box_iou_3d_monai(a, b), box_utils.box_iou(a, b))
