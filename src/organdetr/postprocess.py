"""Raw DETR outputs -> detections: the single best-scoring query per organ class (no NMS)."""

from __future__ import annotations

import torch
from torch import Tensor

from .box_ops import box_cxcyczwhd_to_xyzxyz


def postprocess(outputs: dict, input_size: tuple[int, int, int]) -> list[dict[str, Tensor]]:
    """Per image and organ class, keep the query with the highest probability for that class.

    Args:
        outputs: ``pred_logits [B, N, K+1]`` (index K = no object), ``pred_boxes [B, N, 6]`` normalised
            ``cxcyczwhd``.
        input_size: the model input grid ``(I, J, K)`` in voxels.

    Returns:
        One dict per image with ``labels [K]`` (dense class index, every class once), ``scores [K]``
        (softmax probability of that class), ``boxes [K, 6]`` voxel ``xyzxyz`` on the input grid, clipped to
        it. Detections are sorted by descending score. Organ absence is expressed by a low score; the
        evaluator ranks by score (max 1 detection per class), so no threshold is applied here.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    prob = logits.float().softmax(-1)[..., :-1]  # [B, N, K]
    scores, query = prob.max(dim=1)  # [B, K]
    size = torch.as_tensor(input_size, dtype=torch.float32, device=boxes.device).repeat(2)  # [6]
    xyz = box_cxcyczwhd_to_xyzxyz(boxes.float()) * size
    xyz = torch.minimum(xyz.clamp(min=0), size)
    results = []
    for b in range(logits.shape[0]):
        order = scores[b].argsort(descending=True)
        results.append(
            {
                "labels": order,
                "scores": scores[b, order],
                "boxes": xyz[b, query[b, order]],
            }
        )
    return results


__all__ = ["postprocess"]
