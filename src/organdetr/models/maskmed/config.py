"""``MaskMedConfig``: the ``maskmed`` section of a training config (U-Net, FSAD-Transformer, head, losses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from organdetr.runtime.text import brief

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
            raise ValueError(f"maskmed.head must be 'decoupled' or 'pointwise', got {brief(self.head)}")
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


__all__ = ["BlockKind", "HeadKind", "MaskMedConfig", "NormKind"]
