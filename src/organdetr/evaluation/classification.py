"""Case-level classification metrics (e.g. BraTS grade LGG / HGG): accuracy, sensitivity, specificity,
balanced accuracy and ROC AUC per class.

Inputs: the true class name of each case and the predicted probability of every class (``organdetr
predict`` writes them as ``"case_label": {"label", "probability", "probabilities"}``). The predicted class
is the arg-max of the probabilities (ties: the first class).

* Per class (one vs rest over the cases): sensitivity = TP / (TP + FN), specificity = TN / (TN + FP),
  counted with MONAI's ``get_confusion_matrix`` / ``compute_confusion_matrix_metric``; AUC from MONAI's
  ``compute_roc_auc`` on that class's probability. A class no case has (or every case has) gets no AUC
  (``None``), its sensitivity (or specificity) is undefined (``None``).
* accuracy = correct / cases; balanced accuracy = mean sensitivity over the classes present in the truth
  (for two classes: (sensitivity + specificity) / 2 of either class).
* Cases without a prediction, or whose true class is unknown, are listed and left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from organdetr.runtime.atomic import write_figure
from organdetr.runtime.text import brief


@dataclass
class ClassificationResult:
    """Metrics of one evaluation; ``per_class[name]`` holds ``support``, ``sensitivity``, ``specificity``,
    ``auc``; ``confusion[t][p]`` counts cases of true class ``t`` predicted as ``p`` (class order)."""

    classes: list[str]
    cases: int
    accuracy: float
    balanced_accuracy: float
    per_class: dict[str, dict[str, float | int | None]]
    confusion: list[list[int]]
    missing: list[str] = field(default_factory=list)
    roc: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # name -> (fpr, tpr)

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "cases": self.cases,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "missing_or_unlabelled": self.missing,
        }

    def summary(self) -> dict[str, float]:
        """Flat scalars (``cls_accuracy``, ``cls_balanced_accuracy``, ``cls_AUC`` = mean AUC over classes)."""
        aucs = [v["auc"] for v in self.per_class.values() if v["auc"] is not None]
        return {
            "cls_accuracy": self.accuracy,
            "cls_balanced_accuracy": self.balanced_accuracy,
            "cls_AUC": float(np.mean(aucs)) if aucs else math.nan,
        }


def evaluate_classification(
    truth: Mapping[str, str | None],
    probabilities: Mapping[str, Mapping[str, float]],
    classes: Sequence[str],
) -> ClassificationResult:
    """Score ``probabilities`` (case id -> class name -> probability) against ``truth`` (case id -> name).

    ``classes`` fixes the class order. ``ValueError`` for a true class or a probability key not in
    ``classes`` (callers turn it into an ``InputError`` naming the file).
    """
    classes = list(classes)
    index = {name: i for i, name in enumerate(classes)}
    scored, missing = [], []
    for case_id in sorted(truth):
        name = truth[case_id]
        if name is None or case_id not in probabilities:
            missing.append(case_id)
            continue
        if name not in index:
            raise ValueError(f"case {brief(case_id)} has true class {brief(name)}, not one of {classes}")
        unknown = sorted(set(probabilities[case_id]) - set(classes))
        if unknown:
            raise ValueError(f"case {brief(case_id)}: probabilities for unknown classes {unknown}")
        scored.append((index[name], [float(probabilities[case_id].get(c, 0.0)) for c in classes]))
    n, k = len(scored), len(classes)
    if n == 0:
        return ClassificationResult(
            classes,
            0,
            math.nan,
            math.nan,
            {c: _empty() for c in classes},
            [[0] * k for _ in range(k)],
            missing,
        )
    y = np.asarray([t for t, _ in scored], dtype=np.int64)
    probs = np.asarray([p for _, p in scored], dtype=np.float64)
    pred = probs.argmax(axis=1)
    onehot_true = np.eye(k, dtype=np.float32)[y]
    onehot_pred = np.eye(k, dtype=np.float32)[pred]
    sens, spec = _confusion_metrics(onehot_pred, onehot_true)
    aucs = _aucs(probs, onehot_true)
    support = onehot_true.sum(axis=0).astype(int)
    per_class = {
        name: {
            "support": int(support[c]),
            "sensitivity": _finite(sens[c]),
            "specificity": _finite(spec[c]),
            "auc": _finite(aucs[c]),
        }
        for c, name in enumerate(classes)
    }
    present = [c for c in range(k) if support[c] > 0]
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    roc = {
        name: roc_curve(probs[:, c], onehot_true[:, c])
        for c, name in enumerate(classes)
        if 0 < support[c] < n
    }
    return ClassificationResult(
        classes=classes,
        cases=n,
        accuracy=float((pred == y).mean()),
        balanced_accuracy=float(np.mean([sens[c] for c in present])),
        per_class=per_class,
        confusion=confusion.tolist(),
        missing=missing,
        roc=roc,
    )


def _empty() -> dict:
    return {"support": 0, "sensitivity": None, "specificity": None, "auc": None}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _confusion_metrics(onehot_pred: np.ndarray, onehot_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sensitivity and specificity over the cases (MONAI confusion matrix; cases as 'voxels')."""
    from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix

    as_batch = lambda a: torch.from_numpy(a.T[None])  # [N, C] -> [1, C, N]  # noqa: E731
    matrix = get_confusion_matrix(as_batch(onehot_pred), as_batch(onehot_true), include_background=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sens = compute_confusion_matrix_metric("sensitivity", matrix)[0].numpy()
        spec = compute_confusion_matrix_metric("specificity", matrix)[0].numpy()
    return sens.astype(np.float64), spec.astype(np.float64)


def _aucs(probs: np.ndarray, onehot_true: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC (MONAI ``compute_roc_auc``); NaN where a class is absent or universal."""
    from monai.metrics import compute_roc_auc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns (and returns NaN) for a class with one outcome
        values = compute_roc_auc(torch.from_numpy(probs), torch.from_numpy(onehot_true), average="none")
    return np.asarray(values, dtype=np.float64).reshape(-1)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[list[float], list[float]]:
    """ROC points ``(false positive rates, true positive rates)``, one per distinct score threshold
    (descending), starting at (0, 0)."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(bool)
    last_of_threshold = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(positive)[last_of_threshold]
    fps = np.cumsum(~positive)[last_of_threshold]
    tpr = np.r_[0.0, tps / max(positive.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~positive).sum(), 1)]
    return fpr.tolist(), tpr.tolist()


def classification_markdown(result: ClassificationResult) -> str:
    """A markdown table: per class support / sensitivity / specificity / AUC, then accuracy and balance."""

    def fmt(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"

    lines = [
        f"Case classification: {result.cases} cases, accuracy {fmt(result.accuracy)}, "
        f"balanced accuracy {fmt(result.balanced_accuracy)}",
        "",
        "| class | cases | sensitivity | specificity | AUC |",
        "|---|---|---|---|---|",
    ]
    for name, v in result.per_class.items():
        rates = " | ".join(fmt(v[key]) for key in ("sensitivity", "specificity", "auc"))
        lines.append(f"| {name} | {v['support']} | {rates} |")
    return "\n".join(lines) + "\n"


def plot_classification(result: ClassificationResult, path: str | Path) -> Path:
    """``classification.png``: ROC curve per class (AUC in the legend) beside the confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_roc, ax_cm) = plt.subplots(1, 2, figsize=(9, 4))
    for name, (fpr, tpr) in result.roc.items():
        auc = result.per_class[name]["auc"]
        ax_roc.plot(fpr, tpr, marker="o", ms=3, label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)")
    ax_roc.set_title("ROC, one class vs the rest", fontsize=10)
    ax_roc.legend(fontsize=8, loc="lower right")
    matrix = np.asarray(result.confusion)
    ax_cm.imshow(matrix, cmap="Blues")
    for (t, p), count in np.ndenumerate(matrix):
        ax_cm.text(p, t, str(count), ha="center", va="center", fontsize=10)
    ticks = range(len(result.classes))
    ax_cm.set_xticks(ticks, result.classes, fontsize=8)
    ax_cm.set_yticks(ticks, result.classes, fontsize=8)
    ax_cm.set(xlabel="predicted", ylabel="true")
    ax_cm.set_title(f"confusion ({result.cases} cases, accuracy {result.accuracy:.3f})", fontsize=10)
    fig.tight_layout()
    return write_figure(fig, path, dpi=90, format="png")


__all__ = [
    "ClassificationResult",
    "classification_markdown",
    "evaluate_classification",
    "plot_classification",
    "roc_curve",
]
