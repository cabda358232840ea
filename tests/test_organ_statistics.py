"""Organ statistics (``organdetr predict --statistics``, issue 22): volumes against ``organdetr boxes`` and
the label map's voxel counts on the real CT with its TotalSegmentator labels, intensities against numpy, the
edge flag of an organ a slab cuts, and the run's ``statistics.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from _cache_factory import save_random_checkpoint
from _cli import run_cli
from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.raster import box_voxel_slices
from organdetr.core.geometry import Geometry
from organdetr.evaluation.organ_statistics import COLUMNS, organ_statistics
from organdetr.io.images import read_image, read_label_map, read_label_table, write_image

ORGANS = ("spleen", "kidney_left", "gallbladder", "liver", "stomach", "aorta")


def _prediction(labels: np.ndarray, geometry: Geometry, classes: dict[int, str]) -> dict:
    """A prediction JSON whose detections are the label map's own organ boxes (score 1)."""
    detections = []
    for box in boxes_from_labels(labels, geometry, classes):
        if box.name in ORGANS:
            mm = box.box_mm
            detections.append({
                "label": box.name, "label_id": box.label_id, "score": 1.0,
                "box_voxel": box.box_voxel.tolist(), "box_mm": mm.tolist(),
                "center_mm": ((mm[:3] + mm[3:]) / 2).tolist(), "size_mm": (mm[3:] - mm[:3]).tolist(),
            })  # fmt: skip
    return {"case_id": "ct", "original": geometry.to_dict(), "detections": detections}


@pytest.fixture(scope="module")
def real_ct(shared_data):
    folder = shared_data / "totalsegmentator"
    image, labels = read_image(folder / "example_ct_sm.nii.gz"), read_label_map(folder / "example_seg.nii.gz")
    return folder, image, labels, read_label_table(folder / "example_seg.nii.gz")


def test_mask_volumes_and_hu_match_the_label_map_and_organdetr_boxes(real_ct, capsys):
    """TotalSegmentator's masks as the model's label map: volume = voxels x 27 mm3 (3 mm voxels), as
    ``organdetr boxes`` reports; mean / median / p5 / p95 HU as numpy computes them over the mask."""
    folder, image, labels, classes = real_ct
    prediction = _prediction(labels.array, labels.geometry, classes)
    rows = {r["organ"]: r for r in organ_statistics(prediction, image.array, labels.array)}
    assert set(rows) == set(ORGANS) and set(COLUMNS) - {"case_id"} == set(rows["liver"])
    seg, ct = folder / "example_seg.nii.gz", folder / "example_ct_sm.nii.gz"
    code, out, _ = run_cli(capsys, "boxes", seg, "--image", ct, "--format", "json")
    reported = {b["name"]: b for b in json.loads(out)["boxes"]}
    assert code == 0
    for name, row in rows.items():
        mask = labels.array == row["label_id"]
        assert row["volume_from"] == "mask" and row["voxels"] == int(mask.sum()) == reported[name]["voxels"]
        assert row["volume_ml"] == pytest.approx(reported[name]["volume_ml"], abs=1e-3)
        assert row["volume_ml"] == pytest.approx(mask.sum() * 27 / 1000, abs=1e-3)
        values = image.array[mask].astype(np.float64)
        assert row["mean_hu"] == pytest.approx(values.mean(), abs=0.01)
        assert row["mean_hu"] == pytest.approx(reported[name]["mean_hu"], abs=0.051)
        p5, median, p95 = np.percentile(values, (5, 50, 95))
        assert (row["p5_hu"], row["median_hu"], row["p95_hu"]) == pytest.approx((p5, median, p95), abs=0.01)
    assert rows["liver"]["volume_ml"] == pytest.approx(38634 * 0.027)  # the data pack's README count
    # the 30-slice crop cuts the liver at both ends (k = 0 and 29); the gallbladder (k 2..14) lies inside
    assert rows["liver"]["touches_edge"] and {"inferior", "superior"} <= set(rows["liver"]["cut_at"].split())
    assert not rows["gallbladder"]["touches_edge"] and rows["gallbladder"]["cut_at"] == ""


def test_box_statistics_without_a_mask(real_ct):
    """No label map: the volume is the box's, the intensities those of the voxels the box fills."""
    _, image, labels, classes = real_ct
    prediction = _prediction(labels.array, labels.geometry, classes)
    rows = {r["organ"]: r for r in organ_statistics(prediction, image.array, None)}
    for det in prediction["detections"]:
        row, box = rows[det["label"]], np.asarray(det["box_voxel"])
        assert row["volume_from"] == "box"
        assert row["volume_ml"] == pytest.approx(np.prod(box[3:] - box[:3]) * 0.027, abs=1e-3)
        assert row["volume_ml"] == pytest.approx(np.prod(det["size_mm"]) / 1000, rel=1e-4)
        values = image.array[box_voxel_slices(box, image.array.shape)].astype(np.float64)
        assert row["mean_hu"] == pytest.approx(values.mean(), abs=0.01) and row["voxels"] == values.size
        np.testing.assert_allclose([row[f"centre_{a}_mm"] for a in "xyz"], det["center_mm"], atol=1e-3)


def test_a_slab_cuts_an_organ(shared_data):
    """The full TS-A CT: the left kidney lies inside the scan; a slab through its middle cuts it at both
    ends (its volume a lower bound) and keeps the organs above it whole."""
    folder = shared_data / "totalsegmentator"
    image = read_image(folder / "example_ct.nii.gz")
    labels = read_label_map(folder / "example_seg_fast_force_split.nii.gz")
    classes = read_label_table(folder / "example_seg_fast_force_split.nii.gz")
    full = {r["organ"]: r for r in organ_statistics(_prediction(labels.array, labels.geometry, classes),
                                                      image.array, labels.array)}  # fmt: skip
    assert not full["kidney_left"]["touches_edge"]
    kidney = np.flatnonzero((labels.array == 3).any(axis=(0, 1)))  # k slices of the left kidney (id 3)
    k0, k1 = int(kidney[len(kidney) // 3]), int(kidney[2 * len(kidney) // 3])
    geometry = Geometry.from_dict({**labels.geometry.to_dict(), "size": [*labels.geometry.size[:2], k1 - k0]})
    geometry = Geometry(geometry.size, geometry.spacing, labels.geometry.index_to_world((0, 0, k0)),
                        geometry.direction)  # fmt: skip
    slab_labels, slab_image = labels.array[:, :, k0:k1], image.array[:, :, k0:k1]
    slab = {r["organ"]: r for r in organ_statistics(_prediction(slab_labels, geometry, classes), slab_image,
                                                      slab_labels)}  # fmt: skip
    cut = slab["kidney_left"]
    assert cut["touches_edge"] and set(cut["cut_at"].split()) == {"inferior", "superior"}
    assert cut["volume_ml"] < full["kidney_left"]["volume_ml"]


def test_predict_statistics_writes_one_cohort_table(tmp_path, capsys):
    run = save_random_checkpoint(tmp_path / "run", {1: "liver", 2: "spleen", 5: "kidney_left"}, (32, 32, 32))
    rng = np.random.default_rng(0)
    for n, size in enumerate([(36, 30, 20), (30, 34, 16)]):
        array = rng.normal(0, 50, size).astype(np.int16)
        array[:, :, :4] = -1000
        write_image(tmp_path / f"scan{n}.nii.gz", array,
                    Geometry(size, (1.2, 1.2, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))  # fmt: skip
    code, out, _ = run_cli(capsys, "predict", run, tmp_path / "scan0.nii.gz", tmp_path / "scan1.nii.gz", "-o",
                           tmp_path / "out", "--statistics", "--organs", "liver,spleen", "--no-overlay",
                           "--no-progress", "--device", "cpu")  # fmt: skip
    assert code == 0 and "statistics.csv" in out
    rows = list(csv.DictReader((tmp_path / "out" / "statistics.csv").open()))
    assert tuple(rows[0]) == COLUMNS
    assert sorted((r["case_id"], r["organ"]) for r in rows) == [
        ("scan0", "liver"), ("scan0", "spleen"), ("scan1", "liver"), ("scan1", "spleen")
    ]  # fmt: skip
    for case in ("scan0", "scan1"):
        prediction = json.loads((tmp_path / "out" / f"{case}.json").read_text())
        array = read_image(tmp_path / f"{case}.nii.gz").array
        for entry, det in zip(prediction["statistics"], prediction["detections"], strict=True):
            values = array[box_voxel_slices(det["box_voxel"], array.shape)].astype(np.float64)
            assert entry["volume_from"] == "box" and entry["mean_hu"] == pytest.approx(
                values.mean(), abs=0.01
            )
            row = next(r for r in rows if r["case_id"] == case and r["organ"] == det["label"])
            assert float(row["volume_ml"]) == pytest.approx(entry["volume_ml"])
    assert not list(Path(tmp_path / "out").glob(".*tmp*"))
