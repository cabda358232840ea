"""Hand-computed cases for the COCO convention, MONAI-mode differences, errors and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from organdetr.evaluation import (
    NNDETECTION,
    Detection,
    GroundTruth,
    box_iou_3d,
    evaluate_detections,
)
from organdetr.runtime.errors import InputError

CUBE = np.array([0.0, 0.0, 0.0, 10.0, 10.0, 10.0])


def shifted(box: np.ndarray, offset) -> np.ndarray:
    return box + np.tile(np.asarray(offset, dtype=np.float64), 2)


def test_iou_values():
    a = np.array([CUBE, shifted(CUBE, (5, 0, 0)), shifted(CUBE, (20, 0, 0))])
    iou = box_iou_3d(CUBE, a)
    assert iou.shape == (1, 3)
    np.testing.assert_allclose(iou[0], [1.0, 500 / 1500, 0.0])
    empty = np.zeros(6)
    assert box_iou_3d(empty, empty)[0, 0] == 0.0  # no NaN for degenerate boxes


def test_perfect_detections_score_one_and_zero_error():
    gts = [
        GroundTruth(f"c{i}", name, shifted(CUBE, (i, 0, 0))) for i in range(3) for name in ("liver", "spleen")
    ]
    dets = [Detection(g.case_id, g.label, 0.9, g.box_mm.copy()) for g in gts]
    result = evaluate_detections(dets, gts, ["liver", "spleen"])
    for key in ("mAP", "AP50", "AP75", "mAR", "mAP_10_50", "mAR_10_50"):
        assert result.summary[key] == pytest.approx(1.0), key
    assert result.summary["center_error_mm"] == 0.0
    assert len(result.matches) == 6
    assert result.per_class["liver"]["num_gt"] == 3


def nine_of_ten():
    gts = [GroundTruth(f"c{i}", "liver", CUBE) for i in range(10)]
    dets = [Detection(f"c{i}", "liver", 0.9, CUBE) for i in range(9)]
    return dets, gts


def test_nine_of_ten_hits_recall_point_090_in_coco_mode_only():
    dets, gts = nine_of_ten()
    coco = evaluate_detections(dets, gts, ["liver"], mode="coco")
    monai = evaluate_detections(dets, gts, ["liver"], mode="monai")
    assert coco.summary["AP50"] == pytest.approx(91 / 101)  # recall points 0.00..0.90 at precision 1
    assert monai.summary["AP50"] == pytest.approx(90 / 101)  # float32 9/10 < 0.9: the 0.90 point is missed
    assert coco.summary["mAR"] == pytest.approx(0.9)


def test_iou_exactly_070_counts_at_070_in_coco_mode_only():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.5, np.array([0.0, 0.0, 0.0, 10.0, 10.0, 7.0]))]  # IoU 700/1000
    coco = evaluate_detections(dets, gts, ["liver"], mode="coco")
    monai = evaluate_detections(dets, gts, ["liver"], mode="monai")
    assert coco.summary["mAP"] == pytest.approx(5 / 10)  # 0.50, 0.55, 0.60, 0.65, 0.70
    assert monai.summary["mAP"] == pytest.approx(4 / 10)  # float32 IoU 0.6999999 misses 0.70
    assert coco.summary["AP75"] == 0.0


def test_class_absent_from_all_ground_truth():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.9, CUBE), Detection("c0", "spleen", 0.8, CUBE)]
    coco = evaluate_detections(dets, gts, ["liver", "spleen"], mode="coco")
    monai = evaluate_detections(dets, gts, ["liver", "spleen"], mode="monai")
    assert math.isnan(coco.per_class["spleen"]["AP"])
    assert coco.summary["mAP"] == 1.0  # spleen left out
    assert monai.per_class["spleen"]["AP"] == -1.0
    assert monai.summary["mAP"] == pytest.approx(0.0)  # (1 + -1) / 2
    assert coco.summary["mAR"] == monai.summary["mAR"] == 1.0
    assert coco.to_dict()["per_class"]["spleen"]["AP"] is None


def test_detection_in_case_without_that_organ_is_a_false_positive():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.5, CUBE), Detection("c1", "liver", 0.9, CUBE)]
    result = evaluate_detections(dets, gts, ["liver"], case_ids=["c0", "c1"])
    assert result.summary["AP50"] == pytest.approx(0.5)  # FP ranked first, TP second: precision 1/2


def test_max_detections_one_keeps_only_the_best_box_per_organ():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.9, shifted(CUBE, (50, 0, 0))), Detection("c0", "liver", 0.6, CUBE)]
    one = evaluate_detections(dets, gts, ["liver"], max_detections=1)
    hundred = evaluate_detections(dets, gts, ["liver"], max_detections=100)
    assert one.summary["AP50"] == 0.0 and one.summary["mAR"] == 0.0
    assert hundred.summary["AP50"] == pytest.approx(0.5) and hundred.summary["mAR"] == 1.0
    assert one.settings["max_detections"] == 1
    assert one.per_class["liver"]["num_det"] == 1 and hundred.per_class["liver"]["num_det"] == 2


def test_greedy_matching_gives_the_second_detection_the_other_box():
    a, b = CUBE, shifted(CUBE, (6, 0, 0))  # IoU(a, b) = 400 / 1600
    gts = [GroundTruth("c0", "rib", a), GroundTruth("c0", "rib", b)]
    dets = [Detection("c0", "rib", 0.9, shifted(CUBE, (1, 0, 0))), Detection("c0", "rib", 0.8, a)]
    result = evaluate_detections(dets, gts, ["rib"], max_detections=100)
    # det 1 takes a (IoU 900/1100); det 2 (a itself) can only take b: IoU 0.25 -> TP at 0.10..0.25 only
    assert result.summary["AP50"] == pytest.approx(51 / 101)  # recall 0.5 at precision 1, then nothing
    assert result.summary["AP10"] == pytest.approx(1.0)
    assert result.per_class["rib"]["num_matched"] == 2


def test_duplicate_detection_is_a_false_positive():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.9, CUBE), Detection("c0", "liver", 0.9, CUBE)]
    result = evaluate_detections(dets, gts, ["liver"], max_detections=100)
    assert result.summary["AP50"] == 1.0  # TP first: the envelope keeps precision 1 up to recall 1
    assert result.per_class["liver"]["num_matched"] == 1


def test_centre_and_face_errors_in_mm():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.9, shifted(CUBE, (3, 4, 0)))]
    result = evaluate_detections(dets, gts, ["liver"])
    assert result.summary["center_error_mm"] == pytest.approx(5.0)
    np.testing.assert_allclose(result.matches[0].face_error_mm, [3, 4, 0, 3, 4, 0])
    assert result.per_class["liver"]["face_error_mm"] == pytest.approx(14 / 6)


def test_no_detections_at_all_gives_zero():
    result = evaluate_detections([], [GroundTruth("c0", "liver", CUBE)], ["liver"])
    assert result.summary["mAP"] == 0.0 and result.summary["mAR"] == 0.0
    assert math.isnan(result.summary["center_error_mm"])


def test_custom_iou_range():
    gts = [GroundTruth("c0", "liver", CUBE)]
    dets = [Detection("c0", "liver", 0.5, np.array([0.0, 0.0, 0.0, 10.0, 10.0, 3.0]))]  # IoU 0.3
    result = evaluate_detections(dets, gts, ["liver"], iou_thresholds=NNDETECTION)
    assert result.summary["mAP"] == pytest.approx(5 / 9)  # 0.10 .. 0.30 of 0.10 .. 0.50
    assert result.summary["mAP"] == result.summary["mAP_10_50"]


@pytest.mark.parametrize(
    ("det", "message"),
    [
        (Detection("c0", "lung", 0.5, CUBE), "unknown organ 'lung'"),
        (Detection("c0", "liver", float("nan"), CUBE), "non-finite score"),
        (Detection("c0", "liver", 0.5, CUBE[[3, 4, 5, 0, 1, 2]]), "min > max"),
        (Detection("c0", "liver", 0.5, np.array([0, 0, 0, np.inf, 1, 1.0])), "non-finite box"),
        (Detection("c9", "liver", 0.5, CUBE), "not among the evaluated cases"),
    ],
)
def test_bad_detections_raise_input_error(det, message):
    with pytest.raises(InputError, match=message):
        evaluate_detections([det], [GroundTruth("c0", "liver", CUBE)], ["liver"], case_ids=["c0"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        evaluate_detections([], [], ["liver"], mode="voc")
    with pytest.raises(ValueError, match="max_detections"):
        evaluate_detections([], [], ["liver"], max_detections=0)
    with pytest.raises(InputError, match="duplicate case ids"):
        evaluate_detections([], [], ["liver"], case_ids=["a", "a"])
