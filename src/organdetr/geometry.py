"""Image geometry: voxel <-> world (LPS mm) transforms, canonical orientation, resampling.

Conventions (see docs/conventions.md): arrays are indexed ``(i, j, k)`` (ITK index order);
spacing/origin are ``(3,)`` in that order; ``direction`` is ``(3, 3)`` whose *columns* are the
world (LPS) directions of the i, j, k axes; ``world = origin + direction @ (spacing * index)``.
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
