"""Case-level classification metrics against hand counts and a direct AUC."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from organdetr.evaluation.classification import evaluate_classification, roc_curve

CLASSES = ["LGG", "HGG"]


def probs(p_hgg: float) -> dict[str, float]:
    return {"LGG": 1 - p_hgg, "HGG": p_hgg}


def mann_whitney_auc(positive_scores, negative_scores) -> float:
    pairs = list(itertools.product(positive_scores, negative_scores))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_binary_grade_metrics_match_hand_counts():
    truth = {"a": "HGG", "b": "HGG", "c": "HGG", "d": "LGG", "e": "LGG", "f": None}
    scores = {"a": 0.9, "b": 0.6, "c": 0.4, "d": 0.45, "e": 0.2, "g": 0.7}
    result = evaluate_classification(truth, {k: probs(v) for k, v in scores.items()}, CLASSES)
    # predicted HGG: a, b; LGG: c, d, e.  HGG: TP 2, FN 1; LGG: TP 2, FP 1 (c)
    assert result.cases == 5 and result.missing == ["f"]
    assert result.accuracy == pytest.approx(4 / 5)
    hgg, lgg = result.per_class["HGG"], result.per_class["LGG"]
    assert hgg["sensitivity"] == pytest.approx(2 / 3) and hgg["specificity"] == pytest.approx(1.0)
    assert lgg["sensitivity"] == pytest.approx(1.0) and lgg["specificity"] == pytest.approx(2 / 3)
    assert result.balanced_accuracy == pytest.approx((2 / 3 + 1.0) / 2)
    expected_auc = mann_whitney_auc([0.9, 0.6, 0.4], [0.45, 0.2])
    assert hgg["auc"] == pytest.approx(expected_auc) and lgg["auc"] == pytest.approx(expected_auc)
    assert result.confusion == [[2, 0], [1, 2]]
    assert result.summary()["cls_AUC"] == pytest.approx(expected_auc)


def test_three_classes_one_absent_and_ties():
    classes = ["a", "b", "c"]
    truth = {"1": "a", "2": "a", "3": "b"}
    predictions = {
        "1": {"a": 0.5, "b": 0.5, "c": 0.0},  # tie: the first class wins
        "2": {"a": 0.2, "b": 0.7, "c": 0.1},
        "3": {"a": 0.1, "b": 0.8, "c": 0.1},
    }
    result = evaluate_classification(truth, predictions, classes)
    assert result.confusion == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert result.per_class["c"]["auc"] is None and result.per_class["c"]["sensitivity"] is None
    assert result.balanced_accuracy == pytest.approx((0.5 + 1.0) / 2)  # classes present in the truth only
    assert result.per_class["a"]["auc"] == pytest.approx(mann_whitney_auc([0.5, 0.2], [0.1]))


def test_nothing_to_score_and_unknown_classes():
    empty = evaluate_classification({"a": "HGG"}, {}, CLASSES)
    assert empty.cases == 0 and math.isnan(empty.accuracy) and empty.missing == ["a"]
    with pytest.raises(ValueError, match="unknown classes"):
        evaluate_classification({"a": "HGG"}, {"a": {"HGG": 1.0, "GBM": 0.0}}, CLASSES)
    with pytest.raises(ValueError, match="true class"):
        evaluate_classification({"a": "GBM"}, {"a": probs(0.5)}, CLASSES)


def test_roc_curve_points():
    fpr, tpr = roc_curve(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0]))
    assert fpr == [0.0, 0.0, 0.5, 1.0] and tpr == [0.0, 0.5, 1.0, 1.0]
