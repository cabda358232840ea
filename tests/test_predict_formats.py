"""`organdetr predict --format slicer|monai|nndetection --html`: the sister formats written by a real run."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from _cache_factory import save_random_checkpoint
from organdetr.cli import app
from organdetr.core.boxes.modes import to_nndetection_boxes
from organdetr.core.geometry import Geometry
from organdetr.formats.slicer import read_markups_rois
from organdetr.io.images import write_image

CLASSES = {1: "liver", 2: "spleen", 5: "kidney_left"}


@pytest.fixture(scope="module")
def run_and_scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_formats")
    run = save_random_checkpoint(root / "run", CLASSES, (32, 32, 32))
    rng = np.random.default_rng(0)
    geometry = Geometry((40, 36, 30), (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for name in ("a", "b"):
        write_image(
            root / "scans" / f"{name}.nii.gz", rng.normal(-100, 30, geometry.size).astype(np.int16), geometry
        )
    return run, root / "scans"


def test_predict_writes_every_format(run_and_scans, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    pytest.importorskip("monai")
    run, scans = run_and_scans
    out = tmp_path / "out"
    args = ["predict", str(run), str(scans), "-o", str(out), "--device", "cpu", "--no-overlay"]
    args += ["--no-progress", "--format", "slicer", "--format", "monai", "--format", "nndetection", "--html"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    datalist = json.loads((out / "monai_datalist.json").read_text())
    assert [item["image"] for item in datalist["validation"]] == [
        str(scans / "a.nii.gz"),
        str(scans / "b.nii.gz"),
    ]
    page = (out / "viewer.html").read_text()
    for case in ("a", "b"):
        prediction = json.loads((out / f"{case}.json").read_text())
        detections = prediction["detections"]
        assert {d["label"] for d in detections} == set(CLASSES.values())
        rois = read_markups_rois(out / f"{case}_boxes.mrk.json")
        for roi, det in zip(rois, detections, strict=True):
            assert roi["label"] == det["label"]
            np.testing.assert_allclose(roi["box_mm"], det["box_mm"], atol=2e-3)
        segmentation = slicerio.read_segmentation(str(out / f"{case}.seg.nrrd"))
        assert sorted(slicerio.segment_names(segmentation)) == sorted(f"{n} box" for n in CLASSES.values())
        boxes = pickle.loads((out / f"{case}_boxes.pkl").read_bytes())  # written by this run
        expected = to_nndetection_boxes([d["box_voxel"] for d in detections])
        np.testing.assert_allclose(boxes["pred_boxes"], expected, atol=1e-3)
        assert f'"case_id": "{case}"' in page


def test_predict_rejects_unknown_format_before_running(run_and_scans, tmp_path):
    run, scans = run_and_scans
    result = CliRunner().invoke(
        app, ["predict", str(run), str(scans), "-o", str(tmp_path / "o"), "--format", "itk"]
    )
    assert result.exit_code != 0
    assert "--format 'itk' is not one of slicer, monai, nndetection" in str(result.exception or result.output)
    assert not (tmp_path / "o").exists()


def test_segmenting_model_masks_reach_slicer_and_the_viewer(tmp_path):
    """A segmenting model's label map (predict's ``seg``) becomes the .seg.nrrd segments and the viewer's
    mask volumes; the segment voxels are exactly the label map predict writes as <case>_seg.nii.gz."""
    slicerio = pytest.importorskip("slicerio")
    from organdetr.io.images import read_label_map

    run = save_random_checkpoint(
        tmp_path / "run",
        {1: "liver", 7: "spleen"},
        (32, 32, 32),
        "arch=seg2box",
        "seg2box.features=[4, 4, 8, 8, 16, 4]",
    )
    geometry = Geometry((40, 36, 30), (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    scan = tmp_path / "scan.nii.gz"
    write_image(scan, np.random.default_rng(0).normal(0, 100, geometry.size).astype(np.int16), geometry)
    out = tmp_path / "out"
    args = ["predict", str(run), str(scan), "-o", str(out), "--no-overlay", "--format", "slicer", "--html"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    labels = read_label_map(out / "scan_seg.nii.gz").array
    segmentation = slicerio.read_segmentation(str(out / "scan.seg.nrrd"))
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    assert sorted(s["labelValue"] for s in segmentation["segments"]) == present
    for segment in segmentation["segments"]:
        assert segment["name"] == {1: "liver", 7: "spleen"}[segment["labelValue"]]
        np.testing.assert_array_equal(
            slicerio.segment_mask(segmentation, segment), labels == segment["labelValue"]
        )
    page = (out / "viewer.html").read_text()
    assert '"labels": null' not in page and '"mask_ml"' in page
