"""organdetr.inference.predict / `organdetr predict`: JSON schema, geometry round trip, DICOM, bad scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from _cache_factory import save_random_checkpoint
from organdetr.cli import app
from organdetr.core.boxes.raster import box_mask
from organdetr.core.boxes.world import voxel_box_to_world
from organdetr.core.geometry import Geometry
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import case_id_of, find_scans
from organdetr.io.images import read_image, write_image

CLASSES = {1: "liver", 2: "spleen", 5: "kidney_left"}
GRID = (32, 32, 32)
FIELDS = ("label", "label_id", "score", "box_voxel", "box_mm", "center_mm", "size_mm")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny Organ-DETR saved as a run folder (weights + config + plans)."""
    return save_random_checkpoint(tmp_path_factory.mktemp("run"), CLASSES, GRID)


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.from_checkpoint(checkpoint, "cpu")


def ras_scan(path: Path, size=(40, 36, 30), seed=0) -> Path:
    """A small synthetic CT (HU) in RAS orientation (as NIfTI files usually are) with a bright blob."""
    rng = np.random.default_rng(seed)
    array = rng.normal(-100, 30, size=size).astype(np.int16)
    array[10:25, 8:20, 5:20] = 60
    geometry = Geometry(size, (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    write_image(path, array, geometry)
    return path


def write_dicom_series(folder: Path, size=(24, 20, 6)) -> Path:
    """A tiny axial CT DICOM series (one file per slice) written with SimpleITK."""
    folder.mkdir(parents=True)
    array = (np.arange(np.prod(size)).reshape(size[::-1]) % 200 - 100).astype(np.int16)  # (k, j, i)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.123456"
    for k in range(size[2]):
        image = sitk.GetImageFromArray(array[k])
        image.SetSpacing((0.8, 0.8))
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000e", series_uid),
            ("0020|0013", str(k + 1)),
            ("0020|0032", f"-10\\-20\\{-100 + 2.5 * k}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0018|0050", "2.5"),
            ("0028|0030", "0.8\\0.8"),
            ("0028|1052", "0"),
            ("0028|1053", "1"),
        ):
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(image)
    return folder


def check_prediction(prediction: dict, geometry: Geometry) -> None:
    """Schema of docs/conventions.md, boxes inside the scan, voxel and mm boxes agreeing through geometry."""
    assert prediction["world_frame"] == "LPS"
    assert {d["label"] for d in prediction["detections"]} == set(CLASSES.values())
    size = np.asarray(geometry.size, dtype=float)
    for det in prediction["detections"]:
        assert set(FIELDS) <= set(det)
        assert CLASSES[det["label_id"]] == det["label"]
        assert 0.0 <= det["score"] <= 1.0
        vox, mm = np.asarray(det["box_voxel"]), np.asarray(det["box_mm"])
        assert np.all(vox[:3] >= -1e-3) and np.all(vox[3:] <= size + 1e-3) and np.all(vox[3:] >= vox[:3])
        np.testing.assert_allclose(voxel_box_to_world(vox, geometry), mm, atol=0.02)
        np.testing.assert_allclose(det["center_mm"], (mm[:3] + mm[3:]) / 2, atol=2e-3)
        np.testing.assert_allclose(det["size_mm"], mm[3:] - mm[:3], atol=2e-3)


def test_predict_file_writes_json_png_and_box_mask(tmp_path, predictor):
    scan = ras_scan(tmp_path / "case_7_0000.nii.gz")
    summary = predict_scans(predictor, [scan], tmp_path / "out", save_box_mask=True, progress=False)
    assert summary.done == ["case_7"] and summary.failed == []
    prediction = json.loads((tmp_path / "out" / "case_7.json").read_text())
    assert prediction["case_id"] == "case_7" and prediction["image"] == str(scan)
    geometry = read_image(scan).geometry
    check_prediction(prediction, geometry)
    assert (tmp_path / "out" / "case_7.png").stat().st_size > 10_000
    mask = read_image(tmp_path / "out" / "case_7_boxes.nii.gz")
    assert mask.geometry.is_close(geometry)
    assert set(np.unique(mask.array)) <= {0, *CLASSES}
    assert np.count_nonzero(mask.array) > 0


def test_retinanet_checkpoint_predicts_through_the_same_verb(tmp_path):
    run = save_random_checkpoint(tmp_path / "retina", CLASSES, GRID, "arch=retinanet")
    scan = ras_scan(tmp_path / "r.nii.gz")
    summary = predict_scans(Predictor.from_checkpoint(run, "cpu"), [scan], tmp_path / "out", progress=False)
    assert summary.failed == []
    prediction = json.loads((tmp_path / "out" / "r.json").read_text())
    check_prediction(prediction, read_image(scan).geometry)
    labels = [d["label"] for d in prediction["detections"]]
    assert len(labels) == len(set(labels))  # at most one box per organ, as for Organ-DETR


def test_score_threshold_drops_detections(tmp_path, predictor):
    scan = ras_scan(tmp_path / "a.nii.gz")
    predict_scans(predictor, [scan], tmp_path / "out", score_threshold=1.0, overlay=False, progress=False)
    assert json.loads((tmp_path / "out" / "a.json").read_text())["detections"] == []


def test_batched_prediction_matches_single(tmp_path, predictor):
    scans = [
        ras_scan(tmp_path / "a.nii.gz", seed=1),
        ras_scan(tmp_path / "b.nii.gz", size=(30, 40, 20), seed=2),
    ]
    predict_scans(predictor, scans, tmp_path / "one", batch_size=1, overlay=False, progress=False)
    predict_scans(predictor, scans, tmp_path / "two", batch_size=2, overlay=False, progress=False)
    for name in ("a", "b"):
        one = json.loads((tmp_path / "one" / f"{name}.json").read_text())["detections"]
        two = json.loads((tmp_path / "two" / f"{name}.json").read_text())["detections"]
        assert [d["label"] for d in one] == [d["label"] for d in two]
        np.testing.assert_allclose([d["box_mm"] for d in one], [d["box_mm"] for d in two], atol=1e-2)


def test_dicom_series_folder(tmp_path, predictor):
    series = write_dicom_series(tmp_path / "patient_ct")
    summary = predict_scans(predictor, [series], tmp_path / "out", overlay=False, progress=False)
    assert summary.failed == [] and summary.done == ["patient_ct"]
    prediction = json.loads((tmp_path / "out" / "patient_ct.json").read_text())
    check_prediction(prediction, read_image(series).geometry)


def test_shared_dicom_series(tmp_path, predictor, shared_data):
    series = shared_data / "totalsegmentator" / "example_ct_dicom"
    summary = predict_scans(predictor, [series], tmp_path / "out", overlay=False, progress=False)
    assert summary.failed == []
    prediction = json.loads((tmp_path / "out" / "example_ct_dicom.json").read_text())
    check_prediction(prediction, read_image(series).geometry)


def test_bad_scan_does_not_stop_the_others(tmp_path, checkpoint):
    folder = tmp_path / "scans"
    folder.mkdir()
    ras_scan(folder / "good.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(checkpoint),
            str(folder),
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-overlay",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    assert "broken.nii.gz" in result.output and "1 scan(s) failed" in result.output
    assert (tmp_path / "out" / "good.json").is_file()
    assert not (tmp_path / "out" / "broken.json").exists()


def test_find_scans_folder_and_unique_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ras_scan(tmp_path / "a" / "ct_0000.nii.gz")
    ras_scan(tmp_path / "b" / "ct.mha")
    (tmp_path / "a" / "notes.txt").write_text("not a scan")
    scans = find_scans([tmp_path / "a", tmp_path / "b" / "ct.mha"])
    assert [s.case_id for s in scans] == ["ct", "ct_2"]
    assert case_id_of(Path("x/case_0001_0000.nii.gz")) == "case_0001"


def test_find_scans_rejects_missing_and_empty(tmp_path):
    from organdetr.runtime.errors import InputError

    with pytest.raises(InputError, match="no such file"):
        find_scans([tmp_path / "missing.nii.gz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no scans"):
        find_scans([tmp_path / "empty"])


def test_box_mask_fills_boxes_small_on_top():
    detections = [
        {"label_id": 1, "box_voxel": [0, 0, 0, 10, 10, 10]},
        {"label_id": 2, "box_voxel": [2.4, 2.6, 3, 4, 5, 6]},
    ]
    mask = box_mask(detections, (12, 12, 12))
    assert mask[3, 3, 4] == 2 and mask[8, 8, 8] == 1 and mask[11, 11, 11] == 0
    assert np.count_nonzero(mask == 2) == (4 - 2) * (5 - 3) * (6 - 3)
