"""FSAD-Transformer (MaskMed's Full-Scale Aware Deformable Transformer).

The bottleneck (the coarsest encoder stage) is turned into tokens that act as queries; each reads, through
3D multi-scale deformable attention (``deformable_attention.MSDeformAttn3d``, ``n_points`` per head and
level around the token's own centre), the encoder features of *every* stage down to full resolution. The
cost is ``tokens x heads x levels x points`` samples instead of dense attention over all voxels, so the
full-resolution features take part at the memory of a few samples per token (the paper's
"memory-efficient full-scale fusion"). Each layer: self-attention among the bottleneck tokens,
deformable cross-attention to all scales, FFN (post-norm, Deformable DETR). The result, projected back to
the bottleneck's channels, is added to it (residual), so the U-Net decodes the fused bottleneck.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.blocks.attention import FeedForward, MultiHeadAttention
from organdetr.models.blocks.backbone import group_norm
from organdetr.models.blocks.deformable_attention import MSDeformAttn3d, token_centres
from organdetr.models.blocks.position import sine_position_3d
from organdetr.models.blocks.tokens import flatten_tokens, unflatten_tokens


class FSADLayer(nn.Module):
    """``forward(tokens [B, L, D], pos [1, L, D], reference [1, L, 3], value [B, S, D], shapes)``
    -> ``[B, L, D]``."""

    def __init__(
        self, d_model: int, nhead: int, levels: int, points: int, dim_feedforward: int, dropout: float
    ):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.cross_attn = MSDeformAttn3d(d_model, levels, nhead, points)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, pos: Tensor, reference: Tensor, value: Tensor, shapes) -> Tensor:
        q = tokens + pos
        tokens = self.norms[0](tokens + self.drop(self.self_attn(q, q, tokens)))
        ref = reference.expand(len(tokens), -1, -1)
        tokens = self.norms[1](tokens + self.drop(self.cross_attn(tokens + pos, ref, value, shapes)))
        return self.norms[2](tokens + self.drop(self.ffn(tokens)))


class FSADTransformer(nn.Module):
    """``forward([f_0, ..., f_{S-1}]) -> [f_0, ..., f_{S-2}, f_{S-1} + fused]`` (encoder features, finest
    first, ``f_s [B, C_s, I_s, J_s, K_s]``); only the bottleneck changes."""

    def __init__(
        self,
        channels: tuple[int, ...],
        d_model: int,
        nhead: int,
        points: int,
        dim_feedforward: int,
        layers: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.d_model = d_model
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c, d_model, 1), group_norm(d_model, 8)) for c in channels
        )
        self.level_embed = nn.Parameter(torch.zeros(len(channels), d_model))
        nn.init.normal_(self.level_embed, std=0.02)
        self.layers = nn.ModuleList(
            FSADLayer(d_model, nhead, len(channels), points, dim_feedforward, dropout) for _ in range(layers)
        )
        self.output_proj = nn.Conv3d(d_model, channels[-1], 1)
        nn.init.zeros_(self.output_proj.weight)  # starts as the identity on the bottleneck
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        projected = [proj(f) for proj, f in zip(self.input_proj, feats, strict=True)]
        shapes = [tuple(int(n) for n in p.shape[2:]) for p in projected]
        value = torch.cat([flatten_tokens(p) for p in projected], dim=1)  # [B, S, D], finest first
        bottleneck = projected[-1]
        tokens = flatten_tokens(bottleneck)
        pos = flatten_tokens(
            sine_position_3d(shapes[-1], self.d_model, device=tokens.device, dtype=tokens.dtype)
        )
        pos = pos + self.level_embed[-1]
        reference = token_centres(shapes[-1:], device=tokens.device, dtype=tokens.dtype)[None]  # [1, L, 3]
        for layer in self.layers:
            tokens = layer(tokens, pos, reference, value, shapes)
        fused = self.output_proj(unflatten_tokens(tokens, bottleneck))
        return [*feats[:-1], feats[-1] + fused]


__all__ = ["FSADLayer", "FSADTransformer"]
