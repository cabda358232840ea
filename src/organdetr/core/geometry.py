"""Image geometry: voxel <-> world (LPS mm) transforms, canonical orientation, the preprocessed grid.

Conventions (see docs/conventions.md): arrays are indexed ``(i, j, k)`` (ITK index order);
spacing/origin are ``(3,)`` in that order; ``direction`` is ``(3, 3)`` whose *columns* are the
world (LPS) directions of the i, j, k axes; ``world = origin + direction @ (spacing * index)``.

Canonical orientation is LPS (index i -> patient Left, j -> Posterior, k -> Superior). Reorienting
is a pure axis permutation + flip of the array (no interpolation); for oblique scans the nearest
signed permutation is used and the small residual rotation stays in ``direction`` (as SimpleITK's
``DICOMOrient`` does).

Pure geometry maths (numpy, no SimpleITK, no voxel data): :class:`Geometry`, the canonical LPS
reorientation of a grid (:func:`lps_reorientation`, :func:`reorient_geometry`) and the preprocessed grid
(:func:`grid_geometry` builds it). Arrays on these grids (``Volume``, reorienting and resampling them
with SimpleITK) live in :mod:`organdetr.core.volume`; boxes between grids and LPS mm, and from the
preprocessed grid back to the original scan (``grid_box_to_original``), in :mod:`organdetr.core.boxes.world`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in the world (LPS, mm).

    ``spacing`` (3,) mm, ``origin`` (3,) mm (centre of voxel (0,0,0)), ``direction`` (3,3) with
    columns = world directions of the i, j, k axes, ``size`` (3,) voxels ``(I, J, K)``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 floats, row-major

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction as a (3, 3) float64 array (columns = axis directions)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def num_voxels(self) -> int:
        """``I * J * K``."""
        return int(np.prod(self.size, dtype=np.int64))

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Continuous indices ``[..., 3]`` (i, j, k) -> world LPS mm ``[..., 3]``."""
        index = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.direction_matrix.T

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        """World LPS mm ``[..., 3]`` -> continuous indices ``[..., 3]`` (i, j, k)."""
        world = np.asarray(world, dtype=np.float64)
        rel = world - np.asarray(self.origin)
        return (rel @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def to_dict(self) -> dict:
        """JSON-ready dict (``size``, ``spacing``, ``origin``, ``direction``)."""
        return {
            "size": [int(s) for s in self.size],
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [float(d) for d in self.direction],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            size=tuple(int(s) for s in d["size"]),
            spacing=tuple(float(s) for s in d["spacing"]),
            origin=tuple(float(o) for o in d["origin"]),
            direction=tuple(float(x) for x in d["direction"]),
        )

    def is_close(self, other: Geometry, *, mm_tol: float = 1e-3, dir_tol: float = 1e-4) -> bool:
        """Same size and (within tolerances) the same spacing, origin (mm) and direction."""
        return (
            tuple(self.size) == tuple(other.size)
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=mm_tol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=mm_tol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=dir_tol)
        )


def axis_codes(geometry: Geometry) -> str:
    """Anatomical direction each index axis points to, e.g. ``"LPS"`` or ``"RAS"`` (nearest axis)."""
    positive, negative = "LPS", "RAI"
    codes = []
    for axis in range(3):
        column = geometry.direction_matrix[:, axis]
        world = int(np.argmax(np.abs(column)))
        codes.append(positive[world] if column[world] > 0 else negative[world])
    return "".join(codes)


# ----------------------------------------------------------------------------- canonical orientation


@dataclass(frozen=True)
class Reorientation:
    """Array axis permutation + flips that bring a grid to canonical LPS.

    ``canonical = np.flip(np.transpose(array, permutation), flip_axes)``: canonical axis ``w`` is
    original axis ``permutation[w]``, reversed where ``flip[w]``.
    """

    permutation: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient ``array [I, J, K]`` (a view, no copy)."""
        out = np.transpose(array, self.permutation)
        axes = tuple(a for a in range(3) if self.flip[a])
        return np.flip(out, axes) if axes else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply` (a view, no copy)."""
        axes = tuple(a for a in range(3) if self.flip[a])
        out = np.flip(array, axes) if axes else array
        return np.transpose(out, np.argsort(self.permutation))


def lps_reorientation(geometry: Geometry) -> Reorientation:
    """The axis permutation/flips that make ``geometry``'s direction (nearest to) identity.

    Raises ``ValueError`` for a degenerate direction (two axes pointing the same way).
    """
    matrix = geometry.direction_matrix
    permutation = [int(np.argmax(np.abs(matrix[w, :]))) for w in range(3)]
    if sorted(permutation) != [0, 1, 2]:  # oblique beyond 45 degrees: assign greedily by largest cosine
        permutation = _greedy_axis_assignment(matrix)
    flip = tuple(bool(matrix[w, permutation[w]] < 0) for w in range(3))
    return Reorientation(tuple(permutation), flip)


def _greedy_axis_assignment(matrix: np.ndarray) -> list[int]:
    from scipy.optimize import linear_sum_assignment  # 0.4 s to import; only oblique scans get here

    world, axis = linear_sum_assignment(-np.abs(matrix))
    permutation = [0, 0, 0]
    for w, a in zip(world, axis, strict=True):
        permutation[int(w)] = int(a)
    return permutation


def reorient_geometry(geometry: Geometry, reorientation: Reorientation | None = None) -> Geometry:
    """Geometry of the reoriented (canonical LPS) grid; same voxels, same world positions."""
    r = reorientation or lps_reorientation(geometry)
    size = np.asarray(geometry.size)
    spacing = np.asarray(geometry.spacing)
    # original index of the canonical voxel (0, 0, 0)
    first = np.zeros(3)
    for w, a in enumerate(r.permutation):
        first[a] = size[a] - 1 if r.flip[w] else 0
    signs = np.where(r.flip, -1.0, 1.0)
    direction = geometry.direction_matrix[:, list(r.permutation)] * signs
    return Geometry(
        size=tuple(int(size[a]) for a in r.permutation),
        spacing=tuple(float(spacing[a]) for a in r.permutation),
        origin=tuple(float(x) for x in geometry.index_to_world(first)),
        direction=tuple(float(x) for x in direction.ravel()),
    )


# ----------------------------------------------------------------------------- the preprocessed grid


@dataclass(frozen=True)
class GridMapping:
    """A resampled grid and its index map to the canonical source grid.

    ``canonical_index = grid_index * scale + offset`` (continuous indices, per axis).
    """

    geometry: Geometry
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def source_geometry(self) -> Geometry:
        """The canonical source grid this mapping indexes into (size is the grid's, unused)."""
        scale, offset = np.asarray(self.scale), np.asarray(self.offset)
        spacing = np.asarray(self.geometry.spacing) / scale
        origin = self.geometry.index_to_world(-offset / scale)
        return Geometry(
            self.geometry.size, tuple(spacing.tolist()), tuple(origin.tolist()), self.geometry.direction
        )

    def to_dict(self) -> dict:
        """``{"scale": [3], "offset": [3]}`` (the record's ``to_original``)."""
        return {"scale": [float(s) for s in self.scale], "offset": [float(o) for o in self.offset]}


def grid_geometry(
    canonical: Geometry, spacing: tuple[float, float, float], size: tuple[int, int, int], start: np.ndarray
) -> GridMapping:
    """A grid of ``size`` voxels at ``spacing`` mm whose voxel ``g`` covers the canonical grid's extent.

    The grid is edge-aligned with the canonical grid's first voxel edge, shifted by ``start`` grid voxels
    (``start < 0`` pads, ``> 0`` crops). Direction is the canonical one.
    """
    src_spacing = np.asarray(canonical.spacing)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    scale = spacing_arr / src_spacing
    offset = (np.asarray(start, dtype=np.float64) + 0.5) * scale - 0.5
    origin = canonical.index_to_world(offset)
    geometry = Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(float(s) for s in spacing_arr),
        origin=tuple(float(o) for o in origin),
        direction=canonical.direction,
    )
    return GridMapping(geometry, tuple(float(s) for s in scale), tuple(float(o) for o in offset))


def resize_grid(canonical: Geometry, size: tuple[int, int, int]) -> GridMapping:
    """``fit="resize"``: the whole canonical extent squeezed onto ``size`` voxels (anisotropic spacing)."""
    extent = np.asarray(canonical.size) * np.asarray(canonical.spacing)
    return grid_geometry(canonical, tuple(extent / np.asarray(size)), size, np.zeros(3))


def pad_grid(
    canonical: Geometry, spacing: tuple[float, float, float], size: tuple[int, int, int]
) -> GridMapping:
    """``fit="pad"``: resample to ``spacing`` then centre pad/crop to ``size`` (done as one grid)."""
    extent = np.asarray(canonical.size) * np.asarray(canonical.spacing)
    resampled = np.maximum(np.round(extent / np.asarray(spacing, dtype=np.float64)), 1)
    start = np.floor((resampled - np.asarray(size)) / 2.0)
    return grid_geometry(canonical, spacing, size, start)
