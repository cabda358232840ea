"""organdetr.models.organdetr.denoising: group layout, noise ranges, and what the attention mask blocks."""

from __future__ import annotations

import pytest
import torch

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz
from organdetr.models.organdetr.denoising import denoising_attention_mask, noised_queries, plan_denoising

K = 5


def _target(m: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(m, 3, generator=g) * 0.4 + 0.3
    size = torch.rand(m, 3, generator=g) * 0.2 + 0.1
    return {"labels": torch.randperm(K, generator=g)[:m], "boxes": torch.cat([centre, size], dim=1)}


def test_plan_groups_and_slots():
    targets = [_target(3), _target(1, 1), _target(0, 2)]
    plan = plan_denoising(targets, max_queries=20)
    assert (plan.groups, plan.pad, plan.size) == (3, 3, 18)  # 20 // (2 * 3) = 3 groups of 6 slots
    slots, organ = plan.positive_slots(0)
    assert slots.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14] and organ.tolist() == [0, 1, 2] * 3
    assert plan.negative_slots(1).tolist() == [3, 9, 15]
    assert plan.positive_slots(2)[0].numel() == 0
    assert plan_denoising([_target(0)], 20) is None  # no organ in the batch: no denoising
    assert plan_denoising(targets, 0) is None
    assert plan_denoising(targets, 4).groups == 1  # at least one group


def test_noise_ranges_of_positives_and_negatives():
    targets = [_target(4, s) for s in range(3)]
    plan = plan_denoising(targets, 80)
    labels, boxes, valid = noised_queries(plan, targets, K, box_noise=0.4, label_noise=0.0)
    for b, target in enumerate(targets):
        pos, organ = plan.positive_slots(b)
        neg = plan.negative_slots(b)
        assert valid[b, pos].all() and valid[b, neg].all() and valid[b].sum() == 2 * len(pos)
        assert torch.equal(labels[b, pos], target["labels"][organ])  # label_noise 0: labels kept
        gt = box_cxcyczwhd_to_xyzxyz(target["boxes"][organ])
        half = target["boxes"][organ][:, 3:].repeat(1, 2) / 2
        moved_pos = (box_cxcyczwhd_to_xyzxyz(boxes[b, pos]) - gt).abs() / half
        moved_neg = (box_cxcyczwhd_to_xyzxyz(boxes[b, neg]) - gt).abs() / half
        assert moved_pos.max() <= 0.4 + 1e-4  # each face moved by < box_noise x half-size
        assert moved_neg.max() <= 0.8 + 1e-4 and moved_neg.min() >= 0.4 - 1e-4  # between 1x and 2x
        assert moved_pos.max() > 0.1  # positives are noised too
    assert (boxes[..., 3:] > 0).all()


def test_label_noise_rate():
    targets = [_target(5, s) for s in range(40)]
    plan = plan_denoising(targets, 100)
    labels, _, valid = noised_queries(plan, targets, K, box_noise=0.4, label_noise=0.5,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    changed, total = 0, 0
    for b, target in enumerate(targets):
        pos, organ = plan.positive_slots(b)
        changed += int((labels[b, pos] != target["labels"][organ]).sum())
        total += len(pos)
    # resampled with p = 0.25, and a resample hits the same class 1 / K of the time: 0.2 expected
    assert 0.14 < changed / total < 0.26
    assert (labels[~valid] == K).all()  # padding slots get the padding label


def test_attention_mask_blocks_what_it_must():
    targets = [_target(3), _target(1, 1)]
    plan = plan_denoising(targets, 12)  # 2 groups of 6 slots
    _, _, valid = noised_queries(plan, targets, K, 0.4, 0.5)
    n = 4  # matching queries
    mask = denoising_attention_mask(plan, valid, n)
    dn = plan.size
    assert mask.shape == (2, dn + n, dn + n) and mask.dtype == torch.bool
    assert not mask[:, dn:, :dn].any()  # matching queries never see a denoising query
    assert mask[:, dn:, dn:].all()  # matching queries see each other
    group = torch.arange(dn) // (2 * plan.pad)
    for b in range(2):
        for q in range(dn):
            if not valid[b, q]:  # a padding slot's output is never used; what it reads does not matter
                continue
            seen = mask[b, q, :dn]
            assert not seen[group != group[q]].any()  # no other group
            assert torch.equal(seen[group == group[q]], valid[b, group == group[q]])  # own group, no padding
            assert mask[b, q, dn:].all()  # denoising queries may read the matching queries
        for col in (~valid[b]).nonzero().flatten().tolist():  # nobody but itself reads a padding slot
            assert mask[b, :, col].nonzero().flatten().tolist() == [col]
    assert mask.any(dim=-1).all()  # every query attends to something (SDPA would give NaN otherwise)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_noise_is_per_image(seed):
    targets = [_target(2, seed), _target(2, seed + 1)]
    plan = plan_denoising(targets, 8)
    _, boxes, _ = noised_queries(plan, targets, K, 0.4, 0.0, generator=torch.Generator().manual_seed(seed))
    pos0, _ = plan.positive_slots(0)
    assert not torch.allclose(boxes[0, pos0], boxes[1, pos0])
