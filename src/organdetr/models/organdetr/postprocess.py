"""Raw DETR outputs -> detections: the single best-scoring query per organ class (no NMS)."""

from __future__ import annotations

import torch
from torch import Tensor

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz
from organdetr.runtime.text import brief


def class_probabilities(logits: Tensor, activation: str = "softmax") -> Tensor:
    """``pred_logits [B, N, C] -> [B, N, K]`` organ-class probabilities.

    ``"sigmoid"``: ``C = K`` independent scores; ``"softmax"``: ``C = K + 1``, the last class is no-object
    and is dropped after the softmax.
    """
    if activation == "sigmoid":
        return logits.float().sigmoid()
    if activation == "softmax":
        return logits.float().softmax(-1)[..., :-1]
    raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {brief(activation)}")


def postprocess(
    outputs: dict, input_size: tuple[int, int, int], activation: str = "softmax"
) -> list[dict[str, Tensor]]:
    """Per image and organ class, keep the query with the highest probability for that class.

    Args:
        outputs: ``pred_logits [B, N, C]`` (see :func:`class_probabilities`), ``pred_boxes [B, N, 6]``
            normalised ``cxcyczwhd``.
        input_size: the model input grid ``(I, J, K)`` in voxels.
        activation: how the logits become probabilities (the network's ``class_activation``).

    Returns:
        One dict per image with ``labels [K]`` (dense class index, every class once), ``scores [K]``
        (that class's probability), ``boxes [K, 6]`` voxel ``xyzxyz`` on the input grid, clipped to it.
        Detections are sorted by descending score. Organ absence is expressed by a low score; the
        evaluator ranks by score (max 1 detection per class), so no threshold is applied here.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    prob = class_probabilities(logits, activation)  # [B, N, K]
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


__all__ = ["class_probabilities", "postprocess"]
