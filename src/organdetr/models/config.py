"""``ModelConfig``: the ``model`` section (Organ-DETR's network, its ablations and the backbone it shares with
RetinaNet), its presets, and :func:`build_backbone`, the one reader of its backbone fields.

The other architectures keep their own sections next to their code: ``Seg2BoxConfig``
(:mod:`organdetr.models.baselines.seg2box`), ``RetinaNetConfig``
(:mod:`organdetr.models.baselines.retinanet`), ``MaskMedConfig`` (:mod:`organdetr.models.maskmed.config`),
``MTMed3DConfig`` (:mod:`organdetr.models.mtmed3d.config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

from torch import nn

from organdetr.models.blocks.backbone import Backbone3d
from organdetr.models.blocks.backbones import build_feature_pyramid, check_backbone
from organdetr.runtime.text import brief

EncoderKind = Literal["msa", "deformable", "fpn", "single"]
ENCODER_KINDS: tuple[str, ...] = ("msa", "deformable", "fpn", "single")
DecoderKind = Literal["deformable", "detr"]
DECODER_KINDS: tuple[str, ...] = ("deformable", "detr")
ClassHead = Literal["sigmoid", "softmax"]
AnchorKind = Literal["level", "data"]


@dataclass
class ModelConfig:
    """Network hyper-parameters.

    Backbone: a stride-2 stem then ``len(backbone_channels)`` residual stages, each halving the grid, so
    stage ``s`` has stride ``2 ** (s + 2)`` (4, 8, 16, 32, ...). The last ``num_levels`` stages form the
    feature pyramid (finest first). Input sizes should be divisible by the coarsest stride. ``backbone``
    (issue 25, :mod:`organdetr.models.blocks.backbones`): ``"conv"`` is that residual CNN; ``"mednext_v2"``,
    ``"resenc"`` and ``"primus"`` give the same stages and strides with their ``backbone_size`` preset's
    widths (``stem_channels``, ``backbone_depth`` and the widths above are then not read); seg2box and
    MaskMed read the same two fields for their U-Nets.

    Encoder (``encoder``):

    * ``"msa"``        - Organ-DETR MultiScale Attention: per level intra-scale self-attention, then top-down
      inter-scale cross-attention (each finer level attends to all coarser levels), then FFN.
    * ``"deformable"`` - Deformable DETR's encoder: every token attends, by multi-scale deformable
      attention, to ``n_points`` points per head on every level around its own position (the paper's
      "D-DETR" encoder row).
    * ``"fpn"``        - plain FPN top-down pathway, no attention (ablation / baseline).
    * ``"single"``     - one transformer encoder over a single level (``single_level``), as in DETR.

    Decoder (``decoder``):

    * ``"deformable"`` - the default: queries carry a reference box, read the memory by multi-scale
      deformable attention around it and refine it layer by layer (Deformable DETR's iterative refinement
      with DINO's "look forward twice"). ``two_stage``: the initial reference boxes are the best encoder
      proposals of each organ class (``queries_per_class`` each; ``num_queries`` is then
      ``queries_per_class * num_classes``), else learned boxes. ``denoising``: DINO's contrastive
      denoising queries during training. ``fine_level``: the backbone stage one step finer than the
      encoded pyramid (e.g. stride 4 under strides 8 / 16 / 32) is fused top-down with the finest encoded
      level (FPN: 1x1 projection + upsampled encoder output, 3x3 conv) and joins the decoder's memory, the
      proposals and the segmentation heads - box faces are then read at twice the resolution while the
      attention cost of the encoder stays that of the coarser levels.
    * ``"detr"``       - the original DETR decoder (learned queries, dense cross-attention, boxes regressed
      absolutely); the ``detr`` baseline.

    Box precision (issue 20; each a switch so that its effect can be measured):

    * ``deform_heads``: heads of the decoder's deformable cross-attention (0 = ``nhead``). Each head starts
      looking one way (:func:`~organdetr.models.blocks.deformable_attention._direction_grid`): with 4 heads
      those are +-i and +-j, and no head looks along k; 6 heads start on the six faces of the box, as the
      authors' 3D deformable attention does.
    * ``share_box_head``: one box-refinement head for every decoder layer (Deformable DETR without
      refinement shares it) instead of one per layer: every layer's supervision then trains the same
      regressor of "box delta from features around the reference", which a later layer reuses.
    * ``anchors``: the size of each memory token's proposal anchor. ``"level"``: Deformable DETR's
      ``0.05 * 2 ** level`` of the grid (3.2 voxels at stride 4 for a 64^3 grid, while organs span 4-45);
      ``"data"``: per level, from the training organs' box sizes (``anchor_sizes``, filled from the cache by
      the training engine and saved in the run's config, so a checkpoint rebuilds the same anchors). Anchors
      are not parameters: a network built before the sizes are known (a cost benchmark, a shape test) uses
      the level sizes, with the same weights and cost.

    Classes (``class_head``): ``"sigmoid"`` scores every class independently (``pred_logits [B, N, K]``,
    sigmoid focal loss, as Deformable DETR / DINO); ``"softmax"`` adds a no-object class
    (``pred_logits [B, N, K + 1]``, cross-entropy, as DETR).

    Attention cost is bounded with *pooled keys* (spatial-reduction attention, as in PVT): the keys and
    values of level ``l``'s self-attention are average-pooled by ``kv_pool[l]`` per axis, so the attention
    matrix is ``L_l x L_l / kv_pool[l]**3`` instead of ``L_l x L_l``. ``dropout`` acts on residual branches
    (and decoder attention), never on encoder attention probabilities, so SDPA keeps its fused kernels that
    do not store those matrices (paper preset at 160^3: 3.3 GiB instead of 13.3 GiB per training step, see
    BENCHMARKS.md).
    """

    num_classes: int = 0  # organ classes (without "no object"); 0 = set from the data by build_detector
    in_channels: int = 1
    stem_channels: int = 16
    backbone_channels: tuple[int, ...] = (32, 64, 128)
    backbone_depth: int = 1  # residual blocks per stage
    num_levels: int = 3
    d_model: int = 96
    nhead: int = 4
    dim_feedforward: int = 256
    dropout: float = 0.0
    encoder: EncoderKind = "msa"
    num_encoder_layers: int = 2
    decoder: DecoderKind = "deformable"
    num_decoder_layers: int = 3
    num_queries: int = 30  # decoder="detr" or two_stage=false; two-stage: queries_per_class * classes
    two_stage: bool = True  # initial reference boxes from the encoder's per-class proposals
    queries_per_class: int = 3  # two-stage proposals kept per organ class (DQM's 1 + eta must fit)
    n_points: int = 4  # deformable attention sampling points per head and level
    deform_heads: int = 0  # heads of the decoder's deformable cross-attention (0 = nhead)
    share_box_head: bool = False  # deformable decoder: one box head for all layers
    anchors: AnchorKind = "level"  # proposal anchor sizes: 0.05 * 2**level, or from the data's boxes
    anchor_sizes: tuple[float, ...] = ()  # anchors="data": (i, j, k) per memory level, normalised; filled
    fine_level: bool = False  # deformable decoder: + the backbone stage below the pyramid, fused top-down
    mask_head: bool = False  # + a decoupled mask per query (organdetr.mask_detr): class, box and mask
    class_head: ClassHead = "sigmoid"  # sigmoid per class (focal loss) | softmax with a no-object class (CE)
    denoising: bool = True  # DINO contrastive denoising queries (training only)
    dn_number: int = 60  # at most this many denoising queries per image (groups of 2 x organs)
    dn_box_noise: float = 0.4  # box noise scale (fraction of the half-size per face; negatives 1-2x)
    dn_label_noise: float = 0.5  # DINO's label_noise_ratio: a positive's class is resampled with p/2
    kv_pool: tuple[int, ...] = (2, 1, 1)  # key/value pooling per level, finest first
    single_level: int = -1  # pyramid level used by encoder="single" (-1 = coarsest)
    seg_heads: bool = True  # multiscale segmentation auxiliary heads (training only)
    aux_loss: bool = True  # return outputs of every decoder layer
    norm_groups: int = 8  # GroupNorm groups in the CNN parts
    backbone: str = "conv"  # conv | mednext_v2 | primus | resenc (models.blocks.backbones)
    backbone_size: str = "S"  # S | B preset of a non-conv backbone (conv: the widths above)

    def __post_init__(self) -> None:
        self.backbone_channels = tuple(int(c) for c in self.backbone_channels)
        check_backbone(self.backbone, self.backbone_size)
        self.kv_pool = tuple(int(p) for p in self.kv_pool)
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(f"ModelConfig.encoder must be one of {ENCODER_KINDS}, got {brief(self.encoder)}")
        if self.class_head not in ("sigmoid", "softmax"):
            raise ValueError(
                f"ModelConfig.class_head must be 'sigmoid' or 'softmax', got {brief(self.class_head)}"
            )
        if self.decoder not in DECODER_KINDS:
            raise ValueError(f"ModelConfig.decoder must be one of {DECODER_KINDS}, got {brief(self.decoder)}")
        if self.fine_level and (
            self.decoder != "deformable" or self.num_levels >= len(self.backbone_channels)
        ):
            raise ValueError(
                "ModelConfig.fine_level needs the deformable decoder and a backbone stage below the "
                f"{self.num_levels} encoded levels (backbone_channels has {len(self.backbone_channels)})"
            )
        self.anchor_sizes = tuple(float(a) for a in self.anchor_sizes)
        if self.anchors not in ("level", "data"):
            raise ValueError(f"ModelConfig.anchors must be 'level' or 'data', got {brief(self.anchors)}")
        if any(not 0.0 < a <= 1.0 for a in self.anchor_sizes) or len(self.anchor_sizes) % 3:
            raise ValueError(
                "ModelConfig.anchor_sizes must be (i, j, k) triples of normalised sizes in (0, 1], got "
                f"{self.anchor_sizes}"
            )
        if self.deform_heads < 0 or (self.deform_heads and self.d_model % self.deform_heads):
            raise ValueError(
                f"ModelConfig.deform_heads={self.deform_heads} must be 0 (= nhead) or divide "
                f"d_model={self.d_model}"
            )
        if self.queries_per_class < 1 or self.n_points < 1 or self.dn_number < 0:
            raise ValueError("ModelConfig.queries_per_class and n_points must be >= 1, dn_number >= 0")
        if not (0.0 <= self.dn_box_noise <= 1.0 and 0.0 <= self.dn_label_noise <= 1.0):
            raise ValueError("ModelConfig.dn_box_noise and dn_label_noise must be in [0, 1]")
        if not 1 <= self.num_levels <= len(self.backbone_channels):
            raise ValueError(
                f"ModelConfig.num_levels={self.num_levels} must be in 1..{len(self.backbone_channels)} "
                "(number of backbone stages)"
            )
        if len(self.kv_pool) != self.num_levels:
            raise ValueError(f"ModelConfig.kv_pool needs {self.num_levels} entries, got {self.kv_pool}")
        if self.d_model % self.nhead:
            raise ValueError(f"ModelConfig.d_model={self.d_model} must be divisible by nhead={self.nhead}")
        if self.num_queries < 1:
            raise ValueError("ModelConfig.num_queries must be >= 1")

    def queries_for(self, num_classes: int) -> int:
        """Decoder queries the network has for ``num_classes`` organ classes."""
        if self.decoder == "deformable" and self.two_stage:
            return self.queries_per_class * num_classes
        return self.num_queries

    @property
    def memory_levels(self) -> int:
        """Levels the deformable decoder reads: the encoded pyramid, + 1 with ``fine_level``."""
        return self.num_levels + int(self.fine_level)

    @property
    def cross_attention_heads(self) -> int:
        """Heads of the decoder's deformable cross-attention (``deform_heads``, 0 = ``nhead``)."""
        return self.deform_heads or self.nhead

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides (voxels) of the pyramid levels, finest first."""
        all_strides = [2 ** (s + 2) for s in range(len(self.backbone_channels))]
        return tuple(all_strides[-self.num_levels :])


# Presets. "tiny": unit tests (< 1 s forward at 32^3). "small": CPU demo at 64^3 (~3 M params).
# "paper": paper-scale widths/depths (d_model 256, 6 encoder + 6 decoder layers, strides 8/16/32);
# it is our reading of the paper's scale, not a verified copy of its released configuration.
_PRESETS: dict[str, dict] = {
    "tiny": dict(
        stem_channels=8,
        backbone_channels=(8, 16, 32),
        backbone_depth=1,
        num_levels=3,
        d_model=32,
        nhead=2,
        dim_feedforward=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        num_queries=16,
        kv_pool=(2, 1, 1),
        norm_groups=4,
    ),
    "small": dict(
        stem_channels=16,
        backbone_channels=(32, 64, 128),
        backbone_depth=1,
        num_levels=3,
        d_model=96,
        nhead=4,
        dim_feedforward=256,
        num_encoder_layers=2,
        num_decoder_layers=3,
        num_queries=30,
        kv_pool=(2, 1, 1),
        norm_groups=8,
    ),
    "paper": dict(
        stem_channels=32,
        backbone_channels=(64, 128, 256, 512),
        backbone_depth=2,
        num_levels=3,
        d_model=256,
        nhead=8,
        dim_feedforward=1024,
        dropout=0.1,
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_queries=100,
        dn_number=100,
        kv_pool=(2, 1, 1),
        norm_groups=16,
    ),
}
# "detr": the small sizes with the original DETR decoder - the baseline the deformable design replaced.
_PRESETS["detr"] = dict(
    _PRESETS["small"], decoder="detr", class_head="softmax", two_stage=False, denoising=False
)
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def model_preset(name: str, num_classes: int = 0, **overrides) -> ModelConfig:
    """Return the named preset ("tiny", "small", "paper") with ``num_classes`` and field ``overrides``."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {brief(name)}; choose one of {PRESET_NAMES}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
    return replace(ModelConfig(**_PRESETS[name]), num_classes=num_classes, **overrides)


def build_backbone(
    cfg: ModelConfig, extra_levels: int = 0, input_size: Sequence[int] | None = None
) -> nn.Module:
    """The feature pyramid ``cfg`` describes (shared by the DETR and RetinaNet detectors): ``cfg.backbone``
    ``"conv"`` is :class:`~organdetr.models.blocks.backbone.Backbone3d` with the section's widths; the others
    (:mod:`organdetr.models.blocks.backbones`) have ``len(backbone_channels)`` stages at the same strides and
    their ``backbone_size`` preset's widths. ``extra_levels`` more (finer) stages than ``cfg.num_levels`` are
    returned; ``input_size`` (I, J, K) is needed by ``primus`` (fixed token grid)."""
    if cfg.backbone != "conv":
        stages, outputs = len(cfg.backbone_channels), cfg.num_levels + extra_levels
        kind, size = cfg.backbone, cfg.backbone_size
        return build_feature_pyramid(kind, size, cfg.in_channels, stages, outputs, input_size)
    return Backbone3d(
        cfg.in_channels,
        cfg.stem_channels,
        cfg.backbone_channels,
        cfg.backbone_depth,
        cfg.num_levels + extra_levels,
        cfg.norm_groups,
    )


def check_input_size(cfg: ModelConfig, input_size: Sequence[int]) -> None:
    """ValueError unless every axis of ``input_size`` (I, J, K) is divisible by the coarsest stride."""
    coarsest = cfg.strides[-1]
    if any(int(s) % coarsest for s in input_size):
        raise ValueError(
            f"input_size {tuple(input_size)} must be divisible by the coarsest stride {coarsest}"
        )


__all__ = [
    "DECODER_KINDS",
    "ENCODER_KINDS",
    "PRESET_NAMES",
    "AnchorKind",
    "ClassHead",
    "DecoderKind",
    "EncoderKind",
    "ModelConfig",
    "build_backbone",
    "check_input_size",
    "model_preset",
]
