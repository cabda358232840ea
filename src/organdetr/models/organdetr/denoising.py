"""Contrastive denoising queries (DINO, Zhang et al. 2023; after DN-DETR) for 3D boxes.

During training only, noised copies of each image's ground-truth boxes enter the decoder as extra
queries. They come in ``G`` *groups*; a group holds ``P`` positive and ``P`` negative slots, ``P`` = the
largest number of organs of an image in the batch (images with fewer organs leave slots as padding):

* positive ``j``: organ ``j``'s box with every face moved by up to ``box_noise`` x its half-size; it must
  reconstruct the organ's box and class;
* negative ``j``: moved by ``1..2`` x that amount; it must predict "no object" (rejecting a near miss);
* labels of both are resampled uniformly with probability ``label_noise / 2``; the query content is the
  embedding of the (noised) label, the reference box the noised box.

Attention mask (:func:`denoising_attention_mask`, ``True`` = may attend, queries ordered
``[denoising (G * 2P), matching (N)]``): matching queries never see denoising ones (they would read the
answer); a group never sees another group; denoising queries may read the matching queries (as in DINO);
padding slots are seen by nobody but themselves.

The matching of denoising queries is known by construction (:class:`DenoisingPlan`), so the criterion
needs no Hungarian solve for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz, box_xyzxyz_to_cxcyczwhd

MIN_SIZE = 1e-3
"""Smallest extent (normalised) a noised box keeps per axis."""


@dataclass
class DenoisingPlan:
    """Layout of the denoising queries of one batch (``G`` groups of ``2 * P`` slots).

    ``num_organs[b]``: organs of image ``b``; slot ``g * 2P + j`` is the positive of organ ``j`` in group
    ``g`` (when ``j < num_organs[b]``), ``g * 2P + P + j`` its negative.
    """

    groups: int
    pad: int
    num_organs: list[int]

    @property
    def size(self) -> int:
        """Denoising queries per image (``G * 2P``)."""
        return self.groups * 2 * self.pad

    def positive_slots(self, image: int) -> tuple[Tensor, Tensor]:
        """``(query slots [G * M], organ index [G * M])`` of the positives of ``image``."""
        m = self.num_organs[image]
        organ = torch.arange(m).repeat(self.groups)
        group = torch.arange(self.groups).repeat_interleave(m)
        return group * 2 * self.pad + organ, organ

    def negative_slots(self, image: int) -> Tensor:
        """Query slots ``[G * M]`` of the negatives of ``image``."""
        slots, _ = self.positive_slots(image)
        return slots + self.pad


def plan_denoising(targets: list[dict], max_queries: int) -> DenoisingPlan | None:
    """The largest whole number of groups that fits ``max_queries`` (at least 1); ``None`` when no image
    of the batch has an organ or ``max_queries`` is 0."""
    num_organs = [int(t["labels"].numel()) for t in targets]
    pad = max(num_organs, default=0)
    if pad == 0 or max_queries <= 0:
        return None
    return DenoisingPlan(groups=max(1, max_queries // (2 * pad)), pad=pad, num_organs=num_organs)


def noised_queries(
    plan: DenoisingPlan,
    targets: list[dict],
    num_classes: int,
    box_noise: float,
    label_noise: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(labels [B, G*2P] int64, boxes [B, G*2P, 6] cxcyczwhd, valid [B, G*2P] bool)``.

    Padding slots get label ``num_classes`` (the extra "padding" embedding) and a centred box; ``valid``
    marks the real slots.
    """
    b = len(targets)
    device = targets[0]["boxes"].device
    labels = torch.full((b, plan.size), num_classes, dtype=torch.int64, device=device)
    boxes = torch.tensor([0.5, 0.5, 0.5, 0.1, 0.1, 0.1], device=device).repeat(b, plan.size, 1)
    valid = torch.zeros(b, plan.size, dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        m = plan.num_organs[i]
        if m == 0:
            continue
        pos, organ = plan.positive_slots(i)
        slots = torch.cat([pos, pos + plan.pad]).to(device)
        organ = torch.cat([organ, organ]).to(device)
        negative = torch.cat([torch.zeros(len(pos)), torch.ones(len(pos))]).to(device, torch.bool)
        n = len(slots)

        def rand(*shape):
            return torch.rand(*shape, generator=generator).to(device)

        gt_labels = target["labels"][organ]
        flip = rand(n) < label_noise * 0.5
        random_labels = (rand(n) * num_classes).long().clamp(max=num_classes - 1)
        labels[i, slots] = torch.where(flip, random_labels, gt_labels)

        gt = target["boxes"][organ].float()
        corners = box_cxcyczwhd_to_xyzxyz(gt)
        half = gt[:, 3:].repeat(1, 2) / 2  # per face: half the extent of its axis
        sign = rand(n, 6).round() * 2 - 1
        magnitude = rand(n, 6) + negative[:, None].float()  # positives [0, 1), negatives [1, 2)
        noised = (corners + sign * magnitude * half * box_noise).clamp(0, 1)
        lo = torch.minimum(noised[:, :3], noised[:, 3:])
        hi = torch.maximum(noised[:, :3], noised[:, 3:])
        hi = torch.maximum(hi, lo + MIN_SIZE)
        boxes[i, slots] = box_xyzxyz_to_cxcyczwhd(torch.cat([lo, hi], dim=1)).clamp(MIN_SIZE, 1 - MIN_SIZE)
        valid[i, slots] = True
    return labels, boxes, valid


def denoising_attention_mask(plan: DenoisingPlan, valid: Tensor, num_queries: int) -> Tensor:
    """Boolean self-attention mask ``[B, T, T]`` (``T = G * 2P + N``), ``True`` = may attend."""
    b, dn = valid.shape
    total = dn + num_queries
    device = valid.device
    group = torch.arange(dn, device=device) // (2 * plan.pad)
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[dn:, dn:] = True  # matching <-> matching
    mask[:dn, :dn] = group[:, None] == group[None, :]  # within a group
    mask[:dn, dn:] = True  # denoising -> matching (read-only for them)
    mask = mask.expand(b, -1, -1).clone()
    seen = torch.cat([valid, torch.ones(b, num_queries, dtype=torch.bool, device=device)], dim=1)
    mask &= seen[:, None, :]  # nobody reads a padding slot ...
    eye = torch.eye(total, dtype=torch.bool, device=device)[None]
    return mask | (eye & ~seen[:, :, None])  # ... but a padding slot reads itself (SDPA needs one key)


__all__ = [
    "DenoisingPlan",
    "denoising_attention_mask",
    "noised_queries",
    "plan_denoising",
]
