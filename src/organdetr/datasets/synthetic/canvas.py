"""What a synthetic abdomen is painted on: the body's outline (:class:`Body`) and the tissue / label maps
being painted (:class:`Canvas`); later paint wins where shapes overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from organdetr.datasets.synthetic.shapes import Grid
from organdetr.datasets.synthetic.tissues import Tissue


@dataclass
class Body:
    """Elliptic body cross-section (mm): semi-axes ``width`` (x), ``depth_front``/``depth_back`` (y),
    subcutaneous ``fat`` and abdominal-wall ``wall`` thickness, and the spine's centre line."""

    width: float
    depth_front: float
    depth_back: float
    fat: float
    wall: float
    spine_y: float
    scale: float

    def spine_centre_y(self, z: np.ndarray) -> np.ndarray:
        """y (mm) of the vertebral bodies' centre at height ``z``: lumbar lordosis pushes L3-L4 forward."""
        return self.spine_y - 10.0 * self.scale * np.exp(
            -(((z + 40.0 * self.scale) / (90.0 * self.scale)) ** 2)
        )


class Canvas:
    """The tissue and label maps being painted, with the grid and the body masks."""

    def __init__(self, grid: Grid, rng: np.random.Generator):
        self.grid = grid
        self.rng = rng
        self.tissue = np.zeros(grid.size, dtype=np.uint8)
        self.labels = np.zeros(grid.size, dtype=np.uint8)
        self.cavity = np.zeros(grid.size, dtype=bool)
        self.body = np.zeros(grid.size, dtype=bool)

    def paint(self, slices, mask: np.ndarray, tissue: Tissue, label: int = 0) -> None:
        """Set ``tissue`` and ``label`` where ``mask`` (a boolean array on the block ``slices``)."""
        self.tissue[slices][mask] = tissue
        self.labels[slices][mask] = label

    def paint_shape(self, shape, tissue: Tissue, label: int = 0, *, within: np.ndarray | None = None) -> list:
        """Paint ``f < 1`` of each patch of ``shape`` (only where ``within``, if given); return patches."""
        patches = shape.patches(self.grid, self.rng)
        for patch in patches:
            mask = patch.f < 1.0
            if within is not None:
                mask &= within[patch.slices]
            self.paint(patch.slices, mask, tissue, label)
        return patches


__all__ = ["Body", "Canvas"]
