"""nnDetection predictions out: ``organdetr predict --format nndetection``.

Predictions are written as nnDetection writes its own, ``OUT/<case>_boxes.pkl``: a pickled dict with
``pred_boxes [N, 6]``, ``pred_scores [N]``, ``pred_labels [N]`` (class = label id - 1), ``restore``,
``original_size_of_raw_data`` and ``itk_origin`` / ``itk_spacing`` / ``itk_direction``, which its tools
(``nndet_boxes2nii``, evaluation) read. nnDetection's boxes index the array that SimpleITK's
``GetArrayFromImage`` returns, axes ``(k, j, i)``, ordered ``(x1, y1, x2, y2, z1, z2)`` and spanning ``[min -
1, max + 1]`` of the object's voxels (its ``instances_to_boxes_np``); the toolkit's half-open ``(i0, j0, k0,
i1, j1, k1)`` box maps onto that exactly (:func:`organdetr.core.boxes.modes.to_nndetection_boxes`).
The toolkit writes these pickles but never reads one (pickles run code when loaded). Reading nnDetection's
raw data layout (``organdetr convert nndetection TASK DST``) is :mod:`organdetr.datasets.nndetection`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from organdetr.core.boxes.modes import to_nndetection_boxes
from organdetr.runtime.atomic import write_bytes
from organdetr.runtime.errors import InputError


def prediction_boxes(prediction: Mapping) -> dict:
    """nnDetection's per-case box dict for a prediction JSON (needs the scan geometry, ``original``)."""
    original = prediction.get("original")
    if not original:
        raise InputError(None, f"prediction {prediction.get('case_id')}: no scan geometry ('original')")
    detections = prediction.get("detections", [])
    boxes = to_nndetection_boxes(np.asarray([d["box_voxel"] for d in detections]).reshape(-1, 6))
    return {
        "pred_boxes": boxes.astype(np.float32),
        "pred_scores": np.asarray([d["score"] for d in detections], dtype=np.float32),
        "pred_labels": np.asarray([int(d["label_id"]) - 1 for d in detections], dtype=np.int64),
        "restore": True,
        "original_size_of_raw_data": np.asarray(original["size"][::-1], dtype=np.int64),
        "itk_origin": tuple(float(v) for v in original["origin"]),
        "itk_spacing": tuple(float(v) for v in original["spacing"]),
        "itk_direction": tuple(float(v) for v in original["direction"]),
    }


def write_prediction(prediction: Mapping, out_dir: str | Path) -> Path:
    """Write ``OUT/<case>_boxes.pkl`` (nnDetection's prediction file) atomically; returns its path."""
    path = Path(out_dir) / f"{prediction['case_id']}_boxes.pkl"
    write_bytes(path, pickle.dumps(prediction_boxes(prediction), protocol=4))
    return path


__all__ = ["prediction_boxes", "write_prediction"]
