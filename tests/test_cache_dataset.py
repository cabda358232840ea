"""CacheDataset targets, case splits and the resumable epoch sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _cache_factory import CLASSES, make_cache  # tests/ is on sys.path (pytest rootdir import mode)
from organdetr.core.boxes.labels import boxes_from_seg
from organdetr.data.augment import AugmentConfig
from organdetr.data.cache_dataset import CacheDataset, EpochSampler, collate, dense_lut, split_cases
from organdetr.runtime.errors import InputError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"), num_cases=3, size=24)


def test_targets_follow_the_conventions(cache):
    ds = CacheDataset(cache)
    assert len(ds) == 3 and ds.num_classes == 4 and ds.input_size == (24, 24, 24)
    image, target = ds[0]
    assert image.shape == (1, 24, 24, 24) and image.dtype == torch.float32
    assert target["seg"].shape == (24, 24, 24) and target["seg"].dtype == torch.int64
    record = json.loads((cache / "cases" / "case_000.json").read_text())
    # boxes (normalised cxcyczwhd) agree with the cache's own voxel boxes
    by_name = {b["name"]: np.asarray(b["box_voxel"]) for b in record["boxes"]}
    names = list(CLASSES.values())
    for label, box in zip(target["labels"].tolist(), target["boxes"], strict=True):
        centre, size = box[:3].numpy() * 24, box[3:].numpy() * 24
        xyz = np.concatenate([centre - size / 2, centre + size / 2])
        np.testing.assert_allclose(xyz, by_name[names[label]], atol=1e-4)
    assert sorted(target["labels"].tolist()) == [0, 1, 2, 3]


def test_augmented_sample_is_reproducible_from_the_key(cache):
    ds = CacheDataset(cache, augment=AugmentConfig(p_spatial=1.0))
    a, ta = ds[(1, 123)]
    b, tb = ds[(1, 123)]
    c, _ = ds[(1, 124)]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert not torch.equal(a, c)


def test_boxes_from_seg_half_open():
    seg = torch.zeros(10, 10, 10, dtype=torch.int64)
    seg[2:5, 3:4, 0:10] = 2  # dense class 1
    labels, boxes = boxes_from_seg(seg, 2)
    assert labels.tolist() == [1]
    torch.testing.assert_close(boxes[0], torch.tensor([0.35, 0.35, 0.5, 0.3, 0.1, 1.0]))
    labels, boxes = boxes_from_seg(torch.zeros(4, 4, 4, dtype=torch.int64), 2)
    assert labels.shape == (0,) and boxes.shape == (0, 6)


def test_unknown_label_id_names_the_file(cache, tmp_path):
    ds = CacheDataset(cache)
    with pytest.raises(InputError, match=r"case_x_label.npy.*\[9\]"):
        ds._dense_seg(np.array([[[0, 1, 9]]], dtype=np.uint8), "case_x")
    assert dense_lut({2: "a", 5: "b"}).tolist() == [0, -1, 1, -1, -1, 2]


def test_split_cases():
    ids = [f"c{i}" for i in range(10)]
    train, val = split_cases(ids, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == ids
    assert split_cases(ids, 0.2, seed=0) == (train, val)
    assert split_cases(ids, 0.2, seed=1) != (train, val)
    assert split_cases(ids, 0.0, seed=0) == (ids, [])
    assert split_cases(["only"], 0.5, seed=0) == (["only"], [])
    assert split_cases(ids, 0.2, 0, val_cases=["c3"]) == ([c for c in ids if c != "c3"], ["c3"])
    rest = [c for c in ids if c not in ("c1", "c2")]
    assert split_cases(ids, 0.2, 0, train_cases=["c1", "c2"]) == (["c1", "c2"], rest)
    with pytest.raises(InputError, match="not in the cache: nope"):
        split_cases(ids, 0.2, 0, val_cases=["nope"])


def test_epoch_sampler_shards_pads_and_skips():
    full = list(EpochSampler(5, seed=3, epoch=2))
    assert sorted(i for i, _ in full) == [0, 1, 2, 3, 4]
    assert full == list(EpochSampler(5, seed=3, epoch=2))
    assert [i for i, _ in full] != [i for i, _ in EpochSampler(5, seed=3, epoch=3)]
    r0 = list(EpochSampler(5, seed=3, epoch=2, rank=0, world_size=2))
    r1 = list(EpochSampler(5, seed=3, epoch=2, rank=1, world_size=2))
    assert len(r0) == len(r1) == 3  # padded to 6 by wrap-around
    assert {i for i, _ in r0 + r1} == {0, 1, 2, 3, 4}
    skipped = list(EpochSampler(5, seed=3, epoch=2, rank=1, world_size=2, skip=1))
    assert skipped == r1[1:] and len(EpochSampler(5, seed=3, epoch=2, rank=1, world_size=2, skip=1)) == 2
    assert list(EpochSampler(5, seed=3, epoch=2, skip=2)) == full[2:]  # same augmentation seeds after resume


def test_collate(cache):
    ds = CacheDataset(cache)
    images, targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 1, 24, 24, 24) and [t["case_id"] for t in targets] == ["case_000", "case_001"]
