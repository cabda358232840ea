"""Shape primitives of the synthetic abdomen, evaluated only inside their own bounding box.

World coordinates are LPS millimetres (x -> patient Left, y -> Posterior, z -> Superior) on a grid
with identity direction: the centre of voxel ``(i, j, k)`` is ``origin + spacing * (i, j, k)``.

A shape yields :class:`Patch` es: a block of the volume (``slices``), the open-grid world coordinates
of that block (``x [n_i,1,1]``, ``y [1,n_j,1]``, ``z [1,1,n_k]``, mm) and a *level* array ``f`` on it
(``f < 1`` inside the shape, ``f == 1`` on its surface, ~distance / size). Working in the shape's box
keeps a 96^3 case fast: no full-volume work per organ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """A voxel grid with identity direction: ``size (I, J, K)``, ``spacing`` and ``origin`` (mm)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid world coordinates of the whole volume: ``x [I,1,1]``, ``y [1,J,1]``, ``z [1,1,K]`` mm."""
        return self.block((slice(0, self.size[0]), slice(0, self.size[1]), slice(0, self.size[2])))

    def block(self, slices: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid world coordinates (mm, float32) of the voxels in ``slices``."""
        coords = []
        for axis, sl in enumerate(slices):
            c = self.origin[axis] + self.spacing[axis] * np.arange(sl.start, sl.stop, dtype=np.float64)
            shape = [1, 1, 1]
            shape[axis] = c.size
            coords.append(c.astype(np.float32).reshape(shape))
        return coords[0], coords[1], coords[2]

    def slices_for(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel block whose centres lie in the world box ``[lo_mm, hi_mm]``; ``None`` if outside the grid."""
        origin, spacing = np.asarray(self.origin), np.asarray(self.spacing)
        lo = np.maximum(np.ceil((np.asarray(lo_mm) - origin) / spacing), 0).astype(int)
        hi = np.minimum(np.floor((np.asarray(hi_mm) - origin) / spacing) + 1, self.size).astype(int)
        if np.any(hi <= lo):
            return None
        return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


@dataclass
class Patch:
    """A shape's level ``f`` (``f < 1`` inside) on the block ``slices`` with its world coordinates (mm)."""

    slices: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    f: np.ndarray


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], nodes: int | tuple[int, ...], order: int = 3
):
    """A smooth random field in about ``[-1, 1]`` of ``shape``: uniform noise on ``nodes`` points upsampled.

    ``order`` 3 (cubic spline) for small blocks, 1 (linear) for whole volumes where speed matters.
    """
    nodes = (nodes,) * len(shape) if isinstance(nodes, int) else tuple(nodes)
    coarse = rng.uniform(-1.0, 1.0, size=nodes).astype(np.float32)
    zoom = [s / n for s, n in zip(shape, nodes, strict=True)]
    fine = ndimage.zoom(coarse, zoom, order=order, mode="nearest", grid_mode=True)
    if fine.shape != tuple(shape):  # rounding guard: zoom's output size is round(n * zoom)
        fine = np.pad(fine, [(0, max(s - f, 0)) for s, f in zip(shape, fine.shape, strict=True)], mode="edge")
        fine = fine[tuple(slice(0, s) for s in shape)]
    return fine


def frame(axis: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation ``(3, 3)`` whose third column is the unit vector ``axis`` (the shape's long axis).

    The first two columns are perpendicular to it, turned by ``roll_deg`` about it.
    """
    w = np.asarray(axis, dtype=np.float64)
    w = w / np.linalg.norm(w)
    helper = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = helper - w * (helper @ w)
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    roll = np.deg2rad(roll_deg)
    u, v = np.cos(roll) * u + np.sin(roll) * v, -np.sin(roll) * u + np.cos(roll) * v
    return np.stack([u, v, w], axis=1)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation ``(3, 3)`` by up to ``max_deg`` degrees about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


@dataclass
class Superquadric:
    """``(|u/a|^p + |v/b|^p + |w/c|^p)^(1/p) < 1`` in the rotated frame, plus a smooth random dent field.

    ``centre (3,)`` mm, ``semi_axes (3,)`` mm along the columns of ``rotation (3, 3)``; ``exponent`` 2 is
    an ellipsoid, larger is boxier; ``deform`` is the surface displacement relative to the size (0.1 =
    +-10 %), drawn from a random field with ``deform_nodes`` control points per axis.
    """

    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    exponent: float = 2.0
    deform: float = 0.0
    deform_nodes: int = 4

    def patches(self, grid: Grid, rng: np.random.Generator) -> list[Patch]:
        """The shape's level on its bounding block (empty list if it lies outside the grid)."""
        rotation = np.asarray(self.rotation, dtype=np.float64)
        semi = np.asarray(self.semi_axes, dtype=np.float64)
        half = (np.abs(rotation) @ semi) * (1.0 + self.deform)
        slices = grid.slices_for(self.centre - half, self.centre + half)
        field_seed = rng.integers(2**32)  # drawn even when outside: the stream does not depend on the FOV
        if slices is None:
            return []
        x, y, z = grid.block(slices)
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        p = self.exponent
        total = None
        for axis in range(3):
            r = rotation[:, axis] / semi[axis]
            local = np.abs(dx * np.float32(r[0]) + dy * np.float32(r[1]) + dz * np.float32(r[2]))
            term = local * local if p == 2.0 else local**p
            total = term if total is None else total + term
        f = np.sqrt(total) if p == 2.0 else total ** (1.0 / p)
        if self.deform > 0:
            field = smooth_field(np.random.default_rng(field_seed), f.shape, self.deform_nodes)
            f = f + np.float32(self.deform) * field
        return [Patch(slices, x, y, z, f)]


@dataclass
class Tube:
    """A tube around a centreline: ``f = min_n |x - point_n| / radius_n`` (a union of spheres).

    ``points [N, 3]`` mm along the centreline (spaced well below the radius), ``radii [N]`` mm. Painted in
    chunks of ``chunk`` points, each in its own bounding block, so long thin tubes stay cheap.
    """

    points: np.ndarray
    radii: np.ndarray
    chunk: int = 8

    def patches(self, grid: Grid, rng: np.random.Generator | None = None) -> list[Patch]:
        """One patch per chunk of the centreline that meets the grid."""
        points = np.asarray(self.points, dtype=np.float64)
        radii = np.asarray(self.radii, dtype=np.float64)
        patches = []
        for start in range(0, len(points), self.chunk):
            pts, rad = points[start : start + self.chunk + 1], radii[start : start + self.chunk + 1]
            reach = rad.max()
            slices = grid.slices_for(pts.min(axis=0) - reach, pts.max(axis=0) + reach)
            if slices is None:
                continue
            x, y, z = grid.block(slices)
            f = None
            for point, radius in zip(pts, rad, strict=True):
                d2 = (x - np.float32(point[0])) ** 2 + (y - np.float32(point[1])) ** 2
                d2 = d2 + (z - np.float32(point[2])) ** 2
                d2 = d2 * np.float32(1.0 / radius**2)
                f = d2 if f is None else np.minimum(f, d2)
            patches.append(Patch(slices, x, y, z, np.sqrt(f)))
        return patches


def polyline(controls: np.ndarray, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~``step_mm`` along a smooth curve through ``controls [C, 3]`` (Catmull-Rom spline).

    Returns ``(points [N, 3], t [N])`` with ``t`` in ``[0, 1]`` (position along the curve, for radii).
    """
    controls = np.asarray(controls, dtype=np.float64)
    padded = np.vstack([2 * controls[0] - controls[1], controls, 2 * controls[-1] - controls[-2]])
    pieces = []
    for s in range(len(controls) - 1):
        p0, p1, p2, p3 = padded[s : s + 4]
        length = np.linalg.norm(p2 - p1)
        n = max(int(np.ceil(length / step_mm)), 1)
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        pieces.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    points = np.vstack([*pieces, controls[-1:]])
    return points, np.linspace(0.0, 1.0, len(points))
