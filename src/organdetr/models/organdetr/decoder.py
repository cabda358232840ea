"""DETR decoder: N learned object queries attend to the encoded multiscale memory."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.blocks.attention import FeedForward, MultiHeadAttention


class DecoderLayer(nn.Module):
    """Pre-norm DETR decoder layer: query self-attention, cross-attention to memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
        )
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.cross_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        h = self.norm1(tgt)
        q = h + query_pos
        tgt = tgt + self.drop(self.self_attn(q, q, h))
        h = self.norm2(tgt)
        tgt = tgt + self.drop(self.cross_attn(h + query_pos, memory + memory_pos, memory))
        return tgt + self.drop(self.ffn(self.norm3(tgt)))


class Decoder(nn.Module):
    """Stack of decoder layers with learned query content and position embeddings.

    ``forward(memory [B, L, D], memory_pos [B|1, L, D]) -> [num_layers, B, N, D]`` (normalised output of
    every layer, for the auxiliary losses).
    """

    def __init__(
        self,
        num_queries: int,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
    ):
        super().__init__()
        self.query_pos = nn.Embedding(num_queries, d_model)
        self.query_content = nn.Embedding(num_queries, d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, memory: Tensor, memory_pos: Tensor) -> Tensor:
        b = memory.shape[0]
        query_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = self.query_content.weight.unsqueeze(0).expand(b, -1, -1)
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, memory_pos)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)
