"""Ensembles and test-time mirroring: box fusion maths, exact flips, EnsemblePredictor, `predict RUN1 RUN2`
and `predict --tta`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from _cache_factory import save_random_checkpoint
from _cli import assert_refused, run_cli
from organdetr.core.boxes.fusion import flip_voxel_boxes, fuse_organ_boxes
from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.geometry import Geometry
from organdetr.inference.ensemble import EnsemblePredictor, flip_views, split_members
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput
from organdetr.io.images import write_image
from organdetr.preprocessing.plans import PreprocessConfig, make_plans
from organdetr.runtime.errors import InputError

CLASSES = {1: "liver", 2: "kidney_left", 3: "kidney_right"}
GRID = (32, 32, 32)


# ----------------------------------------------------------------------------- fusion maths


def test_fused_boxes_of_identical_members_equal_the_members_box():
    member = {
        "labels": np.array([0, 2, 1]),
        "scores": np.array([0.9, 0.4, 0.7]),
        "boxes": np.array([[1, 2, 3, 10, 11, 12], [0, 0, 0, 5, 5, 5], [4.5, 3.25, 2, 9, 8, 7.75]]),
    }
    fused = fuse_organ_boxes([member, member, member])
    np.testing.assert_array_equal(fused["labels"], [0, 1, 2])  # by descending score
    np.testing.assert_allclose(fused["scores"], [0.9, 0.7, 0.4], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fused["boxes"], member["boxes"][[0, 2, 1]], rtol=0, atol=1e-12)


def test_two_members_fuse_to_the_score_weighted_mean_and_a_missing_member_scores_zero():
    a = {
        "labels": np.array([0, 1]),
        "scores": np.array([0.75, 0.5]),
        "boxes": np.array([[0.0] * 3 + [8.0] * 3, [1.0] * 6]),
    }
    b = {"labels": np.array([0]), "scores": np.array([0.25]), "boxes": np.array([[4.0] * 3 + [12.0] * 3])}
    fused = fuse_organ_boxes([a, b])
    liver = list(fused["labels"]).index(0)
    # (0.75 * 0 + 0.25 * 4) / 1.0 = 1; (0.75 * 8 + 0.25 * 12) / 1.0 = 9; score (0.75 + 0.25) / 2
    np.testing.assert_allclose(fused["boxes"][liver], [1, 1, 1, 9, 9, 9], rtol=0, atol=1e-12)
    assert fused["scores"][liver] == pytest.approx(0.5)
    other = list(fused["labels"]).index(1)
    np.testing.assert_allclose(fused["boxes"][other], [1.0] * 6)  # only a has it: its box, half its score
    assert fused["scores"][other] == pytest.approx(0.25)


def test_fusion_takes_each_members_best_box_of_a_class_and_zero_scores_average_plainly():
    a = {
        "labels": np.array([0, 0]),
        "scores": np.array([0.1, 0.6]),
        "boxes": np.array([[9.0] * 6, [2.0] * 6]),
    }
    fused = fuse_organ_boxes([a])
    np.testing.assert_allclose(fused["boxes"], [[2.0] * 6])
    zero = {"labels": np.array([0]), "scores": np.array([0.0]), "boxes": np.array([[0.0] * 6])}
    far = {"labels": np.array([0]), "scores": np.array([0.0]), "boxes": np.array([[4.0] * 6])}
    np.testing.assert_allclose(fuse_organ_boxes([zero, far])["boxes"], [[2.0] * 6])


# ----------------------------------------------------------------------------- exact flips


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)])
def test_flipping_an_image_and_its_box_and_mapping_back_gives_the_identical_box(axes):
    """The box of the mirrored label map is the mirrored box (half-open [lo, hi)), and mirroring it back is
    the original box bit for bit."""
    size = (17, 12, 9)
    labels = np.zeros(size, np.uint8)
    labels[2:7, 0:5, 4:9] = 1  # touches the j = 0 and k = K-1 faces
    identity = Geometry(size, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    box = np.asarray(boxes_from_labels(labels, identity, {1: "liver"})[0].box_voxel)
    np.testing.assert_array_equal(box, [2, 0, 4, 7, 5, 9])
    flipped_labels = np.flip(labels, axis=axes)
    flipped_box = np.asarray(boxes_from_labels(flipped_labels, identity, {1: "liver"})[0].box_voxel)
    np.testing.assert_array_equal(flip_voxel_boxes(box, axes, size), flipped_box)
    np.testing.assert_array_equal(flip_voxel_boxes(flipped_box, axes, size), box)


def test_flip_views_are_the_identity_and_every_combination():
    assert flip_views("ijk") == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert flip_views("k") == [(), (2,)]
    for bad in ("", "x", "ii"):
        with pytest.raises(InputError):
            flip_views(bad)


# ----------------------------------------------------------------------------- the predictor


class PositionalDetector(torch.nn.Module):
    """A flip-equivariant stand-in for a trained model that names kidneys by position, as a model trained on
    unmirrored scans does: intensity 1 = liver, 2 = kidney; the kidney blob with the larger ``i`` centre
    (patient left in LPS) is ``kidney_left``. Scores per organ kind (both kidneys 0.8); ``segment`` gives
    the same labels."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def _dense(self, image: np.ndarray) -> np.ndarray:
        dense = np.where(np.isclose(image, 1.0), 1, 0)
        blobs, n = ndimage.label(np.isclose(image, 2.0))
        centres = ndimage.center_of_mass(np.ones_like(image), blobs, range(1, n + 1))
        order = np.argsort([c[0] for c in centres])  # ascending i: right kidney first
        dense[blobs == order[-1] + 1] = 2
        dense[blobs == order[0] + 1] = 3
        return dense

    def segment(self, images):
        return torch.from_numpy(np.stack([self._dense(im[0].numpy()) for im in images]))

    def detect(self, images):
        results = []
        for seg in self.segment(images).numpy():
            found = ndimage.find_objects(seg.astype(np.int32), max_label=3)
            boxes = [[s.start for s in sl] + [s.stop for s in sl] for sl in found]
            results.append(
                {
                    "labels": torch.tensor([0, 1, 2]),
                    "scores": torch.tensor([0.9, 0.8, 0.8]),
                    "boxes": torch.tensor(boxes, dtype=torch.float32),
                }
            )
        return results


def positional_grid() -> np.ndarray:
    grid = np.zeros(GRID, np.float32)
    grid[4:15, 6:20, 10:25] = 1.0  # liver
    grid[20:27, 18:25, 3:9] = 2.0  # left kidney (large i)
    grid[2:8, 17:26, 4:11] = 2.0  # right kidney
    return grid


def test_tta_maps_every_view_back_exactly_and_swaps_left_right_back():
    """With an exactly equivariant model, 8 views fuse to the single pass: boxes, labels and label map.
    Without the left/right swap the kidneys' fused boxes would be the mean of both kidneys."""
    plans = make_plans(PreprocessConfig(input_size=GRID), CLASSES)
    single = Predictor(PositionalDetector(), plans, "cpu", "off")
    tta = EnsemblePredictor([single], flip_views("ijk"))
    grid = positional_grid()
    expected, fused = single.detect_grids([grid])[0], tta.detect_grids([grid])[0]
    np.testing.assert_array_equal(fused["labels"], expected["labels"])
    np.testing.assert_allclose(fused["scores"], expected["scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fused["boxes"], expected["boxes"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(tta.segment_grids([grid])[0], single.segment_grids([grid])[0])
    assert tta.forward_passes == 16  # 8 views x (detection + label map)


def scan_file(path, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.normal(-100, 30, size=(40, 36, 30)).astype(np.int16)
    array[10:25, 8:20, 5:20] = 60
    geometry = Geometry(
        (40, 36, 30), (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    )
    write_image(path, array, geometry)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two differently initialised tiny Organ-DETR runs of one class list, one of another class list."""
    root = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    a = save_random_checkpoint(root / "a", CLASSES, GRID)
    b = save_random_checkpoint(root / "b", CLASSES, GRID, "model.dim_feedforward=48")
    other = save_random_checkpoint(root / "other", {1: "liver", 2: "spleen", 3: "kidney_right"}, GRID)
    return a, b, other


def test_identical_members_predict_the_single_models_boxes(tmp_path, runs):
    single = Predictor.from_checkpoint(runs[0], "cpu", "off")
    ensemble = EnsemblePredictor.from_checkpoints([runs[0], runs[0]], device="cpu", amp="off")
    prepared = single.prepare(ScanInput(scan_file(tmp_path / "s.nii.gz"), "s"))
    expected, fused = single.detect_grids([prepared.grid])[0], ensemble.detect_grids([prepared.grid])[0]
    order = np.argsort(expected["labels"])
    np.testing.assert_array_equal(np.sort(fused["labels"]), expected["labels"][order])
    by_label = {int(c): i for i, c in enumerate(fused["labels"])}
    rows = [by_label[int(c)] for c in expected["labels"][order]]
    np.testing.assert_allclose(fused["boxes"][rows], expected["boxes"][order], rtol=0, atol=1e-4)
    np.testing.assert_allclose(fused["scores"][rows], expected["scores"][order], rtol=0, atol=1e-6)


def test_predict_cli_ensembles_run_folders_and_names_them_in_the_json(tmp_path, runs, capsys):
    scan = scan_file(tmp_path / "case_1.nii.gz")
    code, out, err = run_cli(
        capsys, "predict", runs[0], runs[1], scan, "-o", tmp_path / "out", "--no-overlay", "--device", "cpu",
        "--no-progress", "--tta", "--tta-axes", "k",
    )  # fmt: skip
    assert code == 0, err
    assert "2 model(s) x 2 view(s)" in out and "4 forward pass(es) per scan" in out
    model = json.loads((tmp_path / "out" / "case_1.json").read_text())["model"]
    assert [m["run"] for m in model["members"]] == [str(runs[0]), str(runs[1])]
    assert all(len(m["sha256"]) == 64 for m in model["members"])
    assert model["members"][0]["sha256"] != model["members"][1]["sha256"]
    assert model["tta"] == {"used": True, "views": ["none", "flip k"], "axes_not_mirrored_in_training": ["k"]}
    assert model["forward_passes"] == 4
    assert "warning: --tta mirrors along k, which training never mirrored" in err


def test_tta_warns_only_about_axes_training_never_mirrored(runs):
    """A run trained with left-right flips: mirroring along i is what it saw, j / k are not; a run without
    flips: every axis is unseen. A model built in memory (no training record) is not judged."""
    flipped = Predictor.from_checkpoint(runs[0], "cpu", "off")
    flipped.trained_mirror_axes = (0,)
    plain = Predictor.from_checkpoint(runs[1], "cpu", "off")
    assert plain.trained_mirror_axes == ()  # the tiny preset trains without flips
    assert EnsemblePredictor([flipped], flip_views("i")).unseen_mirror_axes() == []
    assert EnsemblePredictor([flipped], flip_views("ijk")).unseen_mirror_axes() == ["j", "k"]
    assert EnsemblePredictor([flipped, plain], flip_views("i")).unseen_mirror_axes() == ["i"]
    assert EnsemblePredictor([flipped, plain]).unseen_mirror_axes() == []  # no mirrored view
    plans = make_plans(PreprocessConfig(input_size=GRID), CLASSES)
    in_memory = Predictor(PositionalDetector(), plans, "cpu", "off")
    assert EnsemblePredictor([in_memory], flip_views("ijk")).unseen_mirror_axes() == []


def test_members_with_different_class_lists_are_refused_in_one_line(tmp_path, runs, capsys):
    scan = scan_file(tmp_path / "s.nii.gz")
    result = run_cli(capsys, "predict", runs[0], runs[2], scan, "-o", tmp_path / "out", "--device", "cpu")
    assert_refused(result, runs[2], "classes differ")
    assert not (tmp_path / "out" / "s.json").exists()
    bad_axes = run_cli(capsys, "predict", runs[0], scan, "-o", tmp_path / "o2", "--tta", "--tta-axes", "x")
    assert_refused(bad_axes, "--tta-axes")


def test_split_members_takes_the_leading_run_folders(tmp_path, runs):
    scan = scan_file(tmp_path / "s.nii.gz")
    assert split_members([runs[0], runs[1], scan]) == ([runs[0], runs[1]], [scan])
    assert split_members([scan, runs[0]]) == ([], [scan, runs[0]])
    weights = runs[0] / "last" / "model.safetensors"
    assert split_members([weights, scan]) == ([weights], [scan])
