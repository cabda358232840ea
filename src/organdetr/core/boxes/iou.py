"""Vectorised 3D IoU of axis-aligned boxes (numpy), in two precisions.

Boxes are ``xyzxyz`` = ``(x0, y0, z0, x1, y1, z1)`` with ``min <= max`` per axis, in any one unit
(evaluation uses LPS mm). Volume is ``prod(max - min)`` (continuous boxes, no ``+1``).

* :func:`box_iou_3d` - float64, the plain COCO mode.
* :func:`box_iou_3d_monai` - bit-for-bit what ``monai.data.box_utils.box_iou`` returns for float64
  boxes: volumes, intersection and union in float32, ``inter / (union + eps_float32)``. An IoU that is
  exactly 0.7 in real arithmetic comes out as 0.69999... here, so it misses the 0.70 threshold.
"""

from __future__ import annotations

import numpy as np

_EPS32 = np.float32(np.finfo(np.float32).eps)


def box_volume(boxes: np.ndarray) -> np.ndarray:
    """Volumes ``[...]`` of boxes ``[..., 6]`` (float64; units^3)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    size = boxes[..., 3:] - boxes[..., :3]
    return size[..., 0] * size[..., 1] * size[..., 2]


def box_iou_3d(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` (float64) of boxes ``[N, 6]`` and ``[M, 6]``; 0 where both are empty."""
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 6)
    return paired_iou_3d(a[:, None, :], b[None, :, :])


def paired_iou_3d(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Element-wise IoU ``[...]`` (float64) of broadcastable boxes ``[..., 6]``; 0 where the union is 0."""
    a = np.asarray(boxes1, dtype=np.float64)
    b = np.asarray(boxes2, dtype=np.float64)
    size = np.minimum(a[..., 3:], b[..., 3:]) - np.maximum(a[..., :3], b[..., :3])
    np.maximum(size, 0.0, out=size)
    inter = size[..., 0] * size[..., 1] * size[..., 2]
    union = box_volume(a) + box_volume(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def box_iou_3d_monai(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` exactly as MONAI's ``box_iou`` computes it (float32 maths, float64 out)."""
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 6)
    return paired_iou_3d_monai(a[:, None, :], b[None, :, :])


def paired_iou_3d_monai(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Element-wise MONAI-precision IoU ``[...]`` of broadcastable float64 boxes ``[..., 6]``."""
    a = np.asarray(boxes1, dtype=np.float64)
    b = np.asarray(boxes2, dtype=np.float64)
    # MONAI: volumes from boxes cast to float32; corners max/min in the box dtype, then cast
    vol_a, vol_b = _volume32(a), _volume32(b)
    lt = np.maximum(a[..., :3], b[..., :3]).astype(np.float32)
    rb = np.minimum(a[..., 3:], b[..., 3:]).astype(np.float32)
    wh = np.maximum(rb - lt, np.float32(0.0))
    inter = wh[..., 0] * wh[..., 1] * wh[..., 2]
    union = vol_a + vol_b - inter
    return (inter / (union + _EPS32)).astype(np.float64)


def _volume32(boxes: np.ndarray) -> np.ndarray:
    b32 = boxes.astype(np.float32)
    size = b32[..., 3:] - b32[..., :3]
    return size[..., 0] * size[..., 1] * size[..., 2]
