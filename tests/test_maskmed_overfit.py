"""The MaskMed overfit test: the tiny preset memorises two 32^3 phantoms to Dice > 0.9 for every organ."""

from __future__ import annotations

import pytest
import torch

from _cache_factory import make_cache  # tests/ is on sys.path (pytest rootdir import mode)
from organdetr.data.cache_dataset import CacheDataset, collate
from organdetr.evaluation.segmentation import case_scores
from organdetr.training.checkpoint import load_detector
from organdetr.training.config import load_config
from organdetr.training.fit import fit


@pytest.mark.slow
def test_tiny_maskmed_overfits_two_volumes(tmp_path):
    torch.set_num_threads(1)
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    cfg = load_config(
        "maskmed_tiny",
        [f"data.cache_dir={cache}", "data.val_fraction=0", "data.batch_size=2", "train.epochs=150",
         "augment.enabled=false", "train.progress=false", "train.log_every=50", "train.checkpoint_every=150"],
    )  # fmt: skip
    run = fit(cfg, tmp_path / "run")
    detector, _, _ = load_detector(run)  # end to end through the checkpoint
    images, targets = collate([CacheDataset(cache)[i] for i in range(2)])
    labels = detector.segment(images)
    for label_map, target in zip(labels, targets, strict=True):
        dice = case_scores(label_map.numpy(), target["seg"].numpy(), [1, 2, 3, 4])[:, 0]
        assert (dice > 0.9).all(), f"{target['case_id']}: Dice per organ {dice.round(3).tolist()}"
    # the boxes read off the masks are the organs' boxes
    for result, target in zip(detector.detect(images), targets, strict=True):
        assert sorted(result["labels"].tolist()) == sorted(target["labels"].tolist())
