"""Segmentation metrics (evaluation.segmentation): hand-made masks, crop exactness, MONAI agreement."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from organdetr.evaluation.segmentation import (
    case_scores,
    evaluate_segmentation,
    mask_surface,
    organ_scores,
    surface_distances,
    volume_diagonal_mm,
)


def _cube(shape, lo, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + size) for a in lo)] = True
    return mask


def test_shifted_cube_by_hand():
    # 3^3 cubes one voxel apart along i: 26 surface voxels each; 10 of them are 1 voxel from the other
    # surface (the new face and the voxel facing the other cube's centre), 16 lie on it.
    gt = _cube((8, 8, 8), (2, 2, 2), 3)
    pred = _cube((8, 8, 8), (3, 2, 2), 3)
    assert mask_surface(gt).sum() == 26
    to_gt, to_pred = surface_distances(pred, gt, (1.0, 1.0, 1.0))
    assert sorted(to_gt.tolist()) == [0.0] * 16 + [1.0] * 10
    assert sorted(to_pred.tolist()) == [0.0] * 16 + [1.0] * 10
    dice, nsd, hd95 = organ_scores(pred, gt, 1.0, nsd_tolerance_mm=0.5)
    assert dice == pytest.approx(2 * 18 / 54)
    assert nsd == pytest.approx(32 / 52)
    assert hd95 == 1.0  # P95 of 16 zeros and 10 ones (linear interpolation at rank 23.75)
    assert organ_scores(pred, gt, 1.0, nsd_tolerance_mm=1.0)[1] == 1.0
    # 2.5 mm voxels along i (the shift): the new face is 2.5 mm off; the voxel facing the other cube's
    # centre is now closer to a j/k neighbour (1 mm) than to the centre's i neighbour (2.5 mm)
    to_gt, _ = surface_distances(pred, gt, (2.5, 1.0, 1.0))
    assert sorted(to_gt.tolist()) == [0.0] * 16 + [1.0] + [2.5] * 9
    dice_s, nsd_s, hd_s = organ_scores(pred, gt, (2.5, 1.0, 1.0), nsd_tolerance_mm=2.0)
    assert (dice_s, nsd_s, hd_s) == (pytest.approx(2 / 3), pytest.approx(34 / 52), 2.5)


def test_anisotropic_spacing_single_voxels():
    gt = np.zeros((6, 6, 9), dtype=bool)
    pred = gt.copy()
    gt[2, 2, 2] = pred[2, 2, 5] = True  # 3 voxels apart along k, 2 mm voxels there: 6 mm
    dice, nsd, hd95 = organ_scores(pred, gt, (1.0, 1.0, 2.0), nsd_tolerance_mm=5.9)
    assert (dice, nsd, hd95) == (0.0, 0.0, 6.0)
    assert organ_scores(pred, gt, (1.0, 1.0, 2.0), nsd_tolerance_mm=6.0)[1] == 1.0
    assert organ_scores(pred, gt, (2.0, 2.0, 1.0), nsd_tolerance_mm=0.0)[2] == 3.0


def test_identical_and_empty_masks():
    gt = _cube((10, 10, 10), (3, 3, 3), 4)
    assert organ_scores(gt, gt, (0.7, 0.7, 2.0)) == (1.0, 1.0, 0.0)
    empty = np.zeros_like(gt)
    assert all(math.isnan(v) for v in organ_scores(empty, empty))
    diagonal = volume_diagonal_mm(gt.shape, (1.0, 1.0, 2.0))
    assert diagonal == pytest.approx(math.sqrt(81 + 81 + 18**2))
    assert organ_scores(empty, gt, (1.0, 1.0, 2.0)) == (0.0, 0.0, diagonal)  # missed organ
    assert organ_scores(gt, empty, (1.0, 1.0, 2.0)) == (0.0, 0.0, diagonal)  # spurious organ
    to_gt, to_pred = surface_distances(gt, empty)
    assert np.isinf(to_gt).all() and to_gt.size == mask_surface(gt).sum() and to_pred.size == 0


def test_bad_inputs_are_refused():
    gt = _cube((6, 6, 6), (1, 1, 1), 2)
    with pytest.raises(ValueError, match="shape"):
        organ_scores(gt, gt[:5])
    with pytest.raises(ValueError, match="spacing"):
        organ_scores(gt, gt, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="integer"):
        case_scores(gt.astype(np.float32), gt.astype(np.float32), [1])
    with pytest.raises(ValueError, match=">= 1"):
        case_scores(gt.astype(np.uint8), gt.astype(np.uint8), [0])
    with pytest.raises(ValueError, match="fewer spacings"):
        evaluate_segmentation([gt.astype(np.uint8)] * 2, [gt.astype(np.uint8)] * 2, ["a"], [(1.0, 1.0, 1.0)])


def _random_maps(seed: int, shape=(30, 26, 20), organs: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of smooth random blobs and a prediction that is shifted, noisy and misses an organ."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, dtype=np.uint8)
    for c in range(1, organs + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
        gt[field > np.quantile(field, 0.93)] = c
    noisy = np.where(rng.random(shape) < 0.04, rng.integers(0, organs + 1, shape), gt).astype(np.uint8)
    pred = ndimage.shift(noisy, (1, 0, -1), order=0)
    return pred, gt


def _full_volume_reference(pred: np.ndarray, gt: np.ndarray, spacing, tolerance: float):
    """The definitions without any cropping: surfaces and EDTs on the whole volume."""
    sp, sg = mask_surface(pred), mask_surface(gt)
    to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    nsd = ((to_gt <= tolerance).sum() + (to_pred <= tolerance).sum()) / (to_gt.size + to_pred.size)
    return dice, nsd, max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))


def test_bounding_box_crop_is_exact():
    pred, gt = _random_maps(3)
    spacing = (0.8, 1.3, 2.5)
    ours = case_scores(pred, gt, [1, 2, 3, 4], spacing, nsd_tolerance_mm=1.5)
    for c in range(4):
        np.testing.assert_allclose(
            ours[c], _full_volume_reference(pred == c + 1, gt == c + 1, spacing, 1.5), rtol=1e-12
        )


def _monai(pred: np.ndarray, gt: np.ndarray, num: int, spacing, tolerance: float) -> np.ndarray:
    """MONAI's DiceMetric, SurfaceDiceMetric, HausdorffDistanceMetric(percentile=95) -> ``[C, 3]``."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric

    def onehot(a):
        return torch.nn.functional.one_hot(torch.from_numpy(a.astype(np.int64)), num + 1).permute(3, 0, 1, 2)[
            None
        ]

    p, g = onehot(pred), onehot(gt)
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=False, reduction="none")(p, g)[0]
        nsd = SurfaceDiceMetric([tolerance] * num, include_background=False, reduction="none")(
            p, g, spacing=spacing
        )
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            p, g, spacing=spacing
        )
    return np.stack([dice.numpy(), nsd[0].numpy(), hd[0].numpy()], axis=1).astype(np.float64)


def _monai_hd95_float64(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """MONAI's own surface distances, with the percentile taken in float64."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, (to_gt, to_pred), _ = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(gt), spacing=[float(s) for s in spacing], symmetric=True
        )
    return max(float(torch.quantile(d.double(), 0.95)) for d in (to_gt, to_pred))


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_monai_on_random_masks(seed):
    pred, gt = _random_maps(seed)
    spacing = (0.8, 1.3, 2.5)
    ours = case_scores(pred, gt, [1, 2, 3, 4], spacing, nsd_tolerance_mm=1.5)
    reference = _monai(pred, gt, 4, spacing, 1.5)
    np.testing.assert_allclose(ours[:, :2], reference[:, :2], rtol=1e-6, atol=1e-6)  # Dice, NSD
    # HD95: MONAI's distances are float32 (1e-7 relative to ours), and so is its quantile, whose rank
    # 0.95 * (n - 1) in float32 moves the interpolation by up to ~1e-4 rank: 1e-5 relative to MONAI ...
    np.testing.assert_allclose(ours[:, 2], reference[:, 2], rtol=1e-5)
    # ... and to 1e-7 when MONAI's own distances go through a float64 percentile
    for c in range(4):
        assert ours[c, 2] == pytest.approx(_monai_hd95_float64(pred == c + 1, gt == c + 1, spacing), rel=1e-7)


@pytest.mark.shared_data
def test_agrees_with_monai_on_real_masks(shared_data):
    from organdetr.io.images import read_label_map

    ts = shared_data / "totalsegmentator"
    gt = read_label_map(ts / "example_seg.nii.gz")
    pred = read_label_map(ts / "example_seg_fast.nii.gz")
    assert pred.geometry.is_close(gt.geometry)
    organs = [1, 2, 3, 4, 5, 6, 7, 52]  # spleen, kidneys, gallbladder, liver, stomach, pancreas, aorta
    remap = np.zeros(256, dtype=np.uint8)
    remap[organs] = np.arange(1, len(organs) + 1)
    p, g = remap[pred.array], remap[gt.array]
    spacing = gt.geometry.spacing
    ours = case_scores(p, g, range(1, len(organs) + 1), spacing, nsd_tolerance_mm=3.0)
    reference = _monai(p, g, len(organs), spacing, 3.0)
    np.testing.assert_allclose(ours[:, :2], reference[:, :2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[:, 2], reference[:, 2], rtol=1e-5)
    assert ours[4, 0] > 0.95  # liver: TotalSegmentator's fast and full models agree


def test_evaluate_segmentation_means_counts_and_workers():
    gt1 = np.zeros((12, 12, 12), dtype=np.uint8)
    gt1[2:6, 2:6, 2:6] = 1
    gt1[7:10, 7:10, 7:10] = 2
    pred1 = gt1.copy()
    pred1[pred1 == 2] = 0  # organ 2 missed in case 1
    gt2 = np.zeros_like(gt1)
    gt2[2:6, 2:6, 2:6] = 1
    pred2 = gt2.copy()
    pred2[0, 0, 0] = 2  # organ 2 spurious in case 2
    classes = {1: "liver", 2: "spleen", 5: "pancreas"}  # pancreas in no map: no score
    result = evaluate_segmentation(
        [pred1, pred2], [gt1, gt2], classes, [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)], case_ids=["a", "b"]
    )
    assert result.scores.shape == (2, 3, 3)
    assert result.per_class["liver"] == {
        "dice": 1.0, "nsd": 1.0, "hd95_mm": 0.0,
        "num_cases": 2, "num_gt": 2, "num_pred": 2, "num_missed": 0, "num_spurious": 0,
    }  # fmt: skip
    spleen = result.per_class["spleen"]
    assert (spleen["dice"], spleen["nsd"]) == (0.0, 0.0)
    assert spleen["hd95_mm"] == pytest.approx(
        (volume_diagonal_mm((12, 12, 12), 1.0) + volume_diagonal_mm((12, 12, 12), 2.0)) / 2
    )
    assert (spleen["num_missed"], spleen["num_spurious"], spleen["num_gt"]) == (1, 1, 1)
    assert math.isnan(result.per_class["pancreas"]["dice"]) and result.per_class["pancreas"]["num_cases"] == 0
    assert result.summary["dice"] == pytest.approx(0.5)  # mean of liver and spleen; pancreas left out
    payload = result.to_dict()
    assert payload["per_class"]["pancreas"]["dice"] is None and "pancreas" not in payload["per_case"]["a"]
    assert payload["settings"]["nsd_tolerance_mm"] == 2.0 and payload["settings"]["num_cases"] == 2
    parallel = evaluate_segmentation(
        iter([pred1, pred2]), iter([gt1, gt2]), classes, iter([(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)]), workers=2
    )
    np.testing.assert_array_equal(parallel.scores, result.scores)
    per_organ = evaluate_segmentation([pred1], [gt1], classes, 1.0, {"liver": 0.0})
    assert per_organ.settings["nsd_tolerance_mm"] == {"liver": 0.0, "spleen": 2.0, "pancreas": 2.0}
    with pytest.raises(ValueError, match="unknown organs"):
        evaluate_segmentation([pred1], [gt1], classes, 1.0, {"heart": 1.0})


def _dataset_with_predictions(tmp_path):
    """nnU-Net dataset of 3 cases (2 mm x 1 mm x 3 mm voxels, oblique-free LPS) and predictions: case a
    exact, case b shifted one voxel along i, case c without a label map."""
    from organdetr.core.geometry import Geometry
    from organdetr.datasets.nnunet import image_path, label_path, write_dataset_json
    from organdetr.io.images import write_image

    geometry = Geometry((12, 10, 8), (2.0, 1.0, 3.0), (-5.0, 3.0, 40.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    root, pred_dir = tmp_path / "Dataset001_Seg", tmp_path / "pred"
    labels = {}
    for n, case in enumerate(("a", "b", "c")):
        gt = np.zeros(geometry.size, dtype=np.uint8)
        gt[2:6, 2:6, 2:5] = 1
        gt[7:10, 5:8, 4:7] = 3
        if n == 2:
            gt[gt == 3] = 0
        labels[case] = gt
        write_image(label_path(root, case), gt, geometry)
        write_image(image_path(root, case), gt.astype(np.int16), geometry)
    write_dataset_json(root, {1: "liver", 3: "spleen"}, 3, name="Dataset001_Seg")
    write_image(pred_dir / "a_seg.nii.gz", labels["a"], geometry)
    write_image(pred_dir / "b.nii.gz", np.roll(labels["b"], 1, axis=0), geometry)
    return root, pred_dir, geometry


def test_cli_evaluate_seg_scores_label_maps(tmp_path):
    import json

    from typer.testing import CliRunner

    from organdetr.cli import app

    root, pred_dir, _ = _dataset_with_predictions(tmp_path)
    result = CliRunner(env={"COLUMNS": "220"}).invoke(app, ["evaluate", str(pred_dir), str(root), "--seg"])
    assert result.exit_code == 0, result.output
    assert "1 of 3 cases have no label map" in result.output and "NSD at 2 mm" in result.output
    out = pred_dir / "evaluation"
    assert {p.name for p in out.iterdir()} == {
        "seg_metrics.json", "seg_metrics.csv", "seg_metrics.md", "seg_cases.csv", "seg_scores.png"
    }  # fmt: skip
    metrics = json.loads((out / "seg_metrics.json").read_text())
    assert metrics["per_case"]["a"]["liver"] == {"dice": 1.0, "nsd": 1.0, "hd95_mm": 0.0}
    b = metrics["per_case"]["b"]["liver"]  # 4 x 4 x 3 box shifted one 2 mm voxel along i
    assert b["dice"] == pytest.approx(2 * 36 / 96) and b["hd95_mm"] == pytest.approx(2.0)
    assert metrics["per_case"]["c"]["liver"]["dice"] == 0.0  # no label map: an empty prediction
    assert "spleen" not in metrics["per_case"]["c"]  # absent from both: not scored
    assert metrics["per_class"]["spleen"]["num_gt"] == 2 and metrics["missing_predictions"] == ["c"]
    assert (out / "seg_metrics.md").read_text().startswith("**Dice, NSD at 2 mm")


def test_cli_evaluate_seg_refuses_a_label_map_on_another_grid(tmp_path):
    from typer.testing import CliRunner

    from organdetr.cli import app
    from organdetr.core.geometry import Geometry
    from organdetr.io.images import write_image
    from organdetr.runtime.errors import InputError

    root, pred_dir, geometry = _dataset_with_predictions(tmp_path)
    moved = Geometry(geometry.size, (2.0, 1.0, 2.5), geometry.origin, geometry.direction)
    write_image(pred_dir / "b.nii.gz", np.zeros(geometry.size, dtype=np.uint8), moved)
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(root), "--seg"])
    assert isinstance(result.exception, InputError)  # the console script prints it in one line, exit 2
    assert result.exception.path.name == "b.nii.gz" and "grid differs from the ground truth" in str(
        result.exception
    )
    write_image(pred_dir / "b.nii.gz", np.full(geometry.size, 7, dtype=np.uint8), geometry)
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(root), "--seg"])
    assert isinstance(result.exception, InputError) and "label ids [7]" in str(result.exception)
    assert not (pred_dir / "evaluation").exists()  # nothing written
