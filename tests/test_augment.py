"""Augmentation: identity is exact, translations move boxes, rotations keep volumes, flips swap sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from organdetr.core.boxes.labels import boxes_from_seg
from organdetr.data.augment import (
    AugmentConfig,
    AugmentParams,
    augment_pair,
    left_right_swap_table,
    sample_params,
)

SIZE = (24, 28, 20)


def _pair():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=SIZE).astype(np.float32))
    seg = torch.zeros(SIZE, dtype=torch.int64)
    seg[4:10, 5:12, 3:9] = 1
    seg[14:20, 10:20, 8:16] = 2
    return image, seg


def _voxel_boxes(seg):
    labels, boxes = boxes_from_seg(seg, 3)
    size = torch.tensor(seg.shape).repeat(2)
    lo, hi = boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2
    return labels, torch.cat([lo, hi], 1) * size


def test_identity_params_are_exact():
    image, seg = _pair()
    out_image, out_seg = augment_pair(image, seg, AugmentParams())
    assert torch.equal(out_image, image) and torch.equal(out_seg, seg)


def test_disabled_config_draws_identity():
    params = sample_params(AugmentConfig(enabled=False), SIZE, np.random.default_rng(0))
    assert params == AugmentParams()


def test_grid_path_at_zoom_one_is_identity_to_float_precision():
    image, seg = _pair()
    params = AugmentParams(angles_deg=(1e-9, 0.0, 0.0))  # forces the resampling path
    out_image, out_seg = augment_pair(image, seg, params)
    assert torch.allclose(out_image, image, atol=1e-4)
    assert torch.equal(out_seg, seg)


@pytest.mark.parametrize("shift", [(3.0, 0.0, 0.0), (0.0, -2.0, 4.0), (-1.0, 5.0, -2.0)])
def test_translation_moves_boxes_by_the_translation(shift):
    image, seg = _pair()
    _, before = _voxel_boxes(seg)
    out_image, out_seg = augment_pair(image, seg, AugmentParams(shift=shift))
    labels, after = _voxel_boxes(out_seg)
    assert labels.tolist() == [0, 1]
    assert torch.allclose(after - before, torch.tensor(shift).repeat(2).float(), atol=1e-5)
    i, j, k = (int(s) for s in shift)
    src = image[tuple(slice(max(0, -t), n - max(0, t)) for t, n in zip((i, j, k), SIZE, strict=True))]
    dst = out_image[tuple(slice(max(0, t), n + min(0, t)) for t, n in zip((i, j, k), SIZE, strict=True))]
    assert torch.allclose(src, dst, atol=1e-4)


def test_organ_pushed_out_of_volume_leaves_targets():
    image, seg = _pair()
    _, out_seg = augment_pair(image, seg, AugmentParams(shift=(-12.0, 0.0, 0.0)))
    labels, _ = boxes_from_seg(out_seg, 3)
    assert labels.tolist() == [1]  # organ 1 (i in 4..9) left the grid, organ 2 (i in 14..19) moved to 2..7


def test_rotation_keeps_organ_voxel_counts():
    image, seg = _pair()
    _, out_seg = augment_pair(image, seg, AugmentParams(angles_deg=(8.0, -6.0, 10.0)))
    for c in (1, 2):
        before, after = int((seg == c).sum()), int((out_seg == c).sum())
        assert abs(after - before) / before < 0.05
    assert not torch.equal(out_seg, seg)


def test_zoom_scales_box_size():
    image, seg = _pair()
    _, before = _voxel_boxes(seg)
    _, out_seg = augment_pair(image, seg, AugmentParams(zoom=1.2))
    _, after = _voxel_boxes(out_seg)
    ratio = (after[:, 3:] - after[:, :3]) / (before[:, 3:] - before[:, :3])
    assert torch.all((ratio > 1.05) & (ratio < 1.4))


def test_swap_table_pairs_left_and_right():
    names = ["liver", "kidney_left", "kidney_right", "left_lung", "right_lung", "adrenal_gland_left"]
    table = left_right_swap_table(names)
    # seg values are dense index + 1
    assert table.tolist() == [0, 1, 3, 2, 5, 4, 6]


def test_flip_mirrors_i_and_swaps_labels():
    image, seg = _pair()
    table = left_right_swap_table(["kidney_left", "kidney_right"])
    out_image, out_seg = augment_pair(image, seg, AugmentParams(flip_lr=True), table)
    expected = torch.as_tensor(table)[seg.flip(0)]
    assert torch.equal(out_seg, expected)
    assert torch.allclose(out_image, image.flip(0), atol=1e-4)
    with pytest.raises(ValueError, match="swap table"):
        augment_pair(image, seg, AugmentParams(flip_lr=True))


def test_intensity_jitter_is_affine():
    image, seg = _pair()
    out_image, out_seg = augment_pair(image, seg, AugmentParams(intensity_scale=1.1, intensity_shift=-0.2))
    assert torch.allclose(out_image, image * 1.1 - 0.2)
    assert torch.equal(out_seg, seg)


def test_sampling_is_reproducible_from_the_seed():
    cfg = AugmentConfig(flip_lr=0.5)
    a = sample_params(cfg, SIZE, np.random.default_rng(7))
    b = sample_params(cfg, SIZE, np.random.default_rng(7))
    assert a == b
    assert sample_params(cfg, SIZE, np.random.default_rng(8)) != a


def test_config_validation():
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(flip_lr=1.5)
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=1.0)
