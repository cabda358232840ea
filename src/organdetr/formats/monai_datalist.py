"""MONAI detection datalists: write a run's predictions as one (``organdetr predict --format monai``).

A MONAI detection datalist (the JSON that ``monai.data.load_decathlon_datalist`` reads, as in MONAI's
LUNA16 RetinaNet tutorial) is ``{"training": [{"image": "a.nii.gz", "box": [[6 numbers], ...], "label":
[0, ...]}, ...], "validation": [...]}``. ``label`` holds 0-based class indices; the toolkit's label id
is ``label + 1`` (0 is background in label maps). Boxes are in one of MONAI's 3D box modes (``cccwhd``,
``xyzxyz``, ``xxyyzz``, ``xyxyzz``, ``xyzwhd``; :mod:`organdetr.core.boxes.modes` converts them exactly as
MONAI's ``convert_box_mode`` does) and in one of three coordinate systems (``coordinates``):

``world``      LPS mm, the toolkit's ``box_mm`` (what MONAI's ITK reader uses; load with
               ``AffineBoxToImageCoordinated(..., affine_lps_to_ras=True)`` as the LUNA16 tutorial does);
``world-ras``  RAS mm (x and y negated; for images read with nibabel's affine, ``affine_lps_to_ras=False``);
``image``      voxel indices of the image as stored on disk, ``[min, max + 1)`` per axis: exactly what
               MONAI's ``convert_mask_to_box`` gives for the label map (the toolkit's ``box_voxel``).

MONAI's world -> image conversion maps corner points through the affine, whose voxel centres sit at
integer indices; so a world box that spans whole voxels (``[lo - 0.5, hi + 0.5]`` in index units) lands
half a voxel below MONAI's mask-derived image box ``[lo, hi + 1)``. Boxes are exact in both systems; the
half voxel is MONAI's convention, stated here so nobody "fixes" it twice.

``organdetr predict --format monai`` writes the run's detections as ``OUT/monai_datalist.json`` (key
``"validation"``, as MONAI's detection inference writes its results, with ``"score"`` per box). Reading a
datalist (``organdetr convert monai-datalist DATALIST.json DST``) is :mod:`organdetr.datasets.monai_datalist`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from organdetr.core.boxes.modes import check_options, lps_to_ras, to_mode
from organdetr.runtime.atomic import write_json

# ----------------------------------------------------------------------------- writing


def prediction_item(prediction: Mapping, *, box_mode: str = "cccwhd", coordinates: str = "world") -> dict:
    """One datalist item ``{"image", "box", "label", "score"}`` for a prediction JSON."""
    check_options(box_mode, coordinates)
    detections = prediction.get("detections", [])
    if coordinates == "image":
        corners = np.asarray([d["box_voxel"] for d in detections], dtype=np.float64).reshape(-1, 6)
    else:
        corners = np.asarray([d["box_mm"] for d in detections], dtype=np.float64).reshape(-1, 6)
        if coordinates == "world-ras":
            corners = lps_to_ras(corners)
    return {
        "image": str(prediction["image"]),
        "box": [[round(float(v), 4) for v in box] for box in to_mode(corners, box_mode)],
        "label": [int(d["label_id"]) - 1 for d in detections],
        "score": [float(d["score"]) for d in detections],
    }


def datalist_document(
    predictions: Sequence[Mapping],
    *,
    box_mode: str = "cccwhd",
    coordinates: str = "world",
    key: str = "validation",
) -> dict:
    """A datalist of ``predictions`` under ``key``, plus what a reader needs to interpret it: ``labels``
    (0-based class index -> organ name), ``box_mode``, ``coordinates`` (extra keys MONAI ignores)."""
    items = [prediction_item(p, box_mode=box_mode, coordinates=coordinates) for p in predictions]
    names = {int(d["label_id"]) - 1: str(d["label"]) for p in predictions for d in p.get("detections", [])}
    return {
        key: items,
        "labels": {str(k): names[k] for k in sorted(names)},
        "box_mode": box_mode,
        "coordinates": coordinates,
        "world_frame": "RAS" if coordinates == "world-ras" else "LPS",
    }


def write_datalist(
    path: str | Path,
    predictions: Sequence[Mapping],
    *,
    box_mode: str = "cccwhd",
    coordinates: str = "world",
    key: str = "validation",
) -> Path:
    """Write ``predictions`` (prediction JSONs) as a MONAI detection datalist at ``path`` (atomically)."""
    path = Path(path)
    write_json(path, datalist_document(predictions, box_mode=box_mode, coordinates=coordinates, key=key))
    return path


__all__ = [
    "datalist_document",
    "prediction_item",
    "write_datalist",
]
