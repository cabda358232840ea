"""Typed configuration of the Organ-DETR network (and its encoder ablations)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

EncoderKind = Literal["msa", "deformable", "fpn", "single"]
ENCODER_KINDS: tuple[str, ...] = ("msa", "deformable", "fpn", "single")
DecoderKind = Literal["deformable", "detr"]
DECODER_KINDS: tuple[str, ...] = ("deformable", "detr")
ClassHead = Literal["sigmoid", "softmax"]


@dataclass
class ModelConfig:
    """Network hyper-parameters.

    Backbone: a stride-2 stem then ``len(backbone_channels)`` residual stages, each halving the grid, so
    stage ``s`` has stride ``2 ** (s + 2)`` (4, 8, 16, 32, ...). The last ``num_levels`` stages form the
    feature pyramid (finest first). Input sizes should be divisible by the coarsest stride.

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
    fine_level: bool = False  # deformable decoder: + the backbone stage below the pyramid, fused top-down
    mask_head: bool = False  # + a decoupled mask per query (models.mask_detr): class, box and mask
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

    def __post_init__(self) -> None:
        self.backbone_channels = tuple(int(c) for c in self.backbone_channels)
        self.kv_pool = tuple(int(p) for p in self.kv_pool)
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(f"ModelConfig.encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")
        if self.class_head not in ("sigmoid", "softmax"):
            raise ValueError(
                f"ModelConfig.class_head must be 'sigmoid' or 'softmax', got {self.class_head!r}"
            )
        if self.decoder not in DECODER_KINDS:
            raise ValueError(f"ModelConfig.decoder must be one of {DECODER_KINDS}, got {self.decoder!r}")
        if self.fine_level and (
            self.decoder != "deformable" or self.num_levels >= len(self.backbone_channels)
        ):
            raise ValueError(
                "ModelConfig.fine_level needs the deformable decoder and a backbone stage below the "
                f"{self.num_levels} encoded levels (backbone_channels has {len(self.backbone_channels)})"
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
        raise ValueError(f"unknown model preset {name!r}; choose one of {PRESET_NAMES}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
    return replace(ModelConfig(**_PRESETS[name]), num_classes=num_classes, **overrides)


@dataclass
class Seg2BoxConfig:
    """The ``seg2box`` baseline: a plain 3D U-Net (MONAI ``BasicUNet``) trained with CE + Dice; boxes are
    the largest connected component per class (``models.segmentation``).

    ``features``: BasicUNet's six widths (encoder levels 0-4, then the last decoder level). The default is
    half of MONAI's (32, 32, 64, 128, 256, 32) per level, to train on a CPU at 64^3 (BENCHMARKS.md compares
    its cost with the detector's); use MONAI's widths on a GPU.
    """

    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    dropout: float = 0.0
    weight: float = 1.0  # multiplier of CE + Dice
    dice: bool = True

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if len(self.features) != 6 or min(self.features) < 1:
            raise ValueError(f"seg2box.features must be 6 positive widths, got {self.features}")
        if not 0.0 <= self.dropout < 1.0 or self.weight <= 0:
            raise ValueError("seg2box.dropout must be in [0, 1) and seg2box.weight > 0")


BlockKind = Literal["plain", "residual"]
NormKind = Literal["instance", "group"]
HeadKind = Literal["decoupled", "pointwise"]


@dataclass
class MaskMedConfig:
    """MaskMed (Xie and Agam, arXiv 2511.15603): a U-Net whose segmentation head is decoupled into shared
    object queries that predict a class and a class-agnostic mask each (``models.maskmed``).

    U-Net (the CNN part, ``network.backbone``): ``len(features)`` encoder stages, stage ``s`` at stride
    ``2 ** s`` (stage 0 at full resolution), each ``blocks_per_stage`` conv blocks (``block``: nnU-Net's
    plain conv-norm-LeakyReLU pairs or residual blocks; ``norm``: instance or group norm), a stride-2 conv
    between stages; the decoder mirrors it with transposed convs and skip concatenation, giving decoder
    levels at strides ``2 ** (S - 2) .. 1``. Input sizes must be divisible by ``2 ** (S - 1)``.

    Transformer part (``network.transformer``, its own learning rate: ``optim.transformer_lr_scale``):

    * ``fsad``: the Full-Scale Aware Deformable Transformer - the bottleneck's tokens are queries that read,
      by 3D multi-scale deformable attention (``n_points`` per head and level), the encoder features of
      every stage down to full resolution (``fsad_layers`` layers: self-attention, deformable
      cross-attention, FFN), added back into the bottleneck;
    * ``head="decoupled"``: ``queries_per_class * (num_classes + 1)`` shared queries (the paper's "1xN" is
      1 per class; background counts as a class) pass through one masked-attention layer per decoder level,
      coarse to fine (``attention_levels``: how many of the coarsest levels; the finest level always
      predicts the final masks). Each query gives class logits (``num_classes + 1`` classes + no-object) and
      a mask embedding whose dot product with the level's per-voxel features is its mask.
      ``masked_attention``: a query attends only where its mask of the previous prediction is > 0.5
      (everywhere when that mask is empty). Bipartite matching (class + BCE + Dice cost) at the final
      prediction, reused for the earlier ones; ``deep_supervision`` supervises every prediction, else the
      final one only;
    * ``head="pointwise"``: the baseline - a 1x1x1 conv per decoder level, channel c = class c, CE + Dice
      (deep supervision over the decoder levels when ``deep_supervision``).
    """

    features: tuple[int, ...] = (16, 32, 64, 128)
    blocks_per_stage: int = 1
    block: BlockKind = "plain"
    norm: NormKind = "instance"
    head: HeadKind = "decoupled"
    fsad: bool = True
    fsad_layers: int = 1
    d_model: int = 64
    nhead: int = 4
    n_points: int = 4
    dim_feedforward: int = 128
    dropout: float = 0.0
    queries_per_class: int = 1
    attention_levels: int = 0  # decoder levels (coarsest first) with a query layer; 0 = all
    masked_attention: bool = True
    deep_supervision: bool = True
    weight_class: float = 2.0  # loss and matching-cost weights (Mask2Former's 2 / 5 / 5)
    weight_mask: float = 5.0  # sigmoid BCE of the matched masks
    weight_dice: float = 5.0  # Dice of the matched masks
    eos_coef: float = 0.1  # weight of the no-object class in the class CE
    weight_pointwise: float = 1.0  # pointwise head: multiplier of CE + Dice

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if len(self.features) < 2 or min(self.features) < 1:
            raise ValueError(f"maskmed.features needs >= 2 positive widths, got {self.features}")
        if self.block not in ("plain", "residual") or self.norm not in ("instance", "group"):
            raise ValueError("maskmed.block must be plain|residual and maskmed.norm instance|group")
        if self.head not in ("decoupled", "pointwise"):
            raise ValueError(f"maskmed.head must be 'decoupled' or 'pointwise', got {self.head!r}")
        if self.d_model % self.nhead or self.d_model < 6:
            raise ValueError(
                f"maskmed.d_model={self.d_model} must be >= 6 and divisible by nhead={self.nhead}"
            )
        if min(self.blocks_per_stage, self.fsad_layers, self.queries_per_class, self.n_points) < 1:
            raise ValueError(
                "maskmed.blocks_per_stage, fsad_layers, queries_per_class and n_points must be >= 1"
            )
        if not 0 <= self.attention_levels <= len(self.features) - 1:
            raise ValueError(
                f"maskmed.attention_levels must be in 0..{len(self.features) - 1} (decoder levels), "
                f"got {self.attention_levels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("maskmed.dropout must be in [0, 1)")
        if min(self.weight_class, self.weight_mask, self.weight_dice, self.weight_pointwise) < 0:
            raise ValueError("maskmed loss weights must be >= 0")
        if not 0 < self.eos_coef <= 1:
            raise ValueError(f"maskmed.eos_coef must be in (0, 1], got {self.eos_coef}")

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (the bottleneck's stride)."""
        return 2 ** (len(self.features) - 1)

    def num_queries(self, num_classes: int) -> int:
        """Shared queries for ``num_classes`` organ classes (background is one more class)."""
        return self.queries_per_class * (num_classes + 1)
MTMED3D_TASKS: tuple[str, ...] = ("det", "seg", "cls")
BALANCING_SCHEMES: tuple[str, ...] = ("fixed", "uncertainty", "gradnorm")
CLS_HEADS: tuple[str, ...] = ("densenet", "pooled")


@dataclass
class MTMed3DConfig:
    """MTMed3D (Li, Iyengar and Xu, arXiv 2511.12373): one Swin Transformer encoder, three CNN task heads.

    ``tasks``: any non-empty subset of ``det`` (FPN + PANet fusion, RetinaNet-style anchors with ATSS
    matching, focal + smooth-L1 loss, NMS), ``seg`` (Swin-UNETR decoder with skip connections, CE + Dice;
    sigmoid BCE + Dice per region when the dataset declares regions) and ``cls`` (case-level class, focal
    loss); the single-task models of the paper's comparison are ``[det]``, ``[seg]`` and ``[cls]``.

    ``balancing`` of the task losses: ``fixed`` (``task_weights``), ``uncertainty`` (Kendall et al. 2018:
    ``sum exp(-s_t) L_t + s_t`` with learned log-variances ``s_t``) or ``gradnorm`` (Chen et al. 2018:
    learned weights that equalise the tasks' gradient norms on the encoder's patch embedding, which every
    head shares; ``gradnorm_alpha`` is its restoring force). ``task_weights`` are in (det, seg, cls) order;
    for gradnorm they are the initial weights.

    Encoder (MONAI ``SwinUNETR`` / ``SwinTransformer``): ``feature_size`` (a multiple of 12), ``depths`` and
    ``num_heads`` of its four stages, ``window_size``; ``norm`` of the Swin-UNETR convolution blocks
    (``instance``, SwinUNETR's own, needs at least 2 voxels per axis at stride 32, i.e. a 64^3 grid;
    ``group``: GroupNorm(4), also on a 32^3 grid). Its five outputs have strides 2, 4, 8, 16, 32, so the
    input grid must be divisible by 32. ``det_levels`` picks the encoder outputs the detection neck fuses
    (0 = stride 2 ... 4 = stride 32), ``det_channels`` its width (a multiple of 8: MONAI's heads use
    GroupNorm(8)). ``anchor_shapes`` are in units of each level's stride, as ``RetinaNetConfig``'s.

    ``cls_head``: ``densenet`` (the authors' design: a DenseNet fed with the segmentation probabilities and
    the image; ``densenet_*`` set its size, MONAI's DenseNet121 by default, whose four blocks reduce the
    grid 32-fold - use three blocks on a 32^3 grid; it needs the segmentation decoder, which is then built
    even for ``tasks: [cls]``) or ``pooled`` (the cheaper variant: global
    average pools of the three deepest encoder outputs, then an MLP).
    """

    tasks: tuple[str, ...] = MTMED3D_TASKS
    balancing: Literal["fixed", "uncertainty", "gradnorm"] = "fixed"
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gradnorm_alpha: float = 1.5
    feature_size: int = 24
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path: float = 0.0
    norm: Literal["instance", "group"] = "instance"
    det_levels: tuple[int, ...] = (1, 2, 3)
    det_channels: int = 64
    anchor_shapes: tuple[tuple[float, float, float], ...] = ((2, 2, 2), (3, 3, 3), (4, 4, 4))
    atss_candidates: int = 4
    negatives_per_image: int = 64
    positive_fraction: float = 0.3
    focal_gamma: float = 2.0
    nms_thresh: float = 0.22
    detections_per_class: int | None = 1
    seg_dice: bool = True
    cls_head: Literal["densenet", "pooled"] = "densenet"
    densenet_init_features: int = 64
    densenet_growth_rate: int = 32
    densenet_blocks: tuple[int, ...] = (6, 12, 24, 16)
    pooled_hidden: int = 128

    def __post_init__(self) -> None:
        self.tasks = tuple(str(t) for t in self.tasks)
        self.task_weights = tuple(float(w) for w in self.task_weights)
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.det_levels = tuple(int(level) for level in self.det_levels)
        self.densenet_blocks = tuple(int(b) for b in self.densenet_blocks)
        self.anchor_shapes = tuple(tuple(float(v) for v in shape) for shape in self.anchor_shapes)
        if not self.tasks or set(self.tasks) - set(MTMED3D_TASKS) or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(
                f"mtmed3d.tasks must be a non-empty subset of {list(MTMED3D_TASKS)}, got {self.tasks}"
            )
        if self.balancing not in BALANCING_SCHEMES:
            raise ValueError(f"mtmed3d.balancing must be one of {BALANCING_SCHEMES}, got {self.balancing!r}")
        if self.norm not in ("instance", "group"):
            raise ValueError(f"mtmed3d.norm must be 'instance' or 'group', got {self.norm!r}")
        if self.cls_head not in CLS_HEADS:
            raise ValueError(f"mtmed3d.cls_head must be one of {CLS_HEADS}, got {self.cls_head!r}")
        if min(self.task_weights) <= 0 or self.gradnorm_alpha < 0:
            raise ValueError("mtmed3d.task_weights must be > 0 and gradnorm_alpha >= 0")
        if self.feature_size < 12 or self.feature_size % 12:
            raise ValueError(f"mtmed3d.feature_size must be a multiple of 12, got {self.feature_size}")
        if len(self.depths) != 4 or len(self.num_heads) != 4 or min(self.depths) < 1:
            raise ValueError("mtmed3d.depths and num_heads need 4 entries (one per Swin stage), depths >= 1")
        if any((self.feature_size * 2**s) % h for s, h in enumerate(self.num_heads)):
            raise ValueError(
                f"mtmed3d.num_heads {self.num_heads} must divide the stage widths "
                f"{[self.feature_size * 2**s for s in range(4)]}"
            )
        if not self.det_levels or sorted(set(self.det_levels)) != list(self.det_levels):
            raise ValueError(f"mtmed3d.det_levels must be increasing encoder outputs, got {self.det_levels}")
        if min(self.det_levels) < 0 or max(self.det_levels) > 4:
            raise ValueError(f"mtmed3d.det_levels must be in 0..4 (strides 2..32), got {self.det_levels}")
        if self.det_channels < 8 or self.det_channels % 8:
            raise ValueError(f"mtmed3d.det_channels must be a multiple of 8, got {self.det_channels}")
        if not self.anchor_shapes or any(len(a) != 3 or min(a) <= 0 for a in self.anchor_shapes):
            raise ValueError(
                f"mtmed3d.anchor_shapes must be positive (i, j, k) triples, got {self.anchor_shapes}"
            )
        if self.window_size < 1 or not 0.0 <= self.drop_path < 1.0 or self.focal_gamma < 0:
            raise ValueError("mtmed3d.window_size must be >= 1, drop_path in [0, 1), focal_gamma >= 0")
        if self.detections_per_class is not None and self.detections_per_class < 1:
            raise ValueError("mtmed3d.detections_per_class must be >= 1 or null")
        if len(self.densenet_blocks) < 1 or min(self.densenet_blocks) < 1 or self.pooled_hidden < 1:
            raise ValueError("mtmed3d.densenet_blocks must be positive block sizes, pooled_hidden >= 1")

    @property
    def det_strides(self) -> tuple[int, ...]:
        """Voxel strides of the detection levels, finest first."""
        return tuple(2 ** (level + 1) for level in self.det_levels)

    @property
    def needs_seg_decoder(self) -> bool:
        return "seg" in self.tasks or ("cls" in self.tasks and self.cls_head == "densenet")


__all__ = [
    "BALANCING_SCHEMES",
    "CLS_HEADS",
    "DECODER_KINDS",
    "MTMED3D_TASKS",
    "MTMed3DConfig",
    "ENCODER_KINDS",
    "PRESET_NAMES",
    "DecoderKind",
    "EncoderKind",
    "MaskMedConfig",
    "ModelConfig",
    "Seg2BoxConfig",
    "model_preset",
]
