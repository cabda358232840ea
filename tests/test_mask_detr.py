"""Organ-DETR with model.mask_head: masks from the detector's queries, their loss, and predict's label map."""

from __future__ import annotations

import torch

from organdetr.models import detector_from_config
from organdetr.models.organdetr.mask_detr import MaskDETRDetector, label_map_from_queries
from organdetr.training.config import load_config


def test_label_map_takes_the_best_query_per_class_and_leaves_the_rest_background():
    logits = torch.tensor(
        [[[4.0, -4.0], [-4.0, 4.0], [-4.0, -4.0]]]
    )  # sigmoid: q0 class 0, q1 class 1, q2 none
    masks = torch.full((1, 3, 4, 1, 1), -6.0)
    masks[0, 0, 0] = 6.0  # q0 covers voxel 0
    masks[0, 1, 1:3] = 6.0  # q1 covers voxels 1, 2
    masks[0, 2, 3] = 6.0  # q2 (no class) covers voxel 3: stays background
    labels = label_map_from_queries(logits, masks, (4, 1, 1), "sigmoid")
    assert labels[0, :, 0, 0].tolist() == [1, 2, 2, 0]
    up = label_map_from_queries(logits, masks, (8, 2, 2), "sigmoid")  # upsampled to the input grid
    assert up.shape == (1, 8, 2, 2) and set(up.unique().tolist()) <= {0, 1, 2}
    softmax = torch.cat([logits, torch.zeros(1, 3, 1)], dim=-1)  # + no-object column
    softmax[0, 2, 2] = 8.0  # q2 is no-object
    assert label_map_from_queries(softmax, masks, (4, 1, 1), "softmax")[0, :, 0, 0].tolist() == [1, 2, 2, 0]


def test_organdetr_mask_head_trains_and_segments():
    cfg = load_config("tiny", ["model.mask_head=true", "model.denoising=true"])
    detector = detector_from_config(cfg, 2, (32, 32, 32))
    assert isinstance(detector, MaskDETRDetector)
    seg = torch.zeros(32, 32, 32, dtype=torch.int64)
    seg[4:14, 4:14, 4:14] = 1
    seg[18:28, 16:26, 10:30] = 2
    boxes = torch.tensor(
        [[0.28, 0.28, 0.28, 0.3125, 0.3125, 0.3125], [0.72, 0.65, 0.625, 0.3125, 0.3125, 0.625]]
    )
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes, "seg": seg}]
    out = detector.network(torch.randn(1, 1, 32, 32, 32), targets)
    assert out["pred_masks"].shape == (1, detector.network.num_queries, 8, 8, 8)  # finest level, stride 4
    losses = detector.loss(torch.randn(1, 1, 32, 32, 32), targets)
    assert losses["loss_mask"] > 0 and losses["loss_mask_dice"] > 0
    losses["loss"].backward()
    assert detector.network.mask_head.mask_embed.layers[0].weight.grad.abs().sum() > 0
    detector.eval()
    labels = detector.segment(torch.randn(1, 1, 32, 32, 32))
    assert labels.shape == (1, 32, 32, 32) and labels.max() <= 2
    assert {"labels", "scores", "boxes"} <= set(detector.detect(torch.randn(1, 1, 32, 32, 32))[0])
    plain = detector_from_config(load_config("tiny"), 2, (32, 32, 32))
    assert not hasattr(plain, "segment") and "pred_masks" not in plain.network(torch.randn(1, 1, 32, 32, 32))
