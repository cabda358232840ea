"""Organ boxes from label maps: one box per organ, in voxels and in LPS mm.

Box conventions (docs/conventions.md): voxel boxes are ``xyzxyz`` half-open ``[min, max)`` in index
units (an organ on voxels ``lo..hi`` has the box ``(lo, hi + 1)``); world boxes ``box_mm`` are the
axis-aligned LPS bounds of the continuous index interval ``[lo - 0.5, hi + 0.5]`` (voxel edges), see
:mod:`organdetr.core.boxes.world`.

Extraction is one pass over the label map (``scipy.ndimage.find_objects`` for the bounding slices,
``np.bincount`` for the voxel counts), not one ``np.where`` per class. :func:`boxes_from_labels` reads
ground-truth label maps (26-connected components); :func:`largest_component_boxes` reads a segmenting
model's arg-max map (6-connected, scored by the mean class probability). Both keep an organ's largest
connected component through :func:`largest_connected_component`. :func:`boxes_from_seg` gives the training
targets of a dense seg tensor (normalised ``cxcyczwhd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from organdetr.core.boxes.world import voxel_box_to_world
from organdetr.core.geometry import Geometry
from organdetr.runtime.errors import InputError

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected: ground-truth organs
_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)  # 6-connected, as TotalSegmentator


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


def largest_connected_component(
    mask: np.ndarray, structure: np.ndarray
) -> tuple[np.ndarray, tuple[slice, slice, slice], int]:
    """The largest connected component of ``mask``, a bool ``[I, J, K]`` cropped to its own bounding box.

    Returns ``(component, region, voxels)``: the component's mask (``mask``'s shape), its bounding slices
    within ``mask`` and its voxel count. ``structure`` is the connectivity (``scipy.ndimage.label``); between
    components of equal size the first in scan order wins. A single component is ``mask`` itself: its region
    is the whole crop.
    """
    components, n = ndimage.label(mask, structure=structure)
    if n <= 1:  # the crop is already the component's bounding box
        return mask, tuple(slice(0, s) for s in mask.shape), int(np.count_nonzero(mask))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    region = ndimage.find_objects(components, max_label=best)[best - 1]
    return components == best, region, int(sizes[best])


def _largest_component(mask: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Bounds (absolute, half-open) and size of the largest 26-connected component of ``mask``.

    ``mask`` is the organ cropped to its bounding box, whose first voxel sits at ``offset``.
    """
    _, region, voxels = largest_connected_component(mask, _FULL_CONNECTIVITY)
    lo = offset + np.array([s.start for s in region])
    hi = offset + np.array([s.stop for s in region])
    return lo, hi, voxels


def largest_component_boxes(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Boxes of one image from arg-max ``labels [I, J, K]`` (dense class + 1) and ``probs [K+1, I, J, K]``.

    Per class present, the box (half-open voxel ``xyzxyz``) of its largest 6-connected component, scored by
    the mean probability of the class inside that component. Returns numpy ``labels [D]`` (dense class),
    ``scores [D]``, ``boxes [D, 6]`` voxel xyzxyz, sorted by descending score; ``D`` = classes present.
    """
    found_labels, scores, boxes = [], [], []
    for cls, region in enumerate(ndimage.find_objects(labels.astype(np.int32), max_label=num_classes)):
        if region is None:
            continue
        mask, inner, _ = largest_connected_component(labels[region] == cls + 1, _FACE_CONNECTIVITY)
        lo = [r.start + i.start for r, i in zip(region, inner, strict=True)]
        hi = [r.start + i.stop for r, i in zip(region, inner, strict=True)]
        found_labels.append(cls)
        scores.append(float(probs[cls + 1][region][mask].mean()))
        boxes.append(lo + hi)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return {
        "labels": np.asarray(found_labels, dtype=np.int64)[order],
        "scores": np.asarray(scores, dtype=np.float32)[order],
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 6)[order],
    }


def boxes_to_records(boxes: list[OrganBox]) -> list[dict]:
    """``[box.to_dict() for box in boxes]``."""
    return [box.to_dict() for box in boxes]


def boxes_from_seg(seg: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Organ boxes of a dense seg ``[I, J, K]`` (class + 1) -> ``labels [M]``, ``boxes [M, 6]`` (cxcyczwhd).

    Voxel boxes are half-open ``[lo, hi + 1)`` (conventions.md), normalised by the grid size.
    """
    size = torch.tensor(seg.shape, dtype=torch.float32).repeat(2)
    slices = ndimage.find_objects(seg.numpy().astype(np.int32, copy=False), max_label=num_classes)
    labels, boxes = [], []
    for dense, sl in enumerate(slices):
        if sl is None:
            continue
        labels.append(dense)
        boxes.append([s.start for s in sl] + [s.stop for s in sl])
    if not labels:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 6, dtype=torch.float32)
    xyz = torch.tensor(boxes, dtype=torch.float32) / size
    lo, hi = xyz[:, :3], xyz[:, 3:]
    return torch.tensor(labels, dtype=torch.int64), torch.cat([(lo + hi) / 2, hi - lo], dim=1)
