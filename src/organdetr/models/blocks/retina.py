"""MONAI's dense anchor-detection machinery without torchvision, shared by every anchor-based detector.

:func:`atss_retina_detector` sets up MONAI's ``RetinaNetDetector`` (anchor generator, ATSS matcher,
hard-negative sampler, box coder, NMS box selector) the way the RetinaNet baseline and MTMed3D's detection
head both use it; :class:`AtssRetinaNetDetector` is that detector with the ATSS matcher only (MONAI asks for
torchvision otherwise). :func:`monai_box_targets` turns our targets into MONAI's, :func:`best_per_class`
MONAI's detections into ours.

Boxes: our targets are normalised ``cxcyczwhd`` on the input grid; MONAI wants voxel ``xyzxyz``
(``StandardMode``) in the tensor's axis order, which is our ``(i, j, k)``. Detections come back as voxel
``xyzxyz`` on the input grid.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from torch import Tensor

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz


class AtssRetinaNetDetector(RetinaNetDetector):
    """MONAI's ``RetinaNetDetector`` with the ATSS matcher only.

    MONAI's ``compute_anchor_matched_idxs`` first asks ``isinstance(matcher, torchvision Matcher)``, which
    raises when torchvision is absent (no CPU wheel here); this override is the same code without that
    branch (ATSS is MONAI's own matcher and the one its 3D tutorials use).
    """

    def compute_anchor_matched_idxs(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]], num_anchor_locs_per_level
    ) -> list[Tensor]:
        matched_idxs = []
        for anchors_per_image, targets_per_image in zip(anchors, targets, strict=True):
            gt_boxes = targets_per_image[self.target_box_key].to(anchors_per_image.device)
            if gt_boxes.numel() == 0:
                matched_idxs.append(
                    torch.full(
                        (anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device
                    )
                )
                continue
            _, matched = self.proposal_matcher(
                gt_boxes, anchors_per_image, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            matched_idxs.append(matched)
        return matched_idxs


def atss_retina_detector(
    network: Any,
    anchors: AnchorGeneratorWithAnchorShape,
    *,
    atss_candidates: int,
    negatives_per_image: int,
    positive_fraction: float,
    pool_size: float,
    min_negatives: int,
    score_thresh: float,
    topk_candidates_per_level: int,
    nms_thresh: float,
    detections_per_image: int,
) -> AtssRetinaNetDetector:
    """:class:`AtssRetinaNetDetector` around ``network`` (a MONAI ``RetinaNet``, or any object with its
    ``spatial_dims`` / ``num_classes`` / ``size_divisible`` / ``num_anchors``) with ATSS matching
    (``atss_candidates`` per level, centres not required inside the box), hard-negative sampling, target
    keys ``boxes`` / ``labels`` and the box selector (score threshold, top-k per level, NMS)."""
    retina = AtssRetinaNetDetector(network, anchors)
    retina.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
    retina.set_hard_negative_sampler(
        batch_size_per_image=negatives_per_image,
        positive_fraction=positive_fraction,
        pool_size=pool_size,
        min_neg=min_negatives,
    )
    retina.set_target_keys(box_key="boxes", label_key="labels")
    retina.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=topk_candidates_per_level,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_image,
    )
    return retina


def monai_box_targets(images: Tensor, targets: list[dict]) -> list[dict[str, Tensor]]:
    """Our targets (normalised ``cxcyczwhd`` ``boxes [M, 6]``, ``labels [M]``) -> MONAI's voxel xyzxyz on
    the grid of ``images [B, C, I, J, K]``."""
    size = torch.as_tensor(images.shape[2:], dtype=torch.float32, device=images.device).repeat(2)
    return [
        {
            "boxes": box_cxcyczwhd_to_xyzxyz(t["boxes"].float()).reshape(-1, 6) * size,
            "labels": t["labels"].long().reshape(-1),
        }
        for t in targets
    ]


def best_per_class(
    monai_detections: list[dict[str, Tensor]], per_class: int | None
) -> list[dict[str, Tensor]]:
    """MONAI detector outputs (``boxes``, ``labels_scores``, ``labels`` per image) -> ours: ``labels [D]``,
    ``scores [D]``, ``boxes [D, 6]`` sorted by descending score, at most ``per_class`` per class (``None``:
    all)."""
    results = []
    for det in monai_detections:
        boxes, scores, labels = det["boxes"], det["labels_scores"], det["labels"].long()
        order = scores.argsort(descending=True)
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        if per_class is not None:
            keep = rank_within_class(labels) < per_class
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results.append({"labels": labels, "scores": scores.float(), "boxes": boxes.float()})
    return results


def rank_within_class(labels: Tensor) -> Tensor:
    """For labels already sorted by descending score, each entry's rank among entries of its class."""
    ranks = torch.zeros_like(labels)
    for label in labels.unique():
        mask = labels == label
        ranks[mask] = torch.arange(int(mask.sum()), device=labels.device)
    return ranks


__all__ = [
    "AtssRetinaNetDetector",
    "atss_retina_detector",
    "best_per_class",
    "monai_box_targets",
    "rank_within_class",
]
