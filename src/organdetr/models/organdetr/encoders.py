"""Feature-pyramid encoders: Organ-DETR MultiScale Attention (MSA), deformable, plain FPN, single-scale.

All encoders map projected pyramid features ``list[Tensor [B, D, i_l, j_l, k_l]]`` (finest first) plus
their positional encodings (same shapes, batch 1) to encoded features of the same shapes. ``levels``
says which pyramid levels the output covers (all for MSA/FPN, one for "single"); the decoder attends to
those, the segmentation heads sit on them.

Attention cost is bounded with pooled keys: level ``l``'s self-attention uses keys/values average-pooled
by ``kv_pool[l]`` per axis (spatial-reduction attention), so the finest level costs
``L_l^2 / kv_pool[l]^3`` instead of ``L_l^2``. Inter-scale attention keys are the (small) coarser levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from organdetr.models.blocks.attention import FeedForward, MultiHeadAttention
from organdetr.models.blocks.backbone import group_norm
from organdetr.models.blocks.deformable_attention import MSDeformAttn3d, token_centres
from organdetr.models.blocks.tokens import flatten_tokens, unflatten_tokens


def _pool(x: Tensor, factor: int) -> Tensor:
    """Average-pool a grid ``[B, D, i, j, k]`` by ``factor`` per axis (identity for 1)."""
    if factor == 1:
        return x
    return F.avg_pool3d(x, kernel_size=factor, stride=factor, ceil_mode=True)


class LevelAttentionBlock(nn.Module):
    """One MSA sub-layer for one level (pre-norm): pooled-key self-attention, optional cross-attention to
    coarser levels (inter-scale, top-down), FFN."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, kv_pool: int, cross: bool
    ):
        super().__init__()
        self.kv_pool = kv_pool
        self.norm_self = nn.LayerNorm(d_model)
        # no dropout on attention probabilities: it forces SDPA's math path, which stores the full
        # [L, L / kv_pool^3] matrix per head (12 GiB more at the paper size); dropout stays on the residuals.
        self.self_attn = MultiHeadAttention(d_model, nhead, 0.0)
        self.cross_attn = MultiHeadAttention(d_model, nhead, 0.0) if cross else None
        self.norm_cross = nn.LayerNorm(d_model) if cross else None
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, context: Tensor | None, context_pos: Tensor | None) -> Tensor:
        """``x``/``pos`` ``[B, D, i, j, k]`` (pos batch 1); context ``[B, Lc, D]`` -> ``[B, D, i, j, k]``."""
        tokens = flatten_tokens(x)
        token_pos = flatten_tokens(pos)
        h = self.norm_self(tokens)
        h_grid = unflatten_tokens(h, x)
        kv = flatten_tokens(_pool(h_grid, self.kv_pool))
        kv_pos = flatten_tokens(_pool(pos, self.kv_pool))
        tokens = tokens + self.drop(self.self_attn(h + token_pos, kv + kv_pos, kv))
        if self.cross_attn is not None and context is not None:
            h = self.norm_cross(tokens)
            tokens = tokens + self.drop(self.cross_attn(h + token_pos, context + context_pos, context))
        tokens = tokens + self.drop(self.ffn(self.norm_ffn(tokens)))
        return unflatten_tokens(tokens, x)


class MSAEncoder(nn.Module):
    """Organ-DETR MultiScale Attention encoder.

    Each layer processes levels coarse -> fine. Level ``l`` does intra-scale self-attention over its own
    tokens (pooled keys), then inter-scale cross-attention whose keys are the tokens of all coarser levels
    already updated in this layer (coarse context flows to fine levels), then an FFN. Learned level
    embeddings are added to the context positions so a query can tell the levels apart.
    """

    def __init__(
        self,
        num_levels: int,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        kv_pool: tuple[int, ...],
    ):
        super().__init__()
        self.num_levels = num_levels
        self.levels = tuple(range(num_levels))
        self.level_embed = nn.Parameter(torch.randn(num_levels, d_model) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                LevelAttentionBlock(
                    d_model, nhead, dim_feedforward, dropout, kv_pool[lvl], cross=lvl < num_levels - 1
                )
                for lvl in range(num_levels)
            )
            for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_levels))

    def forward(self, feats: list[Tensor], pos: list[Tensor]) -> list[Tensor]:
        feats = list(feats)
        for blocks in self.layers:
            for lvl in reversed(range(self.num_levels)):  # coarse -> fine
                coarser = range(lvl + 1, self.num_levels)
                context = context_pos = None
                if len(coarser) > 0:
                    context = torch.cat([flatten_tokens(feats[c]) for c in coarser], dim=1)
                    context_pos = torch.cat(
                        [flatten_tokens(pos[c]) + self.level_embed[c] for c in coarser], dim=1
                    )
                feats[lvl] = blocks[lvl](feats[lvl], pos[lvl], context, context_pos)
        return [
            unflatten_tokens(norm(flatten_tokens(f)), f) for norm, f in zip(self.norms, feats, strict=True)
        ]


class DeformableEncoderLayer(nn.Module):
    """Deformable DETR encoder layer (post-norm): multi-scale deformable self-attention around each token's
    own position, then FFN. ``forward(tokens [B, S, D], pos [1|B, S, D], centres [1|B, S, 3], shapes)``."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, levels: int, points: int
    ):
        super().__init__()
        self.attn = MSDeformAttn3d(d_model, levels, nhead, points)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, pos: Tensor, centres: Tensor, shapes) -> Tensor:
        query = tokens + pos
        tokens = self.norm1(
            tokens + self.drop(self.attn(query, centres.expand(len(tokens), -1, -1), tokens, shapes))
        )
        return self.norm2(tokens + self.drop(self.ffn(tokens)))


class DeformableEncoder(nn.Module):
    """Deformable DETR's encoder over all pyramid levels: every token is a query whose reference point is
    its own centre; it samples ``points`` locations per head on every level (cost linear in the tokens).
    Learned level embeddings are added to the sine positions so a token's query knows its level."""

    def __init__(
        self,
        num_levels: int,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        points: int,
    ):
        super().__init__()
        self.levels = tuple(range(num_levels))
        self.level_embed = nn.Parameter(torch.randn(num_levels, d_model) * 0.02)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, nhead, dim_feedforward, dropout, num_levels, points)
            for _ in range(num_layers)
        )

    def forward(self, feats: list[Tensor], pos: list[Tensor]) -> list[Tensor]:
        shapes = [tuple(f.shape[2:]) for f in feats]
        tokens = torch.cat([flatten_tokens(f) for f in feats], dim=1)
        token_pos = torch.cat([flatten_tokens(p) + self.level_embed[i] for i, p in enumerate(pos)], dim=1)
        centres = token_centres(shapes, tokens.device, tokens.dtype)[None]
        for layer in self.layers:
            tokens = layer(tokens, token_pos, centres, shapes)
        sizes = [int(math.prod(s)) for s in shapes]
        return [unflatten_tokens(t, f) for t, f in zip(tokens.split(sizes, dim=1), feats, strict=True)]


class FPNEncoder(nn.Module):
    """Plain FPN top-down pathway (no attention): ``P_l = smooth(P_l + upsample(P_{l+1}))``."""

    def __init__(self, num_levels: int, d_model: int, norm_groups: int):
        super().__init__()
        self.levels = tuple(range(num_levels))
        self.smooth = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(d_model, d_model, 3, padding=1, bias=False),
                group_norm(d_model, norm_groups),
                nn.ReLU(inplace=True),
            )
            for _ in range(num_levels)
        )

    def forward(self, feats: list[Tensor], pos: list[Tensor]) -> list[Tensor]:
        out = [None] * len(feats)
        top = self.smooth[-1](feats[-1])
        out[-1] = top
        for lvl in reversed(range(len(feats) - 1)):
            top = feats[lvl] + F.interpolate(top, size=feats[lvl].shape[2:], mode="nearest")
            top = self.smooth[lvl](top)
            out[lvl] = top
        return out


class SingleScaleEncoder(nn.Module):
    """DETR-style transformer encoder over one pyramid level (pooled-key self-attention + FFN)."""

    def __init__(
        self,
        level: int,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        kv_pool: int,
    ):
        super().__init__()
        self.levels = (level,)
        self.layers = nn.ModuleList(
            LevelAttentionBlock(d_model, nhead, dim_feedforward, dropout, kv_pool, cross=False)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, feats: list[Tensor], pos: list[Tensor]) -> list[Tensor]:
        x, p = feats[self.levels[0]], pos[self.levels[0]]
        for layer in self.layers:
            x = layer(x, p, None, None)
        return [unflatten_tokens(self.norm(flatten_tokens(x)), x)]
