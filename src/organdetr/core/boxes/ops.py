"""3D box operations in torch (training-time: matcher and criterion).

Boxes follow docs/conventions.md, axis order ``(i, j, k)``:

* ``xyzxyz``    = ``(i0, j0, k0, i1, j1, k1)`` corners, half-open, ``min <= max``;
* ``cxcyczwhd`` = ``(ci, cj, ck, wi, wj, wk)`` centre + size.

Units are whatever the caller uses (normalised ``[0, 1]`` model boxes or voxels); the functions are
unit-agnostic. Pairwise functions take ``[N, 6]`` and ``[M, 6]`` and return ``[N, M]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_cxcyczwhd_to_xyzxyz",
    "box_xyzxyz_to_cxcyczwhd",
    "box_volume",
    "box_iou_3d",
    "generalized_box_iou_3d",
    "paired_box_iou_3d",
]


def box_cxcyczwhd_to_xyzxyz(boxes: Tensor) -> Tensor:
    """``[..., 6]`` centre-size -> ``[..., 6]`` corners."""
    centre, size = boxes[..., :3], boxes[..., 3:]
    return torch.cat([centre - 0.5 * size, centre + 0.5 * size], dim=-1)


def box_xyzxyz_to_cxcyczwhd(boxes: Tensor) -> Tensor:
    """``[..., 6]`` corners -> ``[..., 6]`` centre-size."""
    lo, hi = boxes[..., :3], boxes[..., 3:]
    return torch.cat([(lo + hi) / 2, hi - lo], dim=-1)


def box_volume(boxes: Tensor) -> Tensor:
    """Volume of ``xyzxyz`` boxes ``[..., 6] -> [...]`` (negative extents count as 0)."""
    return (boxes[..., 3:] - boxes[..., :3]).clamp(min=0).prod(dim=-1)


def box_iou_3d(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of ``xyzxyz`` boxes ``[N, 6] x [M, 6]`` -> ``(iou [N, M], union [N, M])``."""
    vol1, vol2 = box_volume(boxes1), box_volume(boxes2)
    lo = torch.maximum(boxes1[:, None, :3], boxes2[None, :, :3])
    hi = torch.minimum(boxes1[:, None, 3:], boxes2[None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    union = vol1[:, None] + vol2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny), union


def paired_box_iou_3d(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of row-wise pairs of ``xyzxyz`` boxes ``[P, 6], [P, 6] -> [P]`` (the diagonal of
    :func:`box_iou_3d` without the ``P x P`` matrix)."""
    lo = torch.maximum(boxes1[:, :3], boxes2[:, :3])
    hi = torch.minimum(boxes1[:, 3:], boxes2[:, 3:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    union = box_volume(boxes1) + box_volume(boxes2) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def generalized_box_iou_3d(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise 3D generalised IoU (Rezatofighi et al. 2019) of ``xyzxyz`` boxes -> ``[N, M]`` in ``[-1, 1]``.

    ``GIoU = IoU - (C - U) / C`` with ``C`` the volume of the smallest enclosing box. Degenerate
    (inverted) boxes raise ``ValueError`` because they signal a bug upstream, not a bad scan.
    """
    if not (boxes1[:, 3:] >= boxes1[:, :3]).all() or not (boxes2[:, 3:] >= boxes2[:, :3]).all():
        raise ValueError("generalized_box_iou_3d: boxes must satisfy max >= min on every axis")
    iou, union = box_iou_3d(boxes1, boxes2)
    lo = torch.minimum(boxes1[:, None, :3], boxes2[None, :, :3])
    hi = torch.maximum(boxes1[:, None, 3:], boxes2[None, :, 3:])
    enclosing = (hi - lo).clamp(min=0).prod(dim=-1)
    return iou - (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny)
