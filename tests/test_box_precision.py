"""Issue 20's switches for precise boxes: unbiased augmentation, exact sub-voxel targets, 3D attention
directions, a shared box head, data-sized anchors, IoU-aware classification, a smaller lr for the offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _cache_factory import CLASSES, phantom  # tests/ is on sys.path (pytest rootdir import mode)
from organdetr.core.boxes.labels import boxes_from_seg
from organdetr.core.boxes.ops import box_iou_3d, paired_box_iou_3d
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume
from organdetr.data.augment import AugmentConfig, AugmentParams, augment_pair, sample_params, transform_boxes
from organdetr.data.cache_dataset import CacheDataset
from organdetr.models import detector_from_config
from organdetr.models.config import model_preset
from organdetr.models.organdetr.criterion import quality_focal_loss
from organdetr.models.organdetr.network import OrganDETR
from organdetr.models.organdetr.proposals import anchor_sizes_from_boxes, token_anchors
from organdetr.preprocessing.cache import write_case
from organdetr.preprocessing.plans import PreprocessConfig, make_plans
from organdetr.preprocessing.resampling import preprocess_volume
from organdetr.runtime.atomic import write_json
from organdetr.training.config import load_config
from organdetr.training.fit import fit
from organdetr.training.optim import build_optimizer

GRID = (16, 16, 16)


@pytest.fixture(scope="module")
def coarse_cache(tmp_path_factory):
    """Two 32^3 phantoms squeezed onto a 16^3 grid: every organ edge of the original lies on a half voxel
    of the grid, which label boxes cannot express."""
    cache = tmp_path_factory.mktemp("coarse_cache")
    cfg = PreprocessConfig(input_size=GRID, fit="resize")
    write_json(cache / "plans.json", make_plans(cfg, CLASSES))
    geom = Geometry((32,) * 3, (1.5,) * 3, (-20.0, 10.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for n in range(2):
        image, labels = phantom(32, seed=n)
        volumes = Volume(image, geom), cfg, Volume(labels, geom), CLASSES
        grid_image, grid_label, record = preprocess_volume(*volumes)
        write_case(cache, f"case_{n:03d}", grid_image, grid_label, record)
    return cache


def _voxel_boxes(target: dict) -> np.ndarray:
    """Normalised cxcyczwhd targets -> grid voxel xyzxyz ``[M, 6]``."""
    boxes = target["boxes"].double().numpy()
    size = np.asarray(GRID * 2, dtype=np.float64)
    return np.concatenate([boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2], 1) * size


# ------------------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize(
    "params",
    [
        AugmentParams(shift=(3.0, -2.0, 1.0)),
        AugmentParams(flip_lr=True),
        AugmentParams(zoom=1.5),
        AugmentParams(flip_lr=True, shift=(-4.0, 0.0, 2.0)),
    ],
)
def test_transform_boxes_follows_the_labels_exactly(params):
    """A voxel-aligned cuboid moved by augment_pair has exactly the box transform_boxes predicts."""
    size = (32, 32, 32)
    seg = torch.zeros(size, dtype=torch.int64)
    seg[5:12, 8:20, 10:14] = 1
    _, moved = augment_pair(torch.zeros(size), seg, params, np.arange(2))
    labels, boxes = boxes_from_seg(moved, 1)
    lo, hi = (boxes[0, :3] - boxes[0, 3:] / 2) * 32, (boxes[0, :3] + boxes[0, 3:] / 2) * 32
    predicted = transform_boxes(np.array([[5, 8, 10, 12, 20, 14.0]]), params, size)[0]
    np.testing.assert_allclose(predicted, torch.cat([lo, hi]).numpy(), atol=1e-4)


def test_transform_boxes_zoom_scales_about_the_centre_and_clips():
    size = (20, 20, 20)
    box = np.array([[8.0, 8.0, 8.0, 12.0, 12.0, 12.0]])  # centred
    np.testing.assert_allclose(transform_boxes(box, AugmentParams(zoom=2.0), size), [[6, 6, 6, 14, 14, 14]])
    gone = transform_boxes(box, AugmentParams(shift=(30.0, 0.0, 0.0)), size)
    assert gone[0, 3] - gone[0, 0] == 0  # moved off the grid: zero extent, the caller drops it


def test_in_plane_rotation_turns_about_k_only():
    cfg = AugmentConfig(p_spatial=1.0, rotate_deg=10.0, rotate_axes="k")
    rng = np.random.default_rng(0)
    for _ in range(20):
        angles = sample_params(cfg, (32, 32, 32), rng).angles_deg
        assert angles[:2] == (0.0, 0.0) and 0 < abs(angles[2]) <= 10.0
    with pytest.raises(ValueError, match="rotate_axes"):
        AugmentConfig(rotate_axes="ij")


# ------------------------------------------------------------------------------------------ exact targets


def test_exact_targets_are_the_original_boxes_on_the_grid(coarse_cache):
    """Label boxes are whole grid voxels; exact ones are the 32^3 original's boxes halved (sub-voxel)."""
    labels_ds = CacheDataset(coarse_cache, None, None, "labels")
    exact_ds = CacheDataset(coarse_cache, None, None, "exact")
    _, by_labels = labels_ds[0]
    _, exact = exact_ds[0]
    assert torch.equal(by_labels["labels"], exact["labels"])
    label_boxes, exact_boxes = _voxel_boxes(by_labels), _voxel_boxes(exact)
    np.testing.assert_allclose(label_boxes, np.round(label_boxes), atol=1e-4)
    records = labels_ds.record(0)["boxes"]
    original = {int(b["label_id"]): np.asarray(b["box_voxel_original"], float) for b in records}
    for row, dense in enumerate(exact["labels"].tolist()):
        np.testing.assert_allclose(exact_boxes[row], original[sorted(CLASSES)[dense]] / 2, atol=1e-4)
    assert np.abs(exact_boxes - label_boxes).max() <= 1.0
    assert np.abs(exact_boxes - np.round(exact_boxes)).max() > 0.25  # half voxels exist: not quantised


def test_exact_targets_move_with_the_augmentation(coarse_cache, monkeypatch):
    """Under a drawn shift the exact boxes move by exactly that shift (clipped to the grid)."""
    shift = AugmentParams(shift=(2.0, -1.0, 1.0))
    monkeypatch.setattr("organdetr.data.cache_dataset.sample_params", lambda cfg, size, rng: shift)
    still = CacheDataset(coarse_cache, None, None, "exact")[1][1]
    moved = CacheDataset(coarse_cache, None, AugmentConfig(), "exact")[(1, 0)][1]
    assert torch.equal(still["labels"], moved["labels"])
    expected = np.clip(_voxel_boxes(still) + np.tile(shift.shift, 2), 0, 16)
    np.testing.assert_allclose(_voxel_boxes(moved), expected, atol=1e-4)


def test_rotated_samples_keep_label_boxes(coarse_cache, monkeypatch):
    turn = AugmentParams(angles_deg=(0.0, 0.0, 7.0))
    monkeypatch.setattr("organdetr.data.cache_dataset.sample_params", lambda cfg, size, rng: turn)
    exact = CacheDataset(coarse_cache, None, AugmentConfig(), "exact")[(0, 0)][1]
    by_labels = CacheDataset(coarse_cache, None, AugmentConfig(), "labels")[(0, 0)][1]
    assert torch.equal(exact["boxes"], by_labels["boxes"])


def test_box_targets_is_validated(coarse_cache):
    with pytest.raises(ValueError, match="box_targets"):
        CacheDataset(coarse_cache, None, None, "mm")


# ------------------------------------------------------------------------------------------ anchors


def test_anchor_sizes_follow_organ_size_per_level():
    sizes = torch.tensor([[0.5, 0.5, 0.5], [0.05, 0.05, 0.1], [0.2, 0.2, 0.2], [0.1, 0.1, 0.1]])
    anchors = anchor_sizes_from_boxes(sizes, 2)
    assert len(anchors) == 6
    small, large = np.prod(anchors[:3]), np.prod(anchors[3:])
    assert small < large  # finest level anchors the smallest organs
    np.testing.assert_allclose(anchors[:3], np.sqrt([0.05 * 0.1, 0.05 * 0.1, 0.1 * 0.1]), atol=1e-4)
    assert len(anchor_sizes_from_boxes(sizes[:1], 3)) == 9  # fewer organs than levels: repeated


def test_token_anchors_take_level_sizes():
    shapes = [(4, 4, 4), (2, 2, 2)]
    default, _ = token_anchors(shapes)
    assert torch.allclose(default[:64, 3:], torch.tensor(0.05))
    assert torch.allclose(default[64:, 3:], torch.tensor(0.1))
    sized, _ = token_anchors(shapes, level_sizes=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    assert torch.allclose(sized[0, 3:], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(sized[-1, 3:], torch.tensor([0.4, 0.5, 0.6]))
    with pytest.raises(ValueError, match="anchor sizes"):
        token_anchors(shapes, level_sizes=(0.1, 0.2, 0.3))


def test_data_anchors_until_filled_are_the_level_anchors():
    """Anchors are not parameters: before training fills ``anchor_sizes`` the level sizes stand in."""
    torch.manual_seed(0)
    unfilled = OrganDETR(model_preset("tiny", num_classes=3, anchors="data")).eval()
    torch.manual_seed(0)
    level = OrganDETR(model_preset("tiny", num_classes=3)).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(unfilled(image)["pred_boxes"], level(image)["pred_boxes"])
    with pytest.raises(ValueError, match="needs 9"):
        OrganDETR(model_preset("tiny", num_classes=3, anchor_sizes=(0.1, 0.1, 0.1)))
    torch.manual_seed(0)
    filled = OrganDETR(model_preset("tiny", num_classes=3, anchors="data", anchor_sizes=(0.3,) * 9)).eval()
    with torch.no_grad():
        assert not torch.equal(filled(image)["pred_boxes"], level(image)["pred_boxes"])


def test_training_fills_data_anchors_from_the_cache(coarse_cache, tmp_path):
    cfg = load_config(
        "tiny",
        [
            f"data.cache_dir={coarse_cache}",
            "data.num_workers=0",
            "data.val_fraction=0",
            "train.steps=1",
            "train.device=cpu",
            "train.progress=false",
            "model.anchors=data",
            "model.num_levels=2",
            "model.kv_pool=[1, 1]",
        ],
    )
    run = fit(cfg, tmp_path / "run")
    saved = load_config(run / "config.yaml")
    assert len(saved.model.anchor_sizes) == 6 and all(0 < a <= 1 for a in saved.model.anchor_sizes)


# ------------------------------------------------------------------------------------------ decoder


def test_six_heads_start_on_the_six_faces():
    net = OrganDETR(model_preset("tiny", num_classes=2, deform_heads=6, d_model=36, nhead=2))
    attn = net.decoder.layers[0].cross_attn
    assert attn.n_heads == 6
    first_point = attn.sampling_offsets.bias.view(6, attn.n_levels, attn.n_points, 3)[:, 0, 0]
    directions = {tuple(v) for v in first_point.sign().int().tolist()}
    assert directions == {(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)}
    with pytest.raises(ValueError, match="deform_heads"):
        model_preset("tiny", deform_heads=5)


def test_shared_box_head_is_stored_once():
    shared = OrganDETR(model_preset("tiny", num_classes=2, share_box_head=True))
    separate = OrganDETR(model_preset("tiny", num_classes=2))
    assert len(shared.decoder.box_heads) == 1 and len(separate.decoder.box_heads) == 2
    out = shared.eval()(torch.randn(1, 1, 32, 32, 32))
    assert out["pred_boxes"].shape[-1] == 6 and len(out["aux_outputs"]) == 1


# ------------------------------------------------------------------------------------------ IoU-aware


def test_paired_iou_is_the_diagonal():
    a = torch.tensor([[0, 0, 0, 2, 2, 2.0], [1, 1, 1, 3, 4, 5.0]])
    b = torch.tensor([[1, 1, 1, 3, 3, 3.0], [1, 1, 1, 3, 4, 5.0]])
    assert torch.allclose(paired_box_iou_3d(a, b), torch.diag(box_iou_3d(a, b)[0]))


def test_quality_focal_loss_is_lowest_at_the_target_quality():
    logits = torch.linspace(-4, 4, 81)
    loss = quality_focal_loss(logits, torch.full_like(logits, 0.6))
    best = torch.sigmoid(logits[loss.argmin()])
    assert abs(float(best) - 0.6) < 0.05


def test_iou_aware_class_targets_change_the_class_loss():
    torch.manual_seed(0)
    images = torch.randn(1, 1, 32, 32, 32)
    seg = torch.zeros(32, 32, 32, dtype=torch.int64)
    seg[4:14, 6:20, 8:16], seg[18:28, 16:30, 10:24] = 1, 2
    labels, boxes = boxes_from_seg(seg, 2)
    targets = [{"labels": labels, "boxes": boxes, "seg": seg}]
    losses = {}
    for iou_aware in (False, True):
        cfg = load_config("tiny", [f"loss.iou_aware={str(iou_aware).lower()}"])
        torch.manual_seed(0)
        detector = detector_from_config(cfg, 2, (32, 32, 32))
        losses[iou_aware] = detector.loss(images, targets)
        losses[iou_aware]["loss"].backward()
    assert torch.isfinite(losses[True]["loss"])
    for key in ("loss_class", "loss_class_enc"):
        assert not torch.isclose(losses[True][key], losses[False][key])
    assert torch.isclose(losses[True]["loss_bbox"], losses[False]["loss_bbox"])


# ------------------------------------------------------------------------------------------ optimizer


def test_offset_lr_scale_makes_its_own_group():
    detector = detector_from_config(load_config("tiny"), 2, (32, 32, 32))
    plain = build_optimizer(detector, load_config("tiny").optim)
    assert all(g["name"].split("_")[0] != "offsets" for g in plain.param_groups)
    cfg = load_config("tiny", ["optim.offset_lr_scale=0.1"]).optim
    scaled = build_optimizer(detector, cfg)
    offsets = [g for g in scaled.param_groups if g["name"].startswith("offsets")]
    assert offsets and all(abs(g["lr"] - 0.1 * cfg.lr) < 1e-12 for g in offsets)
    ids = {id(p) for g in offsets for p in g["params"]}
    named = {id(p) for n, p in detector.named_parameters() if "sampling_offsets" in n}
    assert ids == named and len(scaled.param_groups) == len(plain.param_groups) + len(offsets)
