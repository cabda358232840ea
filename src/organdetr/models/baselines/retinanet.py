"""RetinaNet baseline: MONAI's 3D RetinaNet behind the Detector protocol, on Organ-DETR's own backbone.

The dense, anchor-based detector the field uses as its reference (``monai.apps.detection``): per-level
classification / box-regression heads on an FPN, ATSS anchor matching, hard-negative sampling, sigmoid
(BCE) classification and smooth-L1 box regression, NMS at inference. MONAI builds its ResNet-FPN feature
extractor with torchvision (no CPU wheel here), so the feature extractor is ours: the same
:class:`~organdetr.models.blocks.backbone.Backbone3d` as Organ-DETR (same widths, depth and strides, read from
``ModelConfig``) followed by MONAI's ``FeaturePyramidNetwork`` with ``d_model`` channels. Only the
detection paradigm differs from the DETR variants, which is the point of the baseline.

Boxes: our targets are normalised ``cxcyczwhd`` on the input grid; MONAI wants voxel ``xyzxyz``
(``StandardMode``) in the tensor's axis order, which is our ``(i, j, k)``. ``detect`` returns voxel
``xyzxyz`` on the input grid, like :func:`organdetr.models.organdetr.postprocess.postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
from torch import Tensor, nn

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz
from organdetr.models.blocks.backbone import Backbone3d
from organdetr.models.config import ModelConfig


@dataclass
class RetinaNetConfig:
    """RetinaNet-specific settings; defaults follow MONAI's 3D detection tutorial where it applies.

    ``anchor_shapes`` are in units of the level stride: level ``l`` (stride ``s_l`` voxels) gets anchors of
    ``s_l * shape`` voxels, one per shape and location (default: a cube and two elongated boxes, 4 strides
    wide). ``detections_per_class`` keeps the best ``n`` boxes per class after NMS (1 matches the
    max-1-per-class evaluation of the DETR variants; ``None`` keeps everything NMS returns).
    """

    anchor_shapes: tuple[tuple[float, float, float], ...] = ((4, 4, 4), (3, 3, 6), (6, 6, 3))
    atss_candidates: int = 4
    negatives_per_image: int = 64  # hard-negative sampler: anchors per image (positives + negatives)
    positive_fraction: float = 0.3
    negative_pool_size: float = 20
    min_negatives: int = 16
    weight_class: float = 1.0
    weight_bbox: float = 1.0
    score_thresh: float = (
        0.0  # none, as DETR's postprocess: absence is a low score, evaluation ranks by score
    )
    topk_candidates_per_level: int = 1000
    nms_thresh: float = 0.22
    detections_per_image: int = 300
    detections_per_class: int | None = 1

    def __post_init__(self) -> None:
        self.anchor_shapes = tuple(tuple(float(v) for v in s) for s in self.anchor_shapes)
        if not self.anchor_shapes or any(len(s) != 3 or min(s) <= 0 for s in self.anchor_shapes):
            raise ValueError(f"anchor_shapes must be positive (i, j, k) triples, got {self.anchor_shapes}")
        if self.detections_per_class is not None and self.detections_per_class < 1:
            raise ValueError("detections_per_class must be >= 1 or None")


class BackboneFPN(nn.Module):
    """``Backbone3d`` + MONAI ``FeaturePyramidNetwork``: ``images [B, C, I, J, K]`` -> list of
    ``[B, out_channels, I/s_l, J/s_l, K/s_l]`` maps, finest first (strides ``ModelConfig.strides``)."""

    def __init__(self, cfg: ModelConfig, out_channels: int):
        super().__init__()
        self.body = Backbone3d.from_config(cfg)
        self.fpn = FeaturePyramidNetwork(3, list(self.body.out_channels), out_channels)
        self.out_channels = out_channels  # RetinaNet reads this attribute

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.body(images)
        return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())


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


class RetinaNetAdapter(nn.Module):
    """MONAI ``RetinaNetDetector`` as a Detector (``loss`` / ``detect`` / ``network``).

    Only ``network`` (the MONAI ``RetinaNet``: images -> per-level class / box maps) holds parameters; the
    MONAI detector object (anchors, matcher, sampler, box coder, NMS) is kept outside the module tree so
    that the state dict holds each weight once.
    """

    def __init__(self, network: RetinaNet, retina: RetinaNetDetector, cfg: RetinaNetConfig):
        super().__init__()
        self.network = network
        self.cfg = cfg
        object.__setattr__(self, "_retina", retina)  # not a submodule: its only parameters are network's

    def forward(self, images: Tensor) -> dict:
        return self.network(images)

    def monai_targets(self, images: Tensor, targets: list[dict]) -> list[dict[str, Tensor]]:
        """Our targets (normalised ``cxcyczwhd`` ``boxes [M, 6]``, ``labels [M]``) -> MONAI's voxel xyzxyz."""
        size = torch.as_tensor(images.shape[2:], dtype=torch.float32, device=images.device).repeat(2)
        return [
            {
                "boxes": box_cxcyczwhd_to_xyzxyz(t["boxes"].float()).reshape(-1, 6) * size,
                "labels": t["labels"].long().reshape(-1),
            }
            for t in targets
        ]

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Weighted ``loss_class`` (BCE, sampled anchors), ``loss_bbox`` (smooth L1), their sum ``loss``."""
        self._retina.training = True  # MONAI picks the loss branch from this flag
        raw = self._retina(images, self.monai_targets(images, targets))
        losses = {
            "loss_class": self.cfg.weight_class * raw["classification"],
            "loss_bbox": self.cfg.weight_bbox * raw["box_regression"],
        }
        losses["loss"] = losses["loss_class"] + losses["loss_bbox"]
        return losses

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """MONAI inference (score threshold, top-k per level, NMS) then the best ``detections_per_class``.

        Returns per image ``labels [D]`` (dense class index), ``scores [D]`` (sigmoid), ``boxes [D, 6]``
        voxel ``xyzxyz`` on the input grid, sorted by descending score.
        """
        self._retina.training = False
        return best_per_class(self._retina(images), self.cfg.detections_per_class)


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


def build_retinanet(
    model_cfg: ModelConfig,
    num_classes: int,
    input_size: tuple[int, int, int],
    cfg: RetinaNetConfig | None = None,
) -> RetinaNetAdapter:
    """RetinaNet on ``model_cfg``'s backbone (FPN width ``d_model``) for ``num_classes`` organ classes.

    ``input_size`` (I, J, K) voxels must be divisible by the coarsest stride ``model_cfg.strides[-1]``.
    """
    cfg = cfg or RetinaNetConfig()
    if model_cfg.d_model % 8:
        raise ValueError(
            f"RetinaNet heads use GroupNorm(8): model.d_model={model_cfg.d_model} must be a multiple of 8"
        )
    strides = model_cfg.strides
    if any(int(s) % strides[-1] for s in input_size):
        raise ValueError(
            f"input_size {tuple(input_size)} must be divisible by the coarsest stride {strides[-1]}"
        )
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=strides, base_anchor_shapes=cfg.anchor_shapes)
    network = RetinaNet(
        spatial_dims=3,
        num_classes=num_classes,
        num_anchors=len(cfg.anchor_shapes),
        feature_extractor=BackboneFPN(model_cfg, model_cfg.d_model),
        size_divisible=strides[-1],
    )
    retina = AtssRetinaNetDetector(network, anchors)
    retina.set_atss_matcher(num_candidates=cfg.atss_candidates, center_in_gt=False)
    retina.set_hard_negative_sampler(
        batch_size_per_image=cfg.negatives_per_image,
        positive_fraction=cfg.positive_fraction,
        pool_size=cfg.negative_pool_size,
        min_neg=cfg.min_negatives,
    )
    retina.set_target_keys(box_key="boxes", label_key="labels")
    retina.set_box_selector_parameters(
        score_thresh=cfg.score_thresh,
        topk_candidates_per_level=cfg.topk_candidates_per_level,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_image,
    )
    return RetinaNetAdapter(network, retina, cfg)


__all__ = [
    "AtssRetinaNetDetector",
    "BackboneFPN",
    "RetinaNetAdapter",
    "RetinaNetConfig",
    "best_per_class",
    "build_retinanet",
    "rank_within_class",
]
