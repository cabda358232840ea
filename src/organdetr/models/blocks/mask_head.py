"""The decoupled mask head: a query's mask is the dot product of its mask embedding with per-voxel features.

``MaskHead(d_model)(queries [B, N, D], features [B, D, I, J, K]) -> mask logits [B, N, I, J, K]``: a 3-layer
MLP turns each query into a mask embedding ``[B, N, D]``; its dot product with the feature vector of every
voxel is that voxel's mask logit (MaskFormer / Mask2Former). Masks are class-agnostic: the class comes from
the query's own class head, so one query can segment any organ. Used by MaskMed's masked multi-scale head
on every decoder level, and as ``model.mask_head`` on Organ-DETR (class, box and mask from one query).

:func:`attention_mask_from_logits` turns the masks of one prediction into the masked-attention mask of the
next layer (Mask2Former): a query attends only to voxels where its mask probability is >= 0.5, and to all
voxels when that set is empty.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.blocks.attention import MLP


class MaskHead(nn.Module):
    """``forward(queries [B, N, D], features [B, D, I, J, K]) -> mask logits [B, N, I, J, K]``."""

    def __init__(self, d_model: int, mask_dim: int | None = None, layers: int = 3):
        super().__init__()
        self.d_model, self.mask_dim = d_model, mask_dim or d_model
        self.mask_embed = MLP(d_model, d_model, self.mask_dim, layers)

    def forward(self, queries: Tensor, features: Tensor) -> Tensor:
        if queries.shape[-1] != self.d_model or features.shape[1] != self.mask_dim:
            raise ValueError(
                f"MaskHead(d_model={self.d_model}, mask_dim={self.mask_dim}): got queries "
                f"{tuple(queries.shape)} and features {tuple(features.shape)}"
            )
        return torch.einsum("bnd,bdijk->bnijk", self.mask_embed(queries), features)


@torch.no_grad()
def attention_mask_from_logits(mask_logits: Tensor, threshold: float = 0.5) -> Tensor:
    """``mask_logits [B, N, i, j, k]`` -> boolean ``[B, N, i*j*k]``, ``True`` where the query may attend
    (SDPA's convention; tokens in C order over ``(i, j, k)``, as ``tokens.flatten_tokens``).

    A voxel is open to a query when its mask probability is >= ``threshold``; a query whose mask is empty
    everywhere attends to every voxel (Mask2Former), so no attention row is ever fully masked.
    """
    allowed = mask_logits.flatten(2).sigmoid() >= threshold
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty


__all__ = ["MaskHead", "attention_mask_from_logits"]
