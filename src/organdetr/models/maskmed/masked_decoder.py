"""MaskMed's masked multi-scale segmentation head: shared queries decoded coarse to fine over the U-Net's
decoder levels, each layer's cross-attention restricted by the previous prediction's masks.

Per decoder level ``l`` (coarse to fine) a 1x1x1 conv gives per-voxel features ``E_l [B, D, I_l, J_l, K_l]``.
With ``N`` learned queries ``Q_0`` (features + positions, Mask2Former):

* prediction ``P_0`` = (class logits, masks) of ``Q_0`` read on ``E_0``;
* layer ``l`` (``l < attention_levels``): ``Q_{l+1} = layer_l(Q_l, tokens of E_l, mask from P_l)``, where
  ``P_l``'s masks are already at ``E_l``'s resolution (masked attention: a query sees the voxels of its
  own mask, or everything when the mask is empty); then ``P_{l+1}`` is read on ``E_{l+1}`` - the final
  prediction on the finest level, at full resolution.

Every layer is masked cross-attention, self-attention among the queries, FFN (post-norm, Mask2Former's
order). Class logits ``[B, N, C + 1]`` (``C`` classes incl. background, then no-object); masks are the dot
product of each query's mask embedding with the voxel features (``mask_head.MaskHead``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.blocks.attention import FeedForward, MultiHeadAttention
from organdetr.models.blocks.mask_head import MaskHead, attention_mask_from_logits
from organdetr.models.blocks.position import sine_position_3d
from organdetr.models.blocks.tokens import flatten_tokens


class MaskedQueryLayer(nn.Module):
    """``forward(queries [B, N, D], query_pos [1, N, D], tokens [B, L, D], token_pos [1, L, D],
    attn_mask [B, N, L] bool | None) -> [B, N, D]`` (``attn_mask`` True where a query may attend)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, queries: Tensor, query_pos: Tensor, tokens: Tensor, token_pos: Tensor, attn_mask: Tensor | None
    ) -> Tensor:
        attended = self.cross_attn(queries + query_pos, tokens + token_pos, tokens, attn_mask)
        queries = self.norms[0](queries + self.drop(attended))
        q = queries + query_pos
        queries = self.norms[1](queries + self.drop(self.self_attn(q, q, queries)))
        return self.norms[2](queries + self.drop(self.ffn(queries)))


class MaskedMultiScaleHead(nn.Module):
    """``forward(levels [E-level inputs d_0 .. d_{L-1}], coarse to fine) -> dict``:
    ``pred_logits [B, N, C + 1]``, ``pred_masks [B, N, I, J, K]`` (finest level) and ``aux_outputs``: the
    earlier predictions, coarse first, each with ``pred_logits`` and ``pred_masks`` at its level's grid."""

    def __init__(
        self,
        level_channels: list[int],
        num_classes: int,
        num_queries: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        *,
        dropout: float = 0.0,
        attention_levels: int = 0,
        masked_attention: bool = True,
    ):
        super().__init__()
        levels = len(level_channels)
        self.attention_levels = attention_levels or levels
        if not 1 <= self.attention_levels <= levels:
            raise ValueError(f"attention_levels must be in 1..{levels}, got {attention_levels}")
        self.masked_attention = masked_attention
        self.d_model = d_model
        self.pixel_proj = nn.ModuleList(nn.Conv3d(c, d_model, 1) for c in level_channels)
        self.position_proj = nn.Conv3d(d_model, d_model, 1)  # where a voxel is, for the mask features
        self.level_embed = nn.Parameter(torch.zeros(levels, d_model))
        self.query_feat = nn.Embedding(num_queries, d_model)
        self.query_pos = nn.Embedding(num_queries, d_model)
        self.layers = nn.ModuleList(
            MaskedQueryLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(self.attention_levels)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.mask_head = MaskHead(d_model)

    def predict(self, queries: Tensor, features: Tensor) -> dict[str, Tensor]:
        """Class logits and masks of ``queries [B, N, D]`` read on ``features [B, D, i, j, k]``."""
        q = self.decoder_norm(queries)
        return {"pred_logits": self.class_embed(q), "pred_masks": self.mask_head(q, features)}

    def forward(self, levels: list[Tensor]) -> dict:
        features = [
            proj(x)
            + self.position_proj(
                sine_position_3d(tuple(x.shape[2:]), self.d_model, device=x.device, dtype=x.dtype)
            )
            for proj, x in zip(self.pixel_proj, levels, strict=True)
        ]
        b = levels[0].shape[0]
        queries = self.query_feat.weight[None].expand(b, -1, -1)
        query_pos = self.query_pos.weight[None]
        predictions = [self.predict(queries, features[0])]
        for l, layer in enumerate(self.layers):
            grid = features[l]
            tokens = flatten_tokens(grid)
            token_pos = (
                flatten_tokens(
                    sine_position_3d(
                        tuple(grid.shape[2:]), self.d_model, device=grid.device, dtype=grid.dtype
                    )
                )
                + self.level_embed[l]
            )
            mask = (
                attention_mask_from_logits(predictions[-1]["pred_masks"]) if self.masked_attention else None
            )
            queries = layer(queries, query_pos, tokens, token_pos, mask)
            # read on the next layer's level; after the last layer on the finest level (full resolution)
            target = l + 1 if l + 1 < self.attention_levels else len(features) - 1
            predictions.append(self.predict(queries, features[target]))
        return {**predictions[-1], "aux_outputs": predictions[:-1]}


__all__ = ["MaskedMultiScaleHead", "MaskedQueryLayer"]
