"""Tests for organdetr.models.organdetr.postprocess: best query per class, voxel boxes on the input grid."""

from __future__ import annotations

import torch

from organdetr.models.organdetr.postprocess import postprocess


def test_best_query_per_class_and_voxel_boxes():
    logits = torch.full((1, 3, 3), -5.0)  # 3 queries, K = 2 classes + no-object
    logits[0, 0] = torch.tensor([4.0, 0.0, 0.0])  # query 0: class 0, confident
    logits[0, 1] = torch.tensor([2.0, 0.0, 0.0])  # query 1: class 0, less confident (dropped, no NMS)
    logits[0, 2] = torch.tensor([0.0, 3.0, 0.0])  # query 2: class 1
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.5, 0.5, 0.25, 0.5], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.75, 0.5, 0.5, 0.5]]]
    )
    (result,) = postprocess({"pred_logits": logits, "pred_boxes": boxes}, (32, 64, 16))
    assert result["labels"].tolist() == [0, 1]  # sorted by score
    probs = logits.softmax(-1)[0]
    torch.testing.assert_close(result["scores"], torch.stack([probs[0, 0], probs[2, 1]]))
    torch.testing.assert_close(result["boxes"][0], torch.tensor([8.0, 24.0, 4.0, 24.0, 40.0, 12.0]))
    # query 2 extends past the grid on i (0.25 +- 0.25 -> [0, 16]) and k ([0.5, 1.0] * 16): clipped to it
    torch.testing.assert_close(result["boxes"][1], torch.tensor([0.0, 16.0, 8.0, 16.0, 48.0, 16.0]))


def test_boxes_are_clipped_to_the_grid():
    logits = torch.zeros(1, 1, 2)
    boxes = torch.tensor([[[0.9, 0.1, 0.5, 0.4, 0.4, 0.2]]])
    (result,) = postprocess({"pred_logits": logits, "pred_boxes": boxes}, (10, 10, 10))
    box = result["boxes"][0]
    assert (box >= 0).all() and (box <= 10).all()
    torch.testing.assert_close(box, torch.tensor([7.0, 0.0, 4.0, 10.0, 3.0, 6.0]))


def test_batch_and_empty_classes():
    out = {"pred_logits": torch.randn(3, 5, 4), "pred_boxes": torch.rand(3, 5, 6)}
    results = postprocess(out, (8, 8, 8))
    assert len(results) == 3
    assert all(sorted(r["labels"].tolist()) == [0, 1, 2] for r in results)
    assert all((r["scores"][:-1] >= r["scores"][1:]).all() for r in results)
