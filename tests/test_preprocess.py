"""Preprocessing: one scan onto the model grid, boxes both ways, and the resumable atomic cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from organdetr.core.boxes.world import grid_box_to_original
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume
from organdetr.datasets.nnunet import image_path, label_path, write_dataset_json
from organdetr.io.images import read_label_table, write_image
from organdetr.preprocessing.cache import list_cases, load_case
from organdetr.preprocessing.plans import PreprocessConfig, load_plans
from organdetr.preprocessing.resampling import preprocess_image, preprocess_volume
from organdetr.preprocessing.run import preprocess_dataset
from organdetr.runtime.errors import InputError

RAS = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
GEOMETRY = Geometry((30, 24, 12), (1.5, 2.0, 4.0), (40.0, 30.0, -20.0), RAS)
CLASSES = {1: "liver", 2: "spleen"}


def phantom(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like block (-1000 HU air, 40 HU body) with two cuboid organs."""
    image = np.full(GEOMETRY.size, -1000, np.int16)
    image[3:27, 2:22, 1:11] = 40
    labels = np.zeros(GEOMETRY.size, np.uint8)
    labels[5 + shift : 15 + shift, 4:14, 2:8] = 1
    labels[18:26, 10:20, 5:11] = 2
    return image, labels


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(fit="resize", input_size=(16, 16, 8)),
        PreprocessConfig(fit="pad", target_spacing=(3.0, 3.0, 3.0), input_size=(20, 12, 16)),
    ],
    ids=["resize", "pad"],
)
def test_preprocess_volume_boxes_map_back_within_half_a_grid_voxel(cfg):
    image, labels = phantom()
    out, grid_labels, record = preprocess_volume(
        Volume(image, GEOMETRY), cfg, Volume(labels, GEOMETRY), CLASSES
    )
    assert out.shape == cfg.input_size == grid_labels.shape
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert set(np.unique(grid_labels)) == {0, 1, 2}
    assert record["original_orientation"] == "RAS"
    assert np.allclose(Geometry.from_dict(record["grid"]).direction_matrix, np.eye(3))
    assert [b["name"] for b in record["boxes"]] == ["liver", "spleen"]
    scale = np.tile(record["to_original"]["scale"], 2)
    for box in record["boxes"]:
        back, box_mm = grid_box_to_original(np.array(box["box_voxel"]), record)
        original = np.array(box["box_voxel_original"])
        assert np.all(np.abs(back - original) <= 0.5 * scale + 1e-6), box["name"]
        where = np.argwhere(labels == box["label_id"])
        assert original.tolist() == [*where.min(0), *(where.max(0) + 1)]
        spacing_mm = np.tile(record["grid"]["spacing"], 2)
        assert np.all(np.abs(box_mm - np.array(box["box_mm"])) <= 0.5 * spacing_mm + 1e-6)


def test_pad_mode_keeps_spacing_and_pads_with_air():
    image, _ = phantom()
    cfg = PreprocessConfig(fit="pad", target_spacing=(2.0, 2.0, 2.0), input_size=(40, 40, 40))
    out, record = preprocess_image(Volume(image, GEOMETRY), cfg)
    assert record["grid"]["spacing"] == [2.0, 2.0, 2.0]
    assert out[0, 0, 0] == 0.0  # padding = hu_window low = 0 after scaling
    assert out.max() == pytest.approx((40 + 1000) / 2000)  # body: 40 HU on a [-1000, 1000] window
    assert np.count_nonzero(np.isclose(out, 0.52)) > 500


def test_label_geometry_mismatch_names_the_label_file():
    image, labels = phantom()
    shifted = Geometry(GEOMETRY.size, GEOMETRY.spacing, (41.0, 30.0, -20.0), RAS)
    with pytest.raises(InputError, match=r"seg\.nii\.gz: label geometry differs from ct\.nii\.gz: origin"):
        preprocess_volume(
            Volume(image, GEOMETRY),
            PreprocessConfig(),
            Volume(labels, shifted),
            CLASSES,
            image_path="ct.nii.gz",
            label_path="seg.nii.gz",
        )


def test_config_validation():
    with pytest.raises(ValueError, match="fit"):
        PreprocessConfig(fit="stretch")
    with pytest.raises(ValueError, match="hu_window"):
        PreprocessConfig(hu_window=(100, -100))
    with pytest.raises(ValueError, match="input_size"):
        PreprocessConfig(input_size=(0, 96, 96))


def make_dataset(root, n_good=2, bad: dict | None = None):
    """nnU-Net dataset with ``n_good`` phantom cases plus ``bad``: case id -> how it is broken."""
    bad = bad or {}
    case_ids = [f"case_{i:02d}" for i in range(n_good)] + list(bad)
    for i, case_id in enumerate(case_ids):
        image, labels = phantom(shift=i % 3)
        write_image(image_path(root, case_id), image, GEOMETRY)
        write_image(label_path(root, case_id), labels, GEOMETRY)
    for case_id, how in bad.items():
        if how == "corrupt":
            image_path(root, case_id).write_bytes(b"not a nifti" * 20)
        elif how == "empty":
            write_image(label_path(root, case_id), np.zeros(GEOMETRY.size, np.uint8), GEOMETRY)
        elif how == "unknown_id":
            write_image(label_path(root, case_id), np.full(GEOMETRY.size, 9, np.uint8), GEOMETRY)
    write_dataset_json(root, CLASSES, len(case_ids), name="Dataset001_Phantom")
    return root


TINY = PreprocessConfig(input_size=(16, 16, 8))


def test_preprocess_dataset_cache_failures_resume_and_plans(tmp_path):
    root = make_dataset(
        tmp_path / "raw", bad={"case_bad": "corrupt", "case_empty": "empty", "case_odd": "unknown_id"}
    )
    cache = tmp_path / "cache"
    summary = preprocess_dataset(root, cache, TINY, progress=False)
    assert summary.done == ["case_00", "case_01"]
    failed = dict(summary.failed)
    assert set(failed) == {"case_bad", "case_empty", "case_odd"}
    assert "case_bad_0000.nii.gz: cannot read image" in failed["case_bad"]
    assert "case_empty.nii.gz: label map is empty" in failed["case_empty"]
    assert "case_odd.nii.gz: label ids [9] are not in the class map" in failed["case_odd"]
    assert all("\n" not in message for message in failed.values())

    plans = load_plans(cache)
    assert plans["classes"] == {"1": "liver", "2": "spleen"} and plans["input_size"] == [16, 16, 8]
    assert list_cases(cache) == ["case_00", "case_01"]
    image, labels, record = load_case(cache, "case_01")
    assert isinstance(image, np.memmap) and image.shape == (16, 16, 8) and labels.dtype == np.uint8
    assert record["case_id"] == "case_01" and record["world_frame"] == "LPS" and len(record["boxes"]) == 2

    # a crash after the arrays but before the JSON: the case does not count and is redone
    (cache / "cases" / "case_00.json").unlink()
    assert list_cases(cache) == ["case_01"]
    with pytest.raises(InputError, match="case_00"):
        load_case(cache, "case_00")
    again = preprocess_dataset(root, cache, TINY, progress=False)
    assert again.done == ["case_00"] and again.skipped == ["case_01"]

    # other settings on the same cache: refused, unless overwrite (which redoes everything)
    other = PreprocessConfig(input_size=(8, 8, 8))
    with pytest.raises(
        InputError, match=r"plans\.json: cache was made with different settings \(input_size\)"
    ):
        preprocess_dataset(root, cache, other, progress=False)
    redone = preprocess_dataset(root, cache, other, overwrite=True, progress=False)
    assert redone.done == ["case_00", "case_01"] and redone.skipped == []
    assert json.loads((cache / "plans.json").read_text())["input_size"] == [8, 8, 8]
    assert [p.name for p in cache.rglob(".*")] == [".organdetr.lock"]  # no temporary files left behind


def test_foreground_window_is_the_labelled_voxels_percentiles(tmp_path):
    from organdetr.io.images import read_image, read_label_map
    from organdetr.preprocessing.intensity import foreground_window

    root = make_dataset(tmp_path / "raw", n_good=3)
    rng = np.random.default_rng(0)
    values = []
    for i in range(3):  # organs of varied soft-tissue intensity in air
        labels = read_label_map(label_path(root, f"case_{i:02d}")).array
        image = np.where(labels > 0, rng.normal(50, 30, labels.shape), -1000).astype(np.int16)
        write_image(image_path(root, f"case_{i:02d}"), image, GEOMETRY)
        values.append(read_image(image_path(root, f"case_{i:02d}")).array[labels > 0])
    expected = np.percentile(np.concatenate(values), (0.5, 99.5))
    lo, hi = foreground_window(root, samples_per_case=10**7)  # every labelled voxel
    assert (lo, hi) == (np.floor(expected[0]), np.ceil(expected[1]))
    assert lo > -1000 and hi < 1000  # soft tissue, not the air and bone of a -1000..1000 window
    empty = tmp_path / "empty"
    make_dataset(empty, n_good=0, bad={"case_empty": "empty"})
    with pytest.raises(InputError, match="no labelled voxel"):
        foreground_window(empty)


@pytest.mark.slow
def test_preprocess_dataset_in_parallel_matches_serial(tmp_path):
    root = make_dataset(tmp_path / "raw", n_good=3, bad={"case_bad": "corrupt"})
    serial = preprocess_dataset(root, tmp_path / "serial", TINY, progress=False)
    parallel = preprocess_dataset(root, tmp_path / "parallel", TINY, workers=2, progress=False)
    assert parallel.done == serial.done and [c for c, _ in parallel.failed] == ["case_bad"]
    for case_id in serial.done:
        a, la, ra = load_case(tmp_path / "serial", case_id)
        b, lb, rb = load_case(tmp_path / "parallel", case_id)
        assert np.array_equal(a, b) and np.array_equal(la, lb) and ra["boxes"] == rb["boxes"]


@pytest.mark.shared_data
def test_real_scan_every_organ_gets_a_box(shared_data):
    from organdetr.io.images import read_image, read_label_map

    folder = shared_data / "totalsegmentator"
    seg = folder / "example_seg_fast_force_split.nii.gz"
    volume, labels = read_image(folder / "example_ct.nii.gz"), read_label_map(seg)
    cfg = PreprocessConfig(fit="pad", target_spacing=(2.0, 2.0, 2.0), input_size=(192, 160, 176))
    image, grid_labels, record = preprocess_volume(volume, cfg, labels, read_label_table(seg))
    present = sorted(int(i) for i in np.unique(labels.array) if i)
    assert [b["label_id"] for b in record["boxes"]] == present and record["dropped"] == []
    assert record["boxes"][0]["name"] == "spleen"
    # the grid covers the whole scan: every organ's box maps back within half a grid voxel (1 mm)
    for box in record["boxes"]:
        _, box_mm = grid_box_to_original(np.array(box["box_voxel"]), record)
        # box_mm is stored rounded to 1e-4 mm
        assert np.all(np.abs(box_mm - np.array(box["box_mm"])) <= 1.0 + 1e-3), box["name"]
