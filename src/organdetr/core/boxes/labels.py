"""Organ boxes from label maps: one box per organ, in voxels and in LPS mm.

Box conventions (docs/conventions.md): voxel boxes are ``xyzxyz`` half-open ``[min, max)`` in index
units (an organ on voxels ``lo..hi`` has the box ``(lo, hi + 1)``); world boxes ``box_mm`` are the
axis-aligned LPS bounds of the continuous index interval ``[lo - 0.5, hi + 0.5]`` (voxel edges).

Extraction is one pass over the label map (``scipy.ndimage.find_objects`` for the bounding slices,
``np.bincount`` for the voxel counts), not one ``np.where`` per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from organdetr.core.geometry import Geometry
from organdetr.runtime.errors import InputError

# unit-cube corner selectors: 8 corners x 3 axes, 0 = min side, 1 = max side
_CORNERS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)


@dataclass
class OrganBox:
    """One organ's box: ``box_voxel`` (6,) ``[i0, j0, k0, i1, j1, k1)`` voxels, ``box_mm`` (6,) LPS mm."""

    label_id: int
    name: str
    box_voxel: np.ndarray
    box_mm: np.ndarray
    voxels: int

    def to_dict(self) -> dict:
        """JSON-ready dict (``label_id``, ``name``, ``box_voxel``, ``box_mm``, ``voxels``)."""
        return {
            "label_id": int(self.label_id),
            "name": self.name,
            "box_voxel": [float(v) for v in self.box_voxel],
            "box_mm": [round(float(v), 4) for v in self.box_mm],
            "voxels": int(self.voxels),
        }


def voxel_box_to_world(box_voxel: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Voxel boxes ``[..., 6]`` (half-open, index units) -> LPS mm boxes ``[..., 6]`` (voxel edges)."""
    box = np.asarray(box_voxel, dtype=np.float64)
    lo, hi = box[..., None, :3] - 0.5, box[..., None, 3:] - 0.5  # continuous edges [..., 1, 3]
    corners = np.where(_CORNERS, hi, lo)  # [..., 8, 3]
    world = geometry.index_to_world(corners)
    return np.concatenate([world.min(axis=-2), world.max(axis=-2)], axis=-1)


def world_box_to_voxel(box_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """LPS mm boxes ``[..., 6]`` -> voxel boxes ``[..., 6]`` (continuous).

    Exact inverse of :func:`voxel_box_to_world` for signed-permutation directions.
    """
    box = np.asarray(box_mm, dtype=np.float64)
    corners = np.where(_CORNERS, box[..., None, 3:], box[..., None, :3])
    index = geometry.world_to_index(corners)
    return np.concatenate([index.min(axis=-2) + 0.5, index.max(axis=-2) + 0.5], axis=-1)


def boxes_from_labels(
    labels: np.ndarray,
    geometry: Geometry,
    classes: dict[int, str] | None,
    *,
    min_voxels: int = 1,
    largest_component: bool = False,
    allow_empty: bool = False,
    path: str | Path | None = None,
) -> list[OrganBox]:
    """One :class:`OrganBox` per label id present in ``labels [I, J, K]`` (sorted by id).

    ``classes``: label id -> name; ``None`` names organs ``label_<id>``. An id missing from
    ``classes`` raises :class:`InputError` (naming ``path``). ``min_voxels`` drops organs with fewer
    voxels (counted after ``largest_component``, which keeps each organ's largest 26-connected
    component). An all-background map raises :class:`InputError` unless ``allow_empty``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(path, f"label map is {labels.ndim}D; expected 3D")
    if labels.dtype.kind not in "iub":
        raise InputError(path, f"label map has non-integer type {labels.dtype}")
    counts = _label_counts(labels, path)
    present = [int(i) for i in np.flatnonzero(counts) if i > 0]
    if not present:
        if allow_empty:
            return []
        raise InputError(path, "label map is empty (no organ voxels)")
    if classes is not None:
        unknown = [i for i in present if i not in classes]
        if unknown:
            raise InputError(path, f"label ids {unknown} are not in the class map")
    slices = ndimage.find_objects(labels, max_label=present[-1])
    boxes = []
    for label_id in present:
        region = slices[label_id - 1]
        lo = np.array([s.start for s in region])
        hi = np.array([s.stop for s in region])
        voxels = int(counts[label_id])
        if largest_component:
            lo, hi, voxels = _largest_component(labels[region] == label_id, lo)
        if voxels < min_voxels:
            continue
        box_voxel = np.concatenate([lo, hi]).astype(np.float64)
        name = classes[label_id] if classes is not None else f"label_{label_id}"
        boxes.append(OrganBox(label_id, name, box_voxel, voxel_box_to_world(box_voxel, geometry), voxels))
    return boxes


def _label_counts(labels: np.ndarray, path: str | Path | None) -> np.ndarray:
    """Voxel count per label id (``bincount`` over the flattened map)."""
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError(path, f"label map holds negative ids (min {labels.min()})")
    flat = labels.ravel(order="K")
    if flat.dtype.itemsize > 4 or flat.dtype.kind == "b":
        flat = flat.astype(np.int64)
    return np.bincount(flat)


def _largest_component(mask: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Bounds (absolute, half-open) and size of the largest 26-connected component of ``mask``.

    ``mask`` is the organ cropped to its bounding box, whose first voxel sits at ``offset``.
    """
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 1:  # the crop is already the component's bounding box
        return offset, offset + np.array(mask.shape), int(np.count_nonzero(mask))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    region = ndimage.find_objects(components, max_label=best)[best - 1]
    lo = offset + np.array([s.start for s in region])
    hi = offset + np.array([s.stop for s in region])
    return lo, hi, int(sizes[best])


def boxes_to_records(boxes: list[OrganBox]) -> list[dict]:
    """``[box.to_dict() for box in boxes]``."""
    return [box.to_dict() for box in boxes]
