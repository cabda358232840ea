"""Box modes of the sister toolkits (MONAI, nnDetection) <-> the toolkit's ``xyzxyz`` corners (numpy).

The toolkit's boxes are ``xyzxyz`` = ``(x0, y0, z0, x1, y1, z1)``, ``min <= max`` per axis, in voxels
(``box_voxel``, half-open ``[lo, hi + 1)``, axes ``(i, j, k)``) or in LPS mm (``box_mm``). All functions take
boxes ``[N, 6]`` (anything that reshapes to it) and return float64 ``[N, 6]``.

**MONAI** box modes (``monai.data.box_utils`` names; MONAI's own ``convert_box_mode`` converts them):

==========  =======================================
``xyzxyz``  ``x0, y0, z0, x1, y1, z1`` (corners)
``cccwhd``  ``cx, cy, cz, w, h, d`` (centre, size; LUNA16's convention)
``xxyyzz``  ``x0, x1, y0, y1, z0, z1``
``xyxyzz``  ``x0, y0, x1, y1, z0, z1``
``xyzwhd``  ``x0, y0, z0, w, h, d``
==========  =======================================

and the coordinate systems a MONAI datalist's boxes can be in (:data:`COORDINATES`): ``world`` (LPS mm,
the toolkit's ``box_mm``), ``world-ras`` (RAS mm: x and y negated, :func:`lps_to_ras`), ``image`` (voxel
indices of the image as stored on disk, the toolkit's ``box_voxel``).

**nnDetection** boxes index the array that SimpleITK's ``GetArrayFromImage`` returns, axes ``(k, j, i)``,
ordered ``(x1, y1, x2, y2, z1, z2)`` and spanning ``[min - 1, max + 1]`` of the object's voxels (its
``instances_to_boxes_np``); the toolkit's half-open ``(i0, j0, k0, i1, j1, k1)`` voxel box maps onto that
exactly (:func:`to_nndetection_boxes`, :func:`from_nndetection_boxes`).
"""

from __future__ import annotations

import numpy as np

from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

BOX_MODES = ("cccwhd", "xyzxyz", "xxyyzz", "xyxyzz", "xyzwhd")
COORDINATES = ("world", "world-ras", "image")

_RAS = np.array([-1.0, -1.0, 1.0])


def check_options(box_mode: str, coordinates: str) -> None:
    """InputError unless ``box_mode`` is in :data:`BOX_MODES` and ``coordinates`` in :data:`COORDINATES`."""
    if box_mode not in BOX_MODES:
        raise InputError(None, f"box mode {brief(box_mode)} is not one of {', '.join(BOX_MODES)}")
    if coordinates not in COORDINATES:
        raise InputError(None, f"coordinates {brief(coordinates)} is not one of {', '.join(COORDINATES)}")


# ----------------------------------------------------------------------------- MONAI box modes


def require_monai():
    """MONAI's ``monai.data.box_utils`` (imported when first used: a slow import), or an InputError."""
    try:
        from monai.data import box_utils
    except ImportError:
        raise InputError(None, "MONAI datalists need MONAI: pip install 'monai>=1.3'") from None
    return box_utils


def to_mode(boxes_xyzxyz: np.ndarray, box_mode: str) -> np.ndarray:
    """Boxes ``[N, 6]`` ``xyzxyz`` -> ``box_mode`` (MONAI's ``convert_box_mode``), float64."""
    boxes = np.asarray(boxes_xyzxyz, dtype=np.float64).reshape(-1, 6)
    if box_mode == "xyzxyz" or len(boxes) == 0:
        return boxes
    return np.asarray(
        require_monai().convert_box_mode(boxes, src_mode="xyzxyz", dst_mode=box_mode), np.float64
    )


def from_mode(boxes: np.ndarray, box_mode: str) -> np.ndarray:
    """Boxes ``[N, 6]`` in ``box_mode`` -> ``xyzxyz`` (MONAI's ``convert_box_mode``), float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    if box_mode == "xyzxyz" or len(boxes) == 0:
        return boxes
    return np.asarray(
        require_monai().convert_box_mode(boxes, src_mode=box_mode, dst_mode="xyzxyz"), np.float64
    )


def lps_to_ras(boxes_mm: np.ndarray) -> np.ndarray:
    """``xyzxyz`` mm boxes ``[N, 6]`` between LPS and RAS (its own inverse): x and y negated, re-sorted."""
    boxes = np.asarray(boxes_mm, dtype=np.float64).reshape(-1, 6)
    a, b = boxes[:, :3] * _RAS, boxes[:, 3:] * _RAS
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)


# ----------------------------------------------------------------------------- nnDetection boxes


def to_nndetection_boxes(box_voxel: np.ndarray) -> np.ndarray:
    """Toolkit voxel boxes ``[N, 6]`` ``(i0, j0, k0, i1, j1, k1)`` half-open -> nnDetection boxes ``[N, 6]``
    ``(x1, y1, x2, y2, z1, z2)`` on the ``(k, j, i)`` array: ``(k0 - 1, j0 - 1, k1, j1, i0 - 1, i1)``."""
    box = np.asarray(box_voxel, dtype=np.float64).reshape(-1, 6)
    i0, j0, k0, i1, j1, k1 = box.T
    return np.stack([k0 - 1, j0 - 1, k1, j1, i0 - 1, i1], axis=1)


def from_nndetection_boxes(boxes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_nndetection_boxes`."""
    box = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    x1, y1, x2, y2, z1, z2 = box.T
    return np.stack([z1 + 1, y1 + 1, x1 + 1, z2, y2, x2], axis=1)


__all__ = [
    "BOX_MODES",
    "COORDINATES",
    "check_options",
    "require_monai",
    "from_mode",
    "from_nndetection_boxes",
    "lps_to_ras",
    "to_mode",
    "to_nndetection_boxes",
]
