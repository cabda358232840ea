"""Organ statistics per scan (``organdetr predict --statistics``): volume, intensities, box, cut organs.

Per detected organ of one scan (:func:`organ_statistics`), on the original scan's grid ``[I, J, K]``:

* ``volume_ml`` from the organ's **mask** (the model's label map, voxels x voxel volume) when the model
  segments and the organ has voxels in it, else from its **box** (the continuous voxel box's volume);
  ``volume_from`` says which (``mask`` | ``box``), ``voxels`` counts the voxels the intensities come from
  (the mask's, or the voxels whose centre lies inside the box:
  :func:`~organdetr.core.boxes.raster.box_voxel_slices`).
* ``mean_hu``, ``median_hu``, ``p5_hu``, ``p95_hu``: the scan's intensities (HU for CT) over those voxels.
* ``size_{x,y,z}_mm`` and ``centre_{x,y,z}_mm``: the box in LPS mm (the prediction JSON's ``size_mm`` /
  ``center_mm``).
* ``touches_edge``: the mask (or box) reaches the first or last voxel of an axis, i.e. the field of view
  cuts the organ and its volume is a lower bound; ``cut_at`` names the sides (``superior``, ``left``, ...:
  the patient direction the scan's axis points to at that side).

:func:`write_statistics_csv` writes the rows of a whole run as one cohort table (``statistics.csv``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from organdetr.core.boxes.raster import box_voxel_slices
from organdetr.core.geometry import Geometry
from organdetr.runtime.atomic import write_text

COLUMNS = (
    "case_id", "organ", "label_id", "score", "volume_ml", "volume_from", "voxels",
    "mean_hu", "median_hu", "p5_hu", "p95_hu",
    "size_x_mm", "size_y_mm", "size_z_mm", "centre_x_mm", "centre_y_mm", "centre_z_mm",
    "touches_edge", "cut_at",
)  # fmt: skip
"""The columns of ``statistics.csv`` (and the keys of each prediction JSON ``"statistics"`` row)."""

_LPS_SIDES = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))  # -/+ of x, y, z


def side_names(geometry: Geometry) -> list[tuple[str, str]]:
    """Per array axis ``(i, j, k)``: the patient sides of its first and last voxel (``("right", "left")``
    for an axis pointing to patient left), from the scan's direction (the dominant LPS component)."""
    direction = np.asarray(geometry.direction_matrix)
    sides = []
    for axis in range(3):
        column = direction[:, axis]
        world = int(np.argmax(np.abs(column)))
        low, high = _LPS_SIDES[world]
        sides.append((low, high) if column[world] > 0 else (high, low))
    return sides


def _cut_sides(region: tuple[slice, ...], shape: Sequence[int], sides: list[tuple[str, str]]) -> list[str]:
    """The sides of the scan an organ occupying ``region`` (slices per axis) reaches."""
    cut = []
    for axis, (part, size) in enumerate(zip(region, shape, strict=True)):
        if part.start <= 0:
            cut.append(sides[axis][0])
        if part.stop >= size:
            cut.append(sides[axis][1])
    return cut


def _mask_region(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding slices of the non-zero voxels of a boolean ``mask`` (which holds some)."""
    region = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        region.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(region)


def _intensities(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean_hu": None, "median_hu": None, "p5_hu": None, "p95_hu": None}
    values = values.astype(np.float64, copy=False)
    p5, median, p95 = np.percentile(values, (5.0, 50.0, 95.0))
    return {
        "mean_hu": round(float(values.mean()), 2),
        "median_hu": round(float(median), 2),
        "p5_hu": round(float(p5), 2),
        "p95_hu": round(float(p95), 2),
    }


def _organ_row(detection: Mapping, image: np.ndarray, seg: np.ndarray | None, geometry: Geometry) -> dict:
    """One organ's statistics (module docstring) from its detection, the scan and the label map."""
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    label_id = int(detection["label_id"])
    mask = None if seg is None else seg == label_id
    if mask is not None and mask.any():
        region, values, volume_from = _mask_region(mask), image[mask], "mask"
        voxels = int(mask.sum())
        volume_ml = voxels * voxel_ml
    else:
        box = np.asarray(detection["box_voxel"], dtype=np.float64)
        region = box_voxel_slices(box, image.shape)
        values, volume_from = image[region].ravel(), "box"
        voxels = int(values.size)
        volume_ml = float(np.prod(np.maximum(box[3:] - box[:3], 0.0))) * voxel_ml
    cut = _cut_sides(region, image.shape, side_names(geometry))
    size, centre = detection["size_mm"], detection["center_mm"]
    return {
        "organ": str(detection["label"]),
        "label_id": label_id,
        "score": detection.get("score"),
        "volume_ml": round(volume_ml, 3),
        "volume_from": volume_from,
        "voxels": voxels,
        **_intensities(values),
        **{f"size_{a}_mm": round(float(v), 3) for a, v in zip("xyz", size, strict=True)},
        **{f"centre_{a}_mm": round(float(v), 3) for a, v in zip("xyz", centre, strict=True)},
        "touches_edge": bool(cut),
        "cut_at": " ".join(cut),
    }


def organ_statistics(prediction: Mapping, image: np.ndarray, seg: np.ndarray | None = None) -> list[dict]:
    """Statistics of every detection of ``prediction`` (a prediction JSON with ``original``, the scan's
    geometry): ``image [I, J, K]`` the scan's intensities (HU), ``seg [I, J, K]`` the model's label map
    (label ids) on the same grid, or ``None`` (box statistics). One row per detection, keys
    :data:`COLUMNS` without ``case_id``."""
    geometry = Geometry.from_dict(prediction["original"])
    image = np.asarray(image)
    if image.shape != tuple(geometry.size) or (seg is not None and seg.shape != image.shape):
        raise ValueError(f"statistics: scan {image.shape} / label map / geometry {geometry.size} differ")
    return [_organ_row(det, image, seg, geometry) for det in prediction["detections"]]


def statistics_csv(rows: Sequence[Mapping]) -> str:
    """The cohort table's text: :data:`COLUMNS`, one line per row (``case_id`` + an organ's statistics);
    missing values (an organ without voxels) are empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return buffer.getvalue()


def write_statistics_csv(path: str | Path, rows: Sequence[Mapping]) -> Path:
    """Write :func:`statistics_csv` of ``rows`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    write_text(path, statistics_csv(rows))
    return path


__all__ = ["COLUMNS", "organ_statistics", "side_names", "statistics_csv", "write_statistics_csv"]
