"""Encoder proposals (two-stage Deformable DETR / DINO's query selection), per organ class.

Every memory token ``t`` (all encoded levels, finest first) has an *anchor*: a box centred on the token with a
level-dependent size (Deformable DETR: ``0.05 * 2 ** level`` of the grid per axis; or, with ``model.anchors:
data``, sizes per level from the training organs, :func:`anchor_sizes_from_boxes`). A dense head scores the
token for every organ class and regresses a box relative to its anchor in inverse-sigmoid space. Because the
box is regressed from the token that sees the organ, a translated organ moves its proposal with it: the
proposals are what make the detector translation-equivariant.

Selection: an organ occurs at most once per scan, so instead of a global top-k (DINO) the best
``k = queries_per_class`` tokens of *each* class become the decoder's initial reference boxes (detached,
as in DINO); query ``c * k + r`` starts from class ``c``'s ``r``-th best proposal. This keeps every organ
represented even when a large organ's proposals would outscore a small one's in a global ranking, and it
gives Dense Query Matching ``k`` nearby queries per organ to match one-to-many.

Training target (:func:`assign_proposals`): dense, FCOS-style (Co-DETR's collaborative one-to-many heads
show such encoder supervision speeds up DETR training): a token is a positive of an organ when its centre
lies in the organ box's central region (the central half per axis, and at least the nearest token of every
level); a token claimed by several organs goes to the smallest. Positives learn the organ's class (sigmoid
focal loss over all tokens and classes) and its box (L1 + GIoU).

Shapes: memory ``[B, S, D]``; anchors ``[S, 6]`` normalised cxcyczwhd; logits ``[B, S, K]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from organdetr.models.blocks.attention import MLP
from organdetr.models.blocks.deformable_attention import SpatialShapes, token_centres

ANCHOR_BASE_SIZE = 0.05
"""Anchor size of the finest level, as a fraction of the grid per axis; doubles per level."""
FOCAL_PRIOR = 0.01
"""Initial foreground probability of a sigmoid class head (RetinaNet's prior)."""


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[eps, 1 - eps]`` (Deformable DETR)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def focal_bias() -> float:
    """Class-head bias so that every class starts at :data:`FOCAL_PRIOR` probability."""
    return -math.log((1 - FOCAL_PRIOR) / FOCAL_PRIOR)


def token_anchors(
    spatial_shapes: SpatialShapes, device=None, dtype=torch.float32, level_sizes: tuple[float, ...] = ()
) -> tuple[Tensor, Tensor]:
    """``(anchors [S, 6] cxcyczwhd, spacing [S, 3])`` for the tokens of ``spatial_shapes`` (finest first).

    ``level_sizes``: ``(i, j, k)`` anchor size per level, flattened (``model.anchor_sizes``); empty =
    ``0.05 * 2 ** level``. ``spacing`` is each token's voxel size in normalised units (``1 / I_l`` ...),
    used by the assignment.
    """
    if level_sizes and len(level_sizes) != 3 * len(spatial_shapes):
        raise ValueError(f"{len(level_sizes)} anchor sizes for {len(spatial_shapes)} levels (3 per level)")
    centres = token_centres(spatial_shapes, device, dtype)
    sizes, spacing = [], []
    for level, shape in enumerate(spatial_shapes):
        n = math.prod(shape)
        size = level_sizes[3 * level : 3 * level + 3] if level_sizes else (ANCHOR_BASE_SIZE * 2.0**level,) * 3
        sizes.append(torch.tensor(size, device=device, dtype=dtype).expand(n, 3))
        spacing.append(torch.tensor([1.0 / s for s in shape], device=device, dtype=dtype).expand(n, 3))
    return torch.cat([centres, torch.cat(sizes)], dim=1), torch.cat(spacing)


def anchor_sizes_from_boxes(sizes: Tensor, levels: int) -> tuple[float, ...]:
    """Anchor sizes per level from organ box sizes ``[N, 3]`` (normalised (i, j, k) extents, e.g. every
    training organ's median size) -> ``(i, j, k) * levels`` flattened, finest level first.

    The organs are ranked by volume and cut into ``levels`` groups of equal count; level ``l``'s anchor is
    the per-axis geometric mean of group ``l``: the finest level anchors the smallest organs, the coarsest the
    largest, as a token's receptive field grows with its level. With fewer organs than levels the last
    group repeats.
    """
    sizes = sizes.double().clamp(min=1e-4, max=1.0)
    order = sizes.prod(dim=1).argsort()
    groups = [chunk for chunk in order.tensor_split(levels) if chunk.numel()]
    out: list[float] = []
    for level in range(levels):
        group = sizes[groups[min(level, len(groups) - 1)]]
        out.extend(float(v) for v in group.log().mean(dim=0).exp())
    return tuple(round(v, 4) for v in out)


class ProposalHead(nn.Module):
    """Dense class + box head on encoder memory (Deformable DETR's ``enc_output`` + heads).

    ``forward(memory [B, S, D], anchors [S, 6]) -> (logits [B, S, K], boxes [B, S, 6] sigmoid cxcyczwhd)``.
    """

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.class_head = nn.Linear(d_model, num_classes)
        self.box_head = MLP(d_model, d_model, 6, 3)
        nn.init.constant_(self.class_head.bias, focal_bias())
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def forward(self, memory: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        h = self.norm(self.proj(memory))
        with torch.autocast(memory.device.type, enabled=False):  # box maths in fp32 under autocast
            boxes = (self.box_head(h.float()) + inverse_sigmoid(anchors.float())).sigmoid()
        return self.class_head(h), boxes


def select_per_class(logits: Tensor, boxes: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` tokens of every class -> ``(boxes [B, K * k, 6], token index [B, K * k])``.

    Slot ``c * k + r`` holds class ``c``'s ``r``-th best token (descending score). Tokens may repeat across
    classes.
    """
    b, s, num_classes = logits.shape
    k = min(k, s)
    index = logits.transpose(1, 2).topk(k, dim=-1).indices.reshape(b, num_classes * k)  # [B, K*k]
    selected = boxes.gather(1, index[..., None].expand(-1, -1, boxes.shape[-1]))
    return selected, index


@torch.no_grad()
def assign_proposals(anchors: Tensor, spacing: Tensor, target: dict) -> tuple[Tensor, Tensor]:
    """Dense positives of one image: ``(target_index [S] int64, -1 = background; positive mask [S] bool)``.

    Token ``t`` is a positive of organ ``m`` when, on every axis, ``|centre_t - centre_m| <=
    max(size_m / 4, spacing_t / 2)``: inside the box's central half, and always the nearest token of each
    level (a small organ still gets a positive on every level). Ties go to the smallest organ (FCOS).
    """
    boxes = target["boxes"].to(anchors.device, anchors.dtype)  # [M, 6] cxcyczwhd
    s = anchors.shape[0]
    if boxes.numel() == 0:
        return torch.full((s,), -1, dtype=torch.int64, device=anchors.device), torch.zeros(
            s, dtype=torch.bool, device=anchors.device
        )
    distance = (anchors[:, None, :3] - boxes[None, :, :3]).abs()  # [S, M, 3]
    radius = torch.maximum(boxes[None, :, 3:] / 4, spacing[:, None, :] / 2)
    inside = (distance <= radius).all(-1)  # [S, M]
    volume = boxes[:, 3:].prod(-1)  # [M]
    cost = torch.where(
        inside, volume[None, :].expand(s, -1), torch.full_like(inside, math.inf, dtype=volume.dtype)
    )
    best_cost, best = cost.min(dim=1)
    positive = torch.isfinite(best_cost)
    return torch.where(positive, best, torch.full_like(best, -1)), positive


__all__ = [
    "ANCHOR_BASE_SIZE",
    "ProposalHead",
    "anchor_sizes_from_boxes",
    "assign_proposals",
    "focal_bias",
    "inverse_sigmoid",
    "select_per_class",
    "token_anchors",
]
