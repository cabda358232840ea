"""The overfit test: a tiny Organ-DETR memorises two small phantoms to box IoU > 0.8 for every organ."""

from __future__ import annotations

import pytest
import torch

from _cache_factory import make_cache  # tests/ is on sys.path (pytest rootdir import mode)
from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz, box_iou_3d
from organdetr.data.cache_dataset import CacheDataset, collate
from organdetr.training.checkpoint import load_detector
from organdetr.training.config import load_config
from organdetr.training.fit import fit


@pytest.mark.slow
def test_tiny_model_overfits_two_volumes(tmp_path):
    torch.set_num_threads(2)
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    cfg = load_config(
        "tiny",
        [f"data.cache_dir={cache}", "data.val_fraction=0", "data.batch_size=2", "train.epochs=500",
         "augment.enabled=false", "optim.lr=1e-3", "optim.warmup_steps=20", "optim.grad_clip=1.0",
         "train.progress=false", "train.log_every=50", "train.checkpoint_every=250"],
    )
    run = fit(cfg, tmp_path / "run")
    detector, _, plans = load_detector(run)  # end to end through the checkpoint
    size = torch.tensor(plans["input_size"], dtype=torch.float32).repeat(2)
    images, targets = collate([CacheDataset(cache)[i] for i in range(2)])
    results = detector.detect(images)
    for result, target in zip(results, targets, strict=True):
        assert len(target["labels"]) == 4
        for label, gt_box in zip(target["labels"].tolist(), box_cxcyczwhd_to_xyzxyz(target["boxes"]) * size,
                                 strict=True):
            k = int((result["labels"] == label).nonzero()[0, 0])
            iou = float(box_iou_3d(result["boxes"][k : k + 1], gt_box[None])[0][0, 0])
            assert iou > 0.8, f"{target['case_id']} class {label}: IoU {iou:.3f}"
            # sigmoid focal scores of a memorised organ sit near 0.45-0.5 (several dense-matched queries
            # share the evidence); an image-blind or untrained head stays near its 0.01 prior
            score = float(result["scores"][k])
            assert score > 0.3, f"{target['case_id']} class {label}: score {score:.3f}"
