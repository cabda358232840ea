"""Tests for organdetr.models.organdetr.proposals: anchors, per-class selection, dense assignment."""

from __future__ import annotations

import torch

from organdetr.models.organdetr.proposals import (
    ANCHOR_BASE_SIZE,
    ProposalHead,
    assign_proposals,
    inverse_sigmoid,
    select_per_class,
    token_anchors,
)

SHAPES = [(8, 8, 8), (4, 4, 4), (2, 2, 2)]


def test_anchor_layout():
    anchors, spacing = token_anchors(SHAPES)
    assert anchors.shape == (8**3 + 4**3 + 2**3, 6)
    assert torch.allclose(anchors[0], torch.tensor([1 / 16, 1 / 16, 1 / 16] + [ANCHOR_BASE_SIZE] * 3))
    assert torch.allclose(anchors[-1, 3:], torch.full((3,), ANCHOR_BASE_SIZE * 4))  # coarsest level: x4
    assert torch.allclose(spacing[0], torch.full((3,), 1 / 8)) and torch.allclose(
        spacing[-1], torch.full((3,), 0.5)
    )


def test_head_starts_at_its_anchors_with_a_low_score():
    head = ProposalHead(16, 3)
    anchors, _ = token_anchors(SHAPES)
    logits, boxes = head(torch.randn(2, len(anchors), 16), anchors)
    assert logits.shape == (2, len(anchors), 3)
    torch.testing.assert_close(boxes, anchors.expand(2, -1, -1), atol=1e-5, rtol=1e-4)  # zero-init deltas
    assert logits.sigmoid().median() < 0.02  # focal prior 0.01 (the bias; weights add spread)


def test_select_per_class_takes_each_class_best_tokens():
    logits = torch.full((1, 6, 2), -5.0)
    logits[0, 4, 0], logits[0, 1, 0] = 3.0, 2.0  # class 0: tokens 4 then 1
    logits[0, 2, 1], logits[0, 4, 1] = 1.0, 0.5  # class 1: tokens 2 then 4 (token 4 shared)
    boxes = torch.arange(6, dtype=torch.float32)[None, :, None].expand(1, 6, 6)
    selected, index = select_per_class(logits, boxes, 2)
    assert index.tolist() == [[4, 1, 2, 4]]  # slot c * k + r
    assert selected[0, :, 0].tolist() == [4.0, 1.0, 2.0, 4.0]


def test_assignment_central_region_nearest_token_and_smallest_wins():
    anchors, spacing = token_anchors(SHAPES)
    big = [0.5, 0.5, 0.5, 0.6, 0.6, 0.6]
    tiny = [0.53, 0.47, 0.52, 0.04, 0.04, 0.04]  # smaller than every token: still gets positives
    target = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([big, tiny])}
    index, positive = assign_proposals(anchors, spacing, target)
    centres = anchors[:, :3]
    inside_big = ((centres - 0.5).abs() <= 0.15 + 1e-6).all(-1)
    assert positive[inside_big].all()  # every token in the central half of the big organ
    assert not positive[((centres - 0.5).abs() > 0.3).any(-1)].any()  # nothing far outside
    assert (index[~positive] == -1).all()
    for level, (start, n) in enumerate([(0, 512), (512, 64), (576, 8)]):
        nearest = (centres[start : start + n] - torch.tensor(tiny[:3])).abs().max(-1).values.argmin() + start
        assert index[nearest] == 1, f"level {level}: the tiny organ owns its nearest token (smaller wins)"


def test_assignment_moves_with_the_organ():
    anchors, spacing = token_anchors(SHAPES)
    box = torch.tensor([[0.3, 0.3, 0.3, 0.2, 0.2, 0.2]])
    _, here = assign_proposals(anchors, spacing, {"labels": torch.tensor([0]), "boxes": box})
    shift = torch.tensor([0.25, 0.125, 0.25, 0, 0, 0])  # whole tokens of the finest level
    _, there = assign_proposals(anchors, spacing, {"labels": torch.tensor([0]), "boxes": box + shift})
    finest = anchors[:512, :3]
    moved = {tuple((c + shift[:3]).tolist()) for c in finest[here[:512]]}
    assert moved == {tuple(c.tolist()) for c in finest[there[:512]]}
    empty = assign_proposals(
        anchors, spacing, {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 6)}
    )
    assert not empty[1].any()


def test_inverse_sigmoid_round_trip():
    x = torch.linspace(0.01, 0.99, 50)
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()
