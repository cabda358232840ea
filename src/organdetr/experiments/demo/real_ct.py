"""The demo's real CT: find the shared data pack, predict its scans with the phantom-trained model and
compare the boxes with TotalSegmentator's labels where the pack has them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import organdetr
from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.geometry import axis_codes
from organdetr.datasets.labels import load_class_map
from organdetr.evaluation import Detection, EvaluationResult, GroundTruth, evaluate_detections
from organdetr.inference.overlay import render_overlay
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput, case_id_of
from organdetr.io.images import read_image, read_label_map, read_label_table
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

SHARED_DATA_ENV = "ORGANDETR_SHARED_DATA"
REAL_CT_CANDIDATES = ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_ct_dicom")
REAL_CT_LABELS = {
    "totalsegmentator/example_ct.nii.gz": "totalsegmentator/example_seg_fast_force_split.nii.gz",
    "totalsegmentator/example_ct_dicom": "totalsegmentator/example_seg_dicom.nii.gz",
    "totalsegmentator/example_mr_sm.nii.gz": "totalsegmentator/example_seg_mr.nii.gz",
}
"""Scan of the data pack -> TotalSegmentator's label map of it (pseudo ground truth: a model's output, not a
manual annotation); the map's header table names its structures (``total`` or ``total_mr``)."""


def find_shared_data(explicit: Path | None = None) -> Path | None:
    """The real-data pack: ``explicit``, ``$ORGANDETR_SHARED_DATA``, ``./../shared/data``, ``./shared/data``,
    or ``shared/data`` beside the source checkout; ``None`` when none holds a real CT.

    An ``explicit`` folder is the only one looked at: InputError when it is missing or holds no real CT.
    """
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_dir():
            raise InputError(explicit, "--shared-data folder not found")
        if not any((explicit / rel).exists() for rel in REAL_CT_CANDIDATES):
            raise InputError(explicit, f"--shared-data folder holds none of {', '.join(REAL_CT_CANDIDATES)}")
        return explicit.resolve()
    candidates = []
    if os.environ.get(SHARED_DATA_ENV):
        candidates.append(Path(os.environ[SHARED_DATA_ENV]))
    cwd = Path.cwd()
    candidates += [cwd / ".." / "shared" / "data", cwd / "shared" / "data"]
    package = Path(organdetr.__file__).resolve()
    candidates += [parent / "shared" / "data" for parent in package.parents[2:4]]
    for folder in candidates:
        if any((folder / rel).exists() for rel in REAL_CT_CANDIDATES):
            return folder.resolve()
    return None


def predict_real_ct(cfg, run_dir: Path, out_dir: Path, classes: dict[int, str], echo) -> list[dict]:
    """Predict the real CT scans of the shared data pack (skipped with a message when absent) with the
    checkpoint in ``run_dir`` (``cfg``: the ``DemoConfig``); one dict per scan predicted."""
    shared = find_shared_data(cfg.shared_data)
    if shared is None:
        echo(
            "      skipped: no real CT found "
            f"(looked in ../shared/data, ./shared/data and ${SHARED_DATA_ENV})"
        )
        return []
    scans = [
        ScanInput(shared / rel, case_id_of(shared / rel))
        for rel in REAL_CT_CANDIDATES
        if (shared / rel).exists()
    ]
    predictor = Predictor.from_checkpoint(run_dir, "cpu")
    # threshold 0: every organ's best box, as the AP against TotalSegmentator's boxes needs (the mAP protocol)
    summary = predict_scans(
        predictor, scans, out_dir, overlay=False, progress=cfg.progress, score_threshold=0.0
    )
    results = []
    for scan in scans:
        if scan.case_id not in summary.done:
            continue
        prediction = read_json(out_dir / f"{scan.case_id}.json")
        truth = real_scan_truth(shared, scan.path, set(classes.values()))
        volume = read_image(scan.path)
        kind = "DICOM series" if scan.path.is_dir() else "NIfTI"
        title = f"real CT {scan.path.name} ({kind}): phantom-trained model"
        render_overlay(
            volume, prediction["detections"], out_dir / f"{scan.case_id}.png", ground_truth=truth, title=title
        )
        results.append(
            {
                "name": scan.case_id,
                "path": str(scan.path),
                "prediction": prediction,
                "truth": truth,
                "size": list(volume.geometry.size),
                "spacing": list(volume.geometry.spacing),
                "orientation": axis_codes(volume.geometry),
                "versus_truth": _versus_truth(scan.case_id, prediction["detections"], truth),
            }
        )
    for path, reason in summary.failed:
        echo(f"      could not predict {path}: {reason}")
    return results


def score_versus_truth(case_id: str, detections: list[dict], truth: list[dict]) -> EvaluationResult:
    """COCO-style scores (1 box per organ) of a prediction JSON's ``detections`` against ``truth``
    (:func:`real_scan_truth`), over the organs the truth has."""
    names = sorted({t["label"] for t in truth})
    dets = [Detection(case_id, d["label"], float(d["score"]), np.asarray(d["box_mm"])) for d in detections
            if d["label"] in names]  # fmt: skip
    gts = [GroundTruth(case_id, t["label"], np.asarray(t["box_mm"])) for t in truth]
    return evaluate_detections(dets, gts, names, max_detections=1)


def _versus_truth(case_id: str, detections: list[dict], truth: list[dict]) -> str | None:
    """One honest sentence comparing the boxes with TotalSegmentator's, for the organs both have."""
    if not truth:
        return None
    names = sorted({t["label"] for t in truth})
    summary = score_versus_truth(case_id, detections, truth).summary
    centre = summary.get("center_error_mm_median")
    centre_text = (
        f"{centre:.0f} mm"
        if isinstance(centre, float) and np.isfinite(centre)
        else "n/a (no box at IoU >= 0.1)"
    )
    ap10, ap50 = summary.get("AP10", float("nan")), summary.get("AP50", float("nan"))
    return (
        f"Against TotalSegmentator's boxes for {', '.join(names)}: AP10 {ap10:.2f}, AP50 {ap50:.2f}, "
        f"median centre error {centre_text} (one scan: a sanity check of the geometry, not an accuracy "
        "figure)."
    )


def real_scan_truth(shared: Path, scan_path: Path, names: set[str]) -> list[dict]:
    """TotalSegmentator boxes (``{"label", "box_mm"}``) of the organs in ``names`` that its label map of the
    pack's scan ``scan_path`` holds, or ``[]`` (no label map, or none of those organs)."""
    rel = next((r for r in REAL_CT_LABELS if shared / r == Path(scan_path)), None)
    if rel is None or not (shared / REAL_CT_LABELS[rel]).is_file():
        return []
    try:
        labels = read_label_map(shared / REAL_CT_LABELS[rel])
        ts_classes = read_label_table(shared / REAL_CT_LABELS[rel]) or load_class_map("totalsegmentator")
        present = {i: n for i, n in ts_classes.items() if n in names}
        boxes = boxes_from_labels(
            np.where(np.isin(labels.array, list(present)), labels.array, 0), labels.geometry, present
        )
    except (InputError, ImportError, KeyError, ValueError):
        return []
    return [{"label": b.name, "box_mm": [float(v) for v in b.box_mm]} for b in boxes]


__all__ = [
    "REAL_CT_CANDIDATES",
    "REAL_CT_LABELS",
    "SHARED_DATA_ENV",
    "find_shared_data",
    "predict_real_ct",
    "real_scan_truth",
    "score_versus_truth",
]
