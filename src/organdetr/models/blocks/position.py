"""3D sine positional encoding (fixed, no parameters; DETR's 2D encoding extended to three axes)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_3d(
    shape: tuple[int, int, int],
    d_model: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sine/cosine encoding of voxel centres on a grid ``(I, J, K)`` -> ``[1, d_model, I, J, K]``.

    Each axis gets ``2 * (d_model // 6)`` channels (sin, cos of ``(index + 0.5) / size * 2 pi`` at
    geometric frequencies); remaining channels are zero. Coordinates are normalised per axis, so the
    encoding is resolution-independent (a level of a 32^3 grid and of a 64^3 grid see the same range).
    """
    per_axis = 2 * (d_model // 6)
    if per_axis == 0:
        raise ValueError(f"d_model={d_model} is too small for a 3D sine encoding (needs >= 6)")
    freq = temperature ** (torch.arange(per_axis // 2, device=device, dtype=dtype) * 2 / per_axis)
    axes = []
    for axis, size in enumerate(shape):
        coord = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size * (2 * math.pi)
        angles = coord[:, None] / freq  # [size, per_axis/2]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1).t()  # [per_axis, size]
        view = [per_axis, 1, 1, 1]
        view[axis + 1] = size
        axes.append(emb.reshape(view).expand(per_axis, *shape))
    pos = torch.cat(axes, dim=0)
    if pos.shape[0] < d_model:
        pos = torch.cat([pos, pos.new_zeros(d_model - pos.shape[0], *shape)], dim=0)
    return pos.unsqueeze(0)


def sine_embed_coordinates(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine embedding of normalised coordinates ``[..., C] -> [..., C * num_feats]``.

    Each coordinate in ``[0, 1]`` gets ``num_feats`` channels (alternating sin / cos of ``coord * 2 pi`` at
    geometric frequencies; DAB-DETR / DINO's ``gen_sineembed_for_position``). For a reference box
    ``(ci, cj, ck, wi, wj, wk)`` this is the input of the decoder's query-position MLP.
    """
    if num_feats < 2 or num_feats % 2:
        raise ValueError(f"num_feats must be an even number >= 2, got {num_feats}")
    index = torch.arange(num_feats, device=coords.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)
    angles = coords.float()[..., None] * (2 * math.pi) / dim_t  # [..., C, F]
    emb = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)
    return emb.flatten(-2).to(coords.dtype)
