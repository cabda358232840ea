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
``xyzxyz`` on the input grid, like :func:`organdetr.models.organdetr.postprocess.postprocess`. MONAI's
anchor / ATSS / sampler / NMS set-up and these conversions live in :mod:`organdetr.models.blocks.retina`
(MTMed3D's detection head uses them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
from torch import Tensor, nn

from organdetr.models.blocks.retina import atss_retina_detector, best_per_class, monai_box_targets
from organdetr.models.config import ModelConfig, build_backbone, check_input_size
from organdetr.models.protocols import DetectorSpec


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

    def __init__(self, cfg: ModelConfig, out_channels: int, input_size: Sequence[int] | None = None):
        super().__init__()
        self.body = build_backbone(cfg, input_size=input_size)
        self.fpn = FeaturePyramidNetwork(3, list(self.body.out_channels), out_channels)
        self.out_channels = out_channels  # RetinaNet reads this attribute

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.body(images)
        return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())


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
        return monai_box_targets(images, targets)

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
    check_input_size(model_cfg, input_size)
    strides = model_cfg.strides
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=strides, base_anchor_shapes=cfg.anchor_shapes)
    network = RetinaNet(
        spatial_dims=3,
        num_classes=num_classes,
        num_anchors=len(cfg.anchor_shapes),
        feature_extractor=BackboneFPN(model_cfg, model_cfg.d_model, input_size),
        size_divisible=strides[-1],
    )
    retina = atss_retina_detector(
        network,
        anchors,
        atss_candidates=cfg.atss_candidates,
        negatives_per_image=cfg.negatives_per_image,
        positive_fraction=cfg.positive_fraction,
        pool_size=cfg.negative_pool_size,
        min_negatives=cfg.min_negatives,
        score_thresh=cfg.score_thresh,
        topk_candidates_per_level=cfg.topk_candidates_per_level,
        nms_thresh=cfg.nms_thresh,
        detections_per_image=cfg.detections_per_image,
    )
    return RetinaNetAdapter(network, retina, cfg)


def build_retinanet_detector(spec: DetectorSpec) -> RetinaNetAdapter:
    """The registry's builder (:class:`~organdetr.models.protocols.DetectorBuilder`) of ``"retinanet"``:
    :func:`build_retinanet` with ``arch_cfg`` (defaults when ``None``); the matcher / loss sections and the
    data properties are not read (``model_cfg.in_channels`` already holds the data's channels)."""
    check_input_size(spec.model, spec.input_size)
    return build_retinanet(spec.model, spec.num_classes, spec.input_size, spec.arch_cfg)


__all__ = [
    "BackboneFPN",
    "RetinaNetAdapter",
    "RetinaNetConfig",
    "build_retinanet",
    "build_retinanet_detector",
]
