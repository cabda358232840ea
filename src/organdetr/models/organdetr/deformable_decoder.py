"""Deformable DETR decoder with iterative box refinement (Zhu et al. 2021) and DINO's "look forward twice".

Each query carries a reference box ``r`` (normalised cxcyczwhd). Layer ``l``:

1. query position = ``MLP(sine(r_l))`` (DAB-DETR / DINO: the position follows the current box);
2. self-attention among the queries (denoising queries masked, see :mod:`.denoising`), then multi-scale
   deformable cross-attention that samples the memory around ``r_l`` (points spread over the box), FFN;
   post-norm, as in Deformable DETR;
3. its own heads predict class logits and a box delta ``d_l``; the refined box is
   ``sigmoid(d_l + inverse_sigmoid(r_l))``.

Gradients: the next layer samples at the refined box *detached* (Deformable DETR), but the box a layer is
*supervised* with is built on the previous layer's undetached refinement, so layer ``l``'s loss also
corrects layer ``l - 1``'s delta (DINO's look forward twice). Every layer's output is supervised (aux loss).
The initial reference is used as given: learned reference boxes learn through it; two-stage proposals
are detached by the caller (DINO), so the proposal head learns from its own loss only.

Box heads (``share_box_head``): one per layer (Deformable DETR's refinement) or one for all layers. Box
deltas and the refinement run in fp32 even under autocast: bf16 keeps 8 bits of mantissa, about 0.4 % of a
normalised coordinate (a quarter voxel at 64^3), which would undo the sub-voxel targets.

Shapes: ``tgt [B, Q, D]``, ``reference [B, Q, 6]``, memory ``[B, S, D]`` over ``spatial_shapes`` (finest
first); returns logits ``[L, B, Q, C]`` and boxes ``[L, B, Q, 6]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.blocks.attention import MLP, FeedForward, MultiHeadAttention
from organdetr.models.blocks.deformable_attention import MSDeformAttn3d, SpatialShapes
from organdetr.models.blocks.position import sine_embed_coordinates
from organdetr.models.organdetr.proposals import focal_bias, inverse_sigmoid


class DeformableDecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention around the reference box, FFN (post-norm)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        levels: int,
        points: int,
        cross_heads: int | None = None,
    ):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.cross_attn = MSDeformAttn3d(d_model, levels, cross_heads or nhead, points)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2, self.norm3 = (
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: SpatialShapes,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt, attn_mask)))
        tgt = self.norm2(tgt + self.drop(self.cross_attn(tgt + query_pos, reference, memory, spatial_shapes)))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class DeformableDecoder(nn.Module):
    """Stack of :class:`DeformableDecoderLayer` with per-layer class and box heads (iterative refinement).

    ``class_outputs``: ``num_classes`` for sigmoid (focal) classification, ``num_classes + 1`` for softmax
    with a no-object class. ``cross_heads``: heads of the deformable cross-attention (``None`` = ``nhead``);
    ``share_box_head``: one box head for every layer.
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        levels: int,
        points: int,
        class_outputs: int,
        sigmoid_classes: bool,
        cross_heads: int | None = None,
        share_box_head: bool = False,
    ):
        super().__init__()
        self.pos_feats = 2 * (d_model // 12)  # sine channels per box coordinate: 6 coords -> ~d_model
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(d_model, nhead, dim_feedforward, dropout, levels, points, cross_heads)
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(6 * self.pos_feats, d_model, d_model, 2)
        self.class_heads = nn.ModuleList(nn.Linear(d_model, class_outputs) for _ in range(num_layers))
        # shared: a single module (a list of one), so the checkpoint holds its weights once
        box_heads = 1 if share_box_head else num_layers
        self.box_heads = nn.ModuleList(MLP(d_model, d_model, 6, 3) for _ in range(box_heads))
        for head in self.class_heads:
            if sigmoid_classes:
                nn.init.constant_(head.bias, focal_bias())
        for head in self.box_heads:  # start from the reference box
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(
        self,
        tgt: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: SpatialShapes,
        attn_mask: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        supervised_reference = reference  # undetached refinement of the previous layer (look forward twice)
        logits, boxes = [], []
        for index, (layer, class_head) in enumerate(zip(self.layers, self.class_heads, strict=True)):
            query_pos = self.ref_point_head(sine_embed_coordinates(reference, self.pos_feats))
            tgt = layer(tgt, query_pos, reference, memory, spatial_shapes, attn_mask)
            box_head = self.box_heads[min(index, len(self.box_heads) - 1)]
            with torch.autocast(tgt.device.type, enabled=False):  # box maths in fp32 (module docstring)
                delta = box_head(tgt.float())
                boxes.append((delta + inverse_sigmoid(supervised_reference.float())).sigmoid())
                refined = (delta + inverse_sigmoid(reference.float())).sigmoid()
            logits.append(class_head(tgt))
            supervised_reference, reference = refined, refined.detach()
        return logits, boxes


__all__ = ["DeformableDecoder", "DeformableDecoderLayer"]
