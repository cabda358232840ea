"""MaskMed (Xie and Agam, arXiv 2511.15603): decoupled mask and class prediction on a 3D U-Net.

``MaskMedNetwork`` = U-Net encoder (``backbone.encoder``) -> optional FSAD-Transformer on the bottleneck
(``transformer.fsad``) -> U-Net decoder (``backbone.decoder``) -> a head on the decoder levels:

* ``"decoupled"`` (MaskMed): the masked multi-scale head (``transformer.head``, ``.masked_decoder``);
  ``forward`` returns Mask2Former's dict (``pred_logits [B, N, C + 1]``, ``pred_masks [B, N, I, J, K]``,
  ``aux_outputs``), ``C = num_classes + 1`` classes with background as class 0;
* ``"pointwise"`` (the baseline of the paper's Fig. 1 (a)): a 1x1x1 conv per decoder level (``seg_heads``),
  channel c = class c; ``forward`` returns the logits ``[B, C, I, J, K]`` (training with deep supervision:
  the list of every level's logits, finest first).

The CNN parts live under ``backbone`` and the attention parts under ``transformer``, so that
``optim.backbone_lr_scale`` and ``optim.transformer_lr_scale`` give them separate learning rates (the
paper reports that a single rate for both collapses).

Semantic inference of the decoupled head (Mask2Former): ``P(c | v) ∝ sum_n p_n(c) sigmoid(mask_n(v))``
over the queries, normalised over the ``C`` classes; the detector's ``segment`` takes its arg-max and
``detect`` reads boxes off it (``models.segmentation_detector``: largest component per class, score = its mean
probability), so MaskMed is scored as a detector like every other architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from organdetr.models.blocks.backbones import build_unet_encoder
from organdetr.models.blocks.unet import UNet
from organdetr.models.maskmed.config import MaskMedConfig
from organdetr.models.maskmed.criterion import MaskSetCriterion
from organdetr.models.maskmed.fsad import FSADTransformer
from organdetr.models.maskmed.masked_decoder import MaskedMultiScaleHead
from organdetr.models.protocols import DetectorSpec
from organdetr.models.segmentation_detector import SegmentationDetector


class MaskMedNetwork(nn.Module):
    """``forward(images [B, C_in, I, J, K])`` -> the head's outputs (see the module docstring).

    ``backbone`` (``model.backbone``): ``"conv"`` keeps the U-Net's own encoder; ``mednext_v2`` / ``resenc``
    / ``primus`` replace it by the registry's encoder with the same widths and strides
    (:func:`~organdetr.models.blocks.backbones.build_unet_encoder`, ``backbone_size``; Primus needs
    ``input_size``); the FSAD, the decoder and the head are unchanged."""

    def __init__(
        self,
        cfg: MaskMedConfig,
        num_classes: int,
        in_channels: int = 1,
        backbone: tuple[str, str] = ("conv", "S"),
        input_size: Sequence[int] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = UNet(
            in_channels, cfg.features, cfg.blocks_per_stage, cfg.norm, cfg.block == "residual"
        )
        if backbone[0] != "conv":
            self.backbone.encoder = build_unet_encoder(*backbone, in_channels, cfg.features, input_size)
        transformer: dict[str, nn.Module] = {}
        if cfg.fsad:
            transformer["fsad"] = FSADTransformer(
                cfg.features,
                cfg.d_model,
                cfg.nhead,
                cfg.n_points,
                cfg.dim_feedforward,
                cfg.fsad_layers,
                cfg.dropout,
            )
        channels = self.backbone.decoder.channels  # coarse to fine
        if cfg.head == "decoupled":
            transformer["head"] = MaskedMultiScaleHead(
                channels,
                num_classes + 1,
                cfg.num_queries(num_classes),
                cfg.d_model,
                cfg.nhead,
                cfg.dim_feedforward,
                dropout=cfg.dropout,
                attention_levels=cfg.attention_levels,
                masked_attention=cfg.masked_attention,
            )
            self.seg_heads = nn.ModuleList()
        else:
            self.seg_heads = nn.ModuleList(nn.Conv3d(c, num_classes + 1, 1) for c in channels)
        self.transformer = nn.ModuleDict(transformer)

    def forward(self, images: Tensor):
        if any(int(s) % self.cfg.divisor for s in images.shape[2:]):
            raise ValueError(
                f"MaskMed input {tuple(images.shape[2:])} must be divisible by {self.cfg.divisor} "
                f"({len(self.cfg.features)} U-Net stages)"
            )
        feats = self.backbone.encoder(images)
        if "fsad" in self.transformer:
            feats = self.transformer["fsad"](feats)
        levels = self.backbone.decoder(feats)
        if "head" in self.transformer:
            return self.transformer["head"](levels)
        if self.training and self.cfg.deep_supervision:
            return [head(x) for head, x in zip(reversed(self.seg_heads), reversed(levels), strict=True)]
        return self.seg_heads[-1](levels[-1])


def semantic_logits(pred_logits: Tensor, pred_masks: Tensor, eps: float = 1e-6) -> Tensor:
    """Mask2Former's semantic inference as log-probabilities ``[B, C, I, J, K]`` (softmax gives back
    ``P(c | v)``): ``pred_logits [B, N, C + 1]`` (last = no object), ``pred_masks [B, N, I, J, K]``."""
    scores = torch.einsum(
        "bnc,bnijk->bcijk", pred_logits.float().softmax(-1)[..., :-1], pred_masks.float().sigmoid()
    )
    return (scores / scores.sum(1, keepdim=True).clamp_min(eps)).clamp_min(eps).log()


class MaskMedDetector(SegmentationDetector):
    """The Detector protocol for the decoupled head: ``loss`` = bipartite-matched class CE + mask BCE + mask
    Dice per prediction (:class:`~organdetr.models.maskmed.criterion.MaskSetCriterion`); ``forward`` =
    semantic
    logits, so ``probabilities`` / ``segment`` / ``detect`` are :class:`SegmentationDetector`'s."""

    def __init__(self, network: MaskMedNetwork, num_classes: int, criterion: MaskSetCriterion):
        super().__init__(network, num_classes)
        self.criterion = criterion

    def forward(self, images: Tensor) -> Tensor:
        out = self.network(images)
        return semantic_logits(out["pred_logits"], out["pred_masks"])

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        return self.criterion(self.network(images), targets)


def build_maskmed(
    cfg: MaskMedConfig,
    num_classes: int,
    in_channels: int = 1,
    backbone: tuple[str, str] = ("conv", "S"),
    input_size: Sequence[int] | None = None,
) -> SegmentationDetector:
    """MaskMed (``head="decoupled"``) or its point-wise-head U-Net baseline behind the Detector protocol
    (``backbone``: ``(model.backbone, model.backbone_size)``, see :class:`MaskMedNetwork`)."""
    network = MaskMedNetwork(cfg, num_classes, in_channels, backbone, input_size)
    if cfg.head == "pointwise":
        return SegmentationDetector(network, num_classes, weight=cfg.weight_pointwise, dice=True)
    criterion = MaskSetCriterion(
        num_classes + 1,
        weight_class=cfg.weight_class,
        weight_mask=cfg.weight_mask,
        weight_dice=cfg.weight_dice,
        eos_coef=cfg.eos_coef,
        deep_supervision=cfg.deep_supervision,
    )
    return MaskMedDetector(network, num_classes, criterion)


def build_maskmed_detector(spec: DetectorSpec) -> SegmentationDetector:
    """The registry's builder (:class:`~organdetr.models.protocols.DetectorBuilder`) of ``"maskmed"``:
    :func:`build_maskmed` with ``arch_cfg`` (defaults when ``None``) once ``input_size`` is known to fit its
    U-Net. Its own U-Net: ``in_channels``, ``backbone`` and ``backbone_size`` of the model section are read;
    matcher / loss sections and ``data`` are not."""
    maskmed_cfg = spec.arch_cfg or MaskMedConfig()
    if any(int(s) % maskmed_cfg.divisor for s in spec.input_size):
        raise ValueError(
            f"input_size {tuple(spec.input_size)} must be divisible by {maskmed_cfg.divisor} "
            f"(the bottleneck stride of {len(maskmed_cfg.features)} U-Net stages)"
        )
    backbone = (spec.model.backbone, spec.model.backbone_size)
    return build_maskmed(maskmed_cfg, spec.num_classes, spec.model.in_channels, backbone, spec.input_size)


__all__ = ["MaskMedDetector", "MaskMedNetwork", "build_maskmed", "build_maskmed_detector", "semantic_logits"]
