"""The demo's held-out evaluation: predict the held-out raw scans with every trained model, score them and
the image-blind priors against the boxes of their label maps, the scores given to absent organs, and the
loss-curve picture of a run."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.datasets.nnunet import image_path, label_path
from organdetr.evaluation import Detection, GroundTruth, evaluate_detections
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput
from organdetr.io.images import read_label_map
from organdetr.models.baselines.prior import fit_box_prior, prior_detections
from organdetr.preprocessing.cache import load_case
from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

PRIOR_ROWS = {"prior (mean box, mm)": "mm", "prior (mean box, field of view)": "fov"}
"""Report row name -> :mod:`organdetr.models.baselines.prior` kind."""


def _ground_truth_boxes(
    dataset_root: Path, case_ids: Sequence[str], classes: dict[int, str]
) -> dict[str, list[dict]]:
    """Per case: ``[{label, box_mm}]`` from its label map on the original scan."""
    boxes = {}
    for case_id in case_ids:
        path = label_path(dataset_root, case_id)
        labels = read_label_map(path)
        organ_boxes = boxes_from_labels(labels.array, labels.geometry, classes, path=path)
        boxes[case_id] = [{"label": b.name, "box_mm": [float(v) for v in b.box_mm]} for b in organ_boxes]
    return boxes


def evaluate_held_out(cfg, runs, dataset_root, cache_dir, train_ids, test_ids, classes, out):
    """Predict the held-out raw scans with every trained model and score them, and the priors, against
    the boxes of their label maps -> ``({row name: EvaluationResult}, held-out data of the detector)``."""
    names = list(classes.values())
    truth = _ground_truth_boxes(dataset_root, test_ids, classes)
    ground_truth = [
        GroundTruth(c, g["label"], np.asarray(g["box_mm"], dtype=np.float64))
        for c in test_ids
        for g in truth[c]
    ]
    scans = [ScanInput(Path(image_path(dataset_root, c)), c) for c in test_ids]
    evaluations, predictions = {}, {}
    for name, run_dir in runs.items():
        pred_dir = out / ("predictions" if name == "Organ-DETR" else f"predictions_{name}")
        # score threshold 0: mAP ranks every organ's best box (the paper's protocol), none dropped
        summary = predict_scans(Predictor.from_checkpoint(run_dir, "cpu"), scans, pred_dir, overlay=False,
                                progress=cfg.progress, score_threshold=0.0)  # fmt: skip
        if summary.failed:
            raise InputError(summary.failed[0][0], f"prediction failed: {summary.failed[0][1]}")
        predictions[name] = {c: read_json(pred_dir / f"{c}.json") for c in test_ids}
        detections = [
            Detection(c, d["label"], float(d["score"]), np.asarray(d["box_mm"], dtype=np.float64))
            for c in test_ids
            for d in predictions[name][c]["detections"]
        ]
        evaluations[name] = evaluate_detections(
            detections, ground_truth, names, max_detections=1, mode="coco"
        )
    prior = fit_box_prior(load_case(cache_dir, c, mmap=True)[2] for c in train_ids)
    records = [load_case(cache_dir, c, mmap=True)[2] for c in test_ids]
    for row, kind in PRIOR_ROWS.items():
        evaluations[row] = evaluate_detections(
            prior_detections(prior, records, kind), ground_truth, names, max_detections=1, mode="coco"
        )
    held_out = {
        "predictions": predictions["Organ-DETR"],
        "truth": truth,
        "scans": {c: s.path for c, s in zip(test_ids, scans, strict=True)},
        "absent_scores": _absent_scores(predictions["Organ-DETR"], truth),
    }
    return evaluations, held_out


def _absent_scores(predictions: dict[str, dict], truth: dict[str, list[dict]]) -> dict[str, float]:
    """Mean and max score the model gives organs present in a held-out scan, and organs absent from it."""
    present, absent = [], []
    for case_id, prediction in predictions.items():
        here = {g["label"] for g in truth[case_id]}
        for d in prediction["detections"]:
            (present if d["label"] in here else absent).append(float(d["score"]))
    stats = {"present_mean": float(np.mean(present)) if present else float("nan"),
             "present_min": float(np.min(present)) if present else float("nan"),
             "absent_mean": float(np.mean(absent)) if absent else float("nan"),
             "absent_max": float(np.max(absent)) if absent else float("nan"),
             "absent_count": len(absent), "present_count": len(present)}  # fmt: skip
    if present and absent:  # how often a present organ outscores an absent one (AUC)
        p, a = np.asarray(present)[:, None], np.asarray(absent)[None, :]
        stats["auc"] = float(((p > a) + 0.5 * (p == a)).mean())
    return stats


def plot_loss_curve(path: Path, run_dir: Path) -> bool:
    """Loss terms against the optimizer step from ``RUN/train_log.csv``; False when there is no log."""
    csv_path = run_dir / "train_log.csv"
    if not csv_path.is_file():
        return False
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "step" not in rows[0]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [float(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    # the total and the last decoder layer's terms (auxiliary-layer terms "loss_x_<n>" would crowd the plot)
    keys = [
        k for k in rows[0] if k == "loss" or (k.startswith("loss_") and not k.rsplit("_", 1)[-1].isdigit())
    ]
    for key in keys:
        values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
        ax.plot(steps, values, label=key, linewidth=2.2 if key == "loss" else 1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weighted loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=100, format="png")
    return True


__all__ = ["PRIOR_ROWS", "evaluate_held_out", "plot_loss_curve"]
