"""3D multi-scale deformable attention (Deformable DETR, Zhu et al. 2021), pure PyTorch.

Each query looks at ``n_points`` sampling locations per head and per pyramid level, placed relative to its
reference (a point or a box), and returns the attention-weighted sum of the values trilinearly interpolated
there. The cost is ``O(Lq * heads * levels * points)`` instead of ``O(Lq * S)`` for dense attention over
``S`` memory tokens, so a query can read the finest level of a 3D pyramid.

Sampling is ``torch.nn.functional.grid_sample`` on 5-D tensors (no compiled extension): it runs on CPU and
GPU, under autocast, and exports to ONNX (opset >= 20, whose ``GridSample`` takes volumes).

Coordinates. Locations are normalised ``(i, j, k)`` in ``[0, 1]`` per axis (the model-box convention of
docs/conventions.md: voxel ``v`` of a level with ``n`` voxels spans ``[v / n, (v + 1) / n)``, its centre is
``(v + 0.5) / n``), which is ``grid_sample(..., align_corners=False)`` after mapping to ``[-1, 1]`` and
reversing the axis order: for a ``[N, C, I, J, K]`` volume ``grid_sample`` reads its grid's last dimension as
``(x, y, z) = (k, j, i)``. Outside the volume the value is zero (``padding_mode="zeros"``).

:func:`ms_deform_attn_3d` is the fast path; :func:`ms_deform_attn_3d_reference` computes the same with
explicit corner gathers and is the test oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SpatialShapes = list[tuple[int, int, int]]


def token_centres(spatial_shapes: SpatialShapes, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised ``(i, j, k)`` centres of every token of every level -> ``[S, 3]`` (levels concatenated
    in order, each in C order over ``(i, j, k)``, as ``tokens.flatten_tokens`` lays them out)."""
    centres = []
    for shape in spatial_shapes:
        axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [I, J, K, 3]
        centres.append(grid.reshape(-1, 3))
    return torch.cat(centres, dim=0)


def _split_levels(value: Tensor, spatial_shapes: SpatialShapes) -> list[Tensor]:
    """``value [B, S, heads, head_dim]`` -> per level ``[B * heads, head_dim, I_l, J_l, K_l]``."""
    b, _, heads, head_dim = value.shape
    sizes = [i * j * k for i, j, k in spatial_shapes]
    if sum(sizes) != value.shape[1]:
        raise ValueError(
            f"value has {value.shape[1]} tokens, spatial shapes {spatial_shapes} give {sum(sizes)}"
        )
    levels = []
    for tokens, shape in zip(value.split(sizes, dim=1), spatial_shapes, strict=True):
        # token order is C order over (i, j, k) (tokens.flatten_tokens)
        levels.append(tokens.flatten(2).transpose(1, 2).reshape(b * heads, head_dim, *shape))
    return levels


def ms_deform_attn_3d(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention core.

    Args:
        value: ``[B, S, heads, head_dim]``, the levels' tokens concatenated finest first, each in C order over
            ``(i, j, k)``; ``S = sum(I_l * J_l * K_l)``.
        spatial_shapes: ``[(I_l, J_l, K_l)]`` per level.
        sampling_locations: ``[B, Lq, heads, levels, points, 3]`` normalised ``(i, j, k)`` in ``[0, 1]``.
        attention_weights: ``[B, Lq, heads, levels, points]`` (softmax over levels x points by the caller).

    Returns:
        ``[B, Lq, heads * head_dim]``.
    """
    b, _, heads, head_dim = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    # The grid stays at least fp32 under bf16 autocast: bf16's 8-bit mantissa would move a normalised
    # coordinate by up to 0.4 %, a quarter voxel at 64^3. grid_sample needs one dtype for volume and grid,
    # so the volume is read in the grid's dtype (what CPU and CUDA autocast do for grid_sample anyway).
    dtype = torch.promote_types(sampling_locations.dtype, torch.float32)
    with torch.autocast(device_type=value.device.type, enabled=False):
        # [0, 1] (i, j, k) -> [-1, 1] (x, y, z) = (k, j, i); heads folded into the batch: [B*h, Lq, L, P, 3]
        grids = (2 * sampling_locations.to(dtype) - 1).flip(-1).transpose(1, 2).flatten(0, 1)
        samples = []
        for level, volume in enumerate(_split_levels(value, spatial_shapes)):
            grid = grids[:, :, level, :, None, :]  # [B*h, Lq, P, 1, 3]: an (Lq, P, 1) "output volume"
            sampled = F.grid_sample(
                volume.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            samples.append(sampled[..., 0])  # [B*h, head_dim, Lq, P]
        stacked = torch.stack(samples, dim=-2)  # [B*h, head_dim, Lq, L, P]
        weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, lq, n_levels, n_points)
        out = (stacked * weights.to(dtype)).sum(dim=(-1, -2))  # [B*h, head_dim, Lq]
    return out.reshape(b, heads * head_dim, lq).transpose(1, 2)


def ms_deform_attn_3d_reference(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Same as :func:`ms_deform_attn_3d`, by explicit trilinear interpolation (8 corner gathers per sample).

    Slow and memory-hungry; the reference the fast path is tested against.
    """
    b, _, heads, head_dim = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    out = value.new_zeros(b, lq, heads, head_dim)
    sizes = [i * j * k for i, j, k in spatial_shapes]
    for level, (tokens, shape) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes, strict=True)):
        per_head = tokens.permute(0, 2, 1, 3)  # [B, h, S_l, hd]
        upper = torch.tensor(shape, device=value.device)
        # continuous voxel coordinate whose integer values are voxel centres
        coord = sampling_locations[:, :, :, level] * upper.to(value.dtype) - 0.5  # [B, Lq, h, P, 3]
        base = coord.floor()
        frac = coord - base
        base = base.long()
        for corner in range(8):
            offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=value.device)
            idx = base + offset  # [B, Lq, h, P, 3]
            weight = torch.where(offset.bool(), frac, 1 - frac).prod(-1)  # [B, Lq, h, P]
            inside = ((idx >= 0) & (idx < upper)).all(-1)
            flat = (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]
            flat = torch.where(inside, flat, torch.zeros_like(flat))
            index = flat.permute(0, 2, 1, 3).reshape(b, heads, lq * n_points, 1).expand(-1, -1, -1, head_dim)
            gathered = per_head.gather(2, index).view(b, heads, lq, n_points, head_dim).permute(0, 2, 1, 3, 4)
            w = (weight * inside * attention_weights[:, :, :, level]).unsqueeze(-1)  # [B, Lq, h, P, 1]
            out = out + (gathered * w).sum(dim=3)
    return out.reshape(b, lq, heads * head_dim)


def _direction_grid(n_heads: int) -> Tensor:
    """``[n_heads, 3]`` distinct unit-ish directions (cube faces, then edges, then corners), one per head,
    scaled so the largest component is 1 (Deformable DETR's init spreads heads around a circle)."""
    faces = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    corners = [(a, b, c) for a in (1, -1) for b in (1, -1) for c in (1, -1)]
    edges = [
        v
        for v in ((a, b, 0) for a in (1, -1) for b in (1, -1))
        for v in (v, (v[0], 0, v[1]), (0, v[0], v[1]))
    ]
    directions = (faces + corners + edges) * math.ceil(n_heads / 26)
    return torch.tensor(directions[:n_heads], dtype=torch.float32)


class MSDeformAttn3d(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR's ``MSDeformAttn`` in 3D).

    ``forward(query [B, Lq, D], reference [B, Lq, 3 | 6], value [B, S, D], spatial_shapes) -> [B, Lq, D]``.

    ``reference`` is a point ``(ci, cj, ck)`` or a box ``(ci, cj, ck, wi, wj, wk)`` (normalised cxcyczwhd),
    the same on every level (the volumes of a batch share one grid, so there is no padding to correct for):

    * point: ``location = ref + offset / (I_l, J_l, K_l)`` - offsets in voxels of each level;
    * box:   ``location = ref_centre + offset / n_points * ref_size / 2`` - points spread over the box, so
      a large organ is read at a coarse spacing and a small one finely (Deformable DETR's box variant).

    Attention weights are a softmax over all ``levels x points`` of a head.
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 3)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights, bias = one direction per head at growing radii,
        uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        grid = _direction_grid(self.n_heads)  # [h, 3]
        grid = grid[:, None, None, :].repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def sampling(
        self, query: Tensor, reference: Tensor, spatial_shapes: SpatialShapes
    ) -> tuple[Tensor, Tensor]:
        """``(locations [B, Lq, h, L, P, 3], weights [B, Lq, h, L, P])`` for ``query`` at ``reference``."""
        b, lq, _ = query.shape
        h, n_l, n_p = self.n_heads, self.n_levels, self.n_points
        if len(spatial_shapes) != n_l:
            raise ValueError(f"module has {n_l} levels, got spatial shapes for {len(spatial_shapes)}")
        if reference.shape[-1] not in (3, 6):
            raise ValueError(f"reference must end in 3 (points) or 6 (boxes), got {tuple(reference.shape)}")
        weights = self.attention_weights(query).view(b, lq, h, n_l * n_p).softmax(-1).view(b, lq, h, n_l, n_p)
        # locations in (at least) fp32 even under bf16 autocast: see ms_deform_attn_3d
        dtype = torch.promote_types(query.dtype, torch.float32)
        with torch.autocast(device_type=query.device.type, enabled=False):
            offsets = self._offsets(query.to(dtype)).view(b, lq, h, n_l, n_p, 3)
            ref = reference.to(dtype)[:, :, None, None, None, :]
            if reference.shape[-1] == 3:
                normaliser = torch.tensor(spatial_shapes, dtype=dtype, device=query.device)  # [L, 3]
                locations = ref + offsets / normaliser[None, None, None, :, None, :]
            else:
                locations = ref[..., :3] + offsets / n_p * ref[..., 3:] * 0.5
        return locations, weights

    def _offsets(self, query: Tensor) -> Tensor:
        """``sampling_offsets(query)`` in ``query``'s dtype (fp32 / fp64), whatever the layer's dtype."""
        layer = self.sampling_offsets
        return F.linear(query, layer.weight.to(query.dtype), layer.bias.to(query.dtype))

    def forward(
        self, query: Tensor, reference: Tensor, value: Tensor, spatial_shapes: SpatialShapes
    ) -> Tensor:
        b, s, _ = value.shape
        v = self.value_proj(value).view(b, s, self.n_heads, self.d_model // self.n_heads)
        locations, weights = self.sampling(query, reference, spatial_shapes)
        return self.output_proj(ms_deform_attn_3d(v, spatial_shapes, locations, weights))


__all__ = [
    "MSDeformAttn3d",
    "SpatialShapes",
    "ms_deform_attn_3d",
    "ms_deform_attn_3d_reference",
    "token_centres",
]
