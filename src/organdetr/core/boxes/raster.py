"""Voxel boxes drawn on a voxel grid: the slices a box fills, and a label volume of boxes.

Voxel boxes are ``xyzxyz`` = ``(i0, j0, k0, i1, j1, k1)`` in index units of the grid, axis order
``(i, j, k)`` = the array axes of a volume ``[I, J, K]``, half-open ``[min, max)`` (an organ on voxels
``lo..hi`` has the box ``(lo, hi + 1)``, docs/conventions.md). A box fills the voxels whose centre lies
inside it: ``round(lo) .. round(hi) - 1`` per axis, clipped to the grid, at least one voxel per axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_mask(detections: Sequence[dict], size: Sequence[int]) -> np.ndarray:
    """Label volume ``[I, J, K]`` (original scan grid) with each detection's ``box_voxel`` filled with its
    ``label_id``; larger boxes are drawn first so that small organs inside them stay visible.

    The voxels filled are those whose centre lies inside the box: ``round(lo) .. round(hi) - 1`` per axis
    (at least one voxel per axis).
    """
    max_id = max((int(d["label_id"]) for d in detections), default=0)
    mask = np.zeros(tuple(int(s) for s in size), dtype=np.uint8 if max_id < 256 else np.uint16)
    boxes = [(np.asarray(d["box_voxel"], dtype=np.float64), int(d["label_id"])) for d in detections]
    boxes.sort(key=lambda item: -float(np.prod(np.maximum(item[0][3:] - item[0][:3], 0))))
    for box, label_id in boxes:
        mask[box_voxel_slices(box, mask.shape)] = label_id
    return mask


def box_voxel_slices(box_voxel: Sequence[float], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The voxels a voxel box ``(i0, j0, k0, i1, j1, k1)`` fills on a grid of ``shape``: those whose
    centre lies inside it, ``round(lo) .. round(hi) - 1`` per axis, clipped to the grid, at least one
    voxel per axis (a box thinner than a voxel still shows)."""
    box = np.asarray(box_voxel, dtype=np.float64)
    upper = np.asarray(shape, dtype=int)
    lo = np.clip(np.round(box[:3]).astype(int), 0, upper)
    hi = np.clip(np.round(box[3:]).astype(int), 0, upper)
    hi = np.maximum(hi, np.minimum(lo + 1, upper))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


__all__ = ["box_mask", "box_voxel_slices"]
