"""How organs and scans are shown, the same in every picture and export: organ colours, the HU window, the
slice the views cut through.

* Colours: RGB in ``[0, 1]`` from a fixed 40-colour palette (matplotlib's ``tab20``, then ``tab20b``,
  stored here as their hex codes so that no plotting library is needed). :func:`label_colour` follows the
  label id: the one colour of an organ in every output (3D Slicer files, the HTML viewer, the overlay
  pictures, DICOM SEG ``RecommendedDisplayCIELabValue``, RT Structure Set ``ROIDisplayColor``);
  :func:`organ_colours` the order of the names drawn (boxes without a label id, the phantom's picture).
* Window: :func:`window_image` maps HU to ``[0, 1]`` for a ``(width, level)`` window, by default the abdominal
  soft-tissue window :data:`SOFT_TISSUE_WINDOW`.
* :func:`slice_centre`: the voxel index ``(i, j, k)`` of the centre of a set of voxel boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SOFT_TISSUE_WINDOW = (400.0, 40.0)
"""(width, level) in HU: the abdominal soft-tissue window W400/L40 -> [-160, 240] HU."""

_PALETTE_HEX = (
    # tab20
    "1f77b4", "aec7e8", "ff7f0e", "ffbb78", "2ca02c", "98df8a", "d62728", "ff9896", "9467bd", "c5b0d5",
    "8c564b", "c49c94", "e377c2", "f7b6d2", "7f7f7f", "c7c7c7", "bcbd22", "dbdb8d", "17becf", "9edae5",
    # tab20b
    "393b79", "5254a3", "6b6ecf", "9c9ede", "637939", "8ca252", "b5cf6b", "cedb9c", "8c6d31", "bd9e39",
    "e7ba52", "e7cb94", "843c39", "ad494a", "d6616b", "e7969c", "7b4173", "a55194", "ce6dbd", "de9ed6",
)  # fmt: skip
_PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    tuple(int(code[i : i + 2], 16) / 255 for i in (0, 2, 4)) for code in _PALETTE_HEX
)
"""40 distinct RGB colours in [0, 1]: matplotlib's tab20, then tab20b (the very floats matplotlib holds)."""


def organ_colours(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinct RGBA colour per organ name (tab20, then tab20b; stable for a given name order)."""
    unique = list(dict.fromkeys(names))
    return {name: (*_PALETTE[i % len(_PALETTE)], 1.0) for i, name in enumerate(unique)}


def label_colour(label_id: int) -> tuple[float, float, float]:
    """RGB colour in [0, 1] of an organ by its label id: the same organ gets the same colour in every
    scan and every export format (3D Slicer files, the HTML viewer)."""
    return _PALETTE[(int(label_id) - 1) % len(_PALETTE)]


def window_image(array: np.ndarray, window: tuple[float, float] = SOFT_TISSUE_WINDOW) -> np.ndarray:
    """HU ``array`` -> float32 in ``[0, 1]`` for a (width, level) window."""
    width, level = window
    low = level - width / 2.0
    out = (np.asarray(array, dtype=np.float32) - low) / float(width)
    return np.clip(out, 0.0, 1.0, out=out)


def slice_centre(boxes_voxel: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Index ``(i, j, k)`` the views cut through: the centre of all boxes' union, else the scan centre."""
    size = np.asarray(size)
    if len(boxes_voxel) == 0:
        return size // 2
    lo, hi = boxes_voxel[:, :3].min(axis=0), boxes_voxel[:, 3:].max(axis=0)
    centre = np.floor((lo + hi) / 2.0)
    return np.clip(centre, 0, size - 1).astype(int)


__all__ = ["SOFT_TISSUE_WINDOW", "label_colour", "organ_colours", "slice_centre", "window_image"]
