"""Boxes between voxel grids and the world: voxel boxes <-> LPS mm, original scan <-> preprocessed grid.

Conventions (docs/conventions.md): a voxel box is ``xyzxyz`` = ``(i0, j0, k0, i1, j1, k1)``, half-open
``[min, max)`` in index units (an organ on voxels ``lo..hi`` has the box ``(lo, hi + 1)``); its world box
``box_mm`` is the axis-aligned LPS bounds (mm) of the continuous index interval ``[lo - 0.5, hi + 0.5]``
(voxel edges), i.e. of that interval's 8 corners mapped through the grid's
:class:`~organdetr.core.geometry.Geometry`. For a direction that is a signed permutation (all scanner data)
the two are exact inverses. Every function takes boxes ``[..., 6]`` and returns float64 ``[..., 6]``.
"""

from __future__ import annotations

import numpy as np

from organdetr.core.geometry import Geometry, GridMapping, reorient_geometry

# unit-cube corner selectors: 8 corners x 3 axes, 0 = min side, 1 = max side
_CORNERS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)


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


# ----------------------------------------------------------------------------- boxes back to the scan


def _map_voxel_box(box: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Voxel boxes ``[..., 6]`` through ``x' = x * scale + offset`` (continuous-index affine map)."""
    lo = (box[..., :3] - 0.5) * scale + offset
    hi = (box[..., 3:] - 0.5) * scale + offset
    return np.concatenate([np.minimum(lo, hi) + 0.5, np.maximum(lo, hi) + 0.5], axis=-1)


def world_box_on_grid(box_mm: np.ndarray, mapping: GridMapping) -> np.ndarray | None:
    """An original scan's LPS mm box ``[6]`` on the preprocessed grid of ``mapping``, clipped to the grid:
    voxel box ``[6]`` (continuous, half-open), or ``None`` when nothing of it is on the grid."""
    canonical = world_box_to_voxel(box_mm, mapping.source_geometry())
    scale, offset = np.asarray(mapping.scale), np.asarray(mapping.offset)
    lo = (canonical[:3] - 0.5 - offset) / scale + 0.5
    hi = (canonical[3:] - 0.5 - offset) / scale + 0.5
    size = np.asarray(mapping.geometry.size, dtype=np.float64)
    lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
    if np.any(hi - lo <= 0):
        return None
    return np.concatenate([lo, hi])


def record_box_on_grid(box_mm, record: dict) -> np.ndarray | None:
    """An organ's original-scan LPS mm box ``[6]`` on the preprocessed grid of a case ``record`` (its
    ``grid`` and ``to_original``): :func:`world_box_on_grid`, continuous and clipped; ``None`` when off
    the grid."""
    to_original = record["to_original"]
    mapping = GridMapping(
        Geometry.from_dict(record["grid"]), tuple(to_original["scale"]), tuple(to_original["offset"])
    )
    return world_box_on_grid(np.asarray(box_mm, dtype=np.float64), mapping)


def grid_box_to_canonical(box_voxel_grid: np.ndarray, record: dict) -> np.ndarray:
    """Voxel boxes ``[..., 6]`` on the preprocessed grid -> voxel boxes on the canonical (LPS) scan."""
    box = np.asarray(box_voxel_grid, dtype=np.float64)
    to_original = record["to_original"]
    return _map_voxel_box(box, np.asarray(to_original["scale"]), np.asarray(to_original["offset"]))


def grid_box_to_original(box_voxel_grid: np.ndarray, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Voxel boxes ``[..., 6]`` (xyzxyz) on the preprocessed grid -> the original scan.

    ``record`` is the case record (see docs/conventions.md; needs ``original`` and ``to_original``).
    Returns ``(box_voxel_original [..., 6], box_mm [..., 6])``: voxel boxes in the original file's
    index order (before canonical reorientation) and LPS mm boxes. Exact inverse of the forward
    resampling for scans whose direction is a signed permutation.
    """
    original = Geometry.from_dict(record["original"])
    canonical = reorient_geometry(original)
    box_canonical = grid_box_to_canonical(box_voxel_grid, record)
    box_mm = voxel_box_to_world(box_canonical, canonical)
    box_original = world_box_to_voxel(box_mm, original)
    return box_original, box_mm


__all__ = [
    "grid_box_to_canonical",
    "grid_box_to_original",
    "record_box_on_grid",
    "voxel_box_to_world",
    "world_box_to_voxel",
]
