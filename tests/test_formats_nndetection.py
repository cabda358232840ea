"""nnDetection: raw Task layout -> nnU-Net (datasets.nndetection), predictions in nnDetection's box convention
(formats.nndetection, core.boxes.modes)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.modes import from_nndetection_boxes, to_nndetection_boxes
from organdetr.core.geometry import Geometry
from organdetr.datasets.nndetection import convert
from organdetr.datasets.nnunet import load_dataset, read_dataset_json
from organdetr.formats.nndetection import prediction_boxes, write_prediction
from organdetr.io.images import read_label_map, write_image
from organdetr.runtime.errors import InputError

GEOMETRY = Geometry((30, 26, 16), (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def _instances(seed: int = 0) -> tuple[np.ndarray, dict]:
    """Instance map [I, J, K] with three instances: two of class 0 (liver pieces), one of class 1."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(GEOMETRY.size, np.uint8)
    o = rng.integers(0, 3, 3)
    inst[2 + o[0] : 10, 3:12, 2:8] = 1
    inst[12:16, 3 + o[1] : 9, 2:6] = 2
    inst[18:26, 10:20, 5 + o[2] : 14] = 3
    return inst, {"instances": {"1": 0, "2": 0, "3": 1}}


def make_task(root, cases=("case0", "case1"), fmt="yaml"):
    task = root / "Task101_Organs"
    for split, names in (("Tr", cases), ("Ts", ("case9",))):
        for n, case in enumerate(names):
            inst, meta = _instances(n)
            image = np.where(inst > 0, 80, -100).astype(np.int16)
            write_image(task / "raw_splitted" / f"images{split}" / f"{case}_0000.nii.gz", image, GEOMETRY)
            write_image(task / "raw_splitted" / f"images{split}" / f"{case}_0001.nii.gz", image, GEOMETRY)
            if split == "Tr":
                write_image(task / "raw_splitted" / "labelsTr" / f"{case}.nii.gz", inst, GEOMETRY)
                (task / "raw_splitted" / "labelsTr" / f"{case}.json").write_text(json.dumps(meta))
    if fmt == "yaml":
        text = 'task: Task101_Organs\nname: "Organs"\ndim: 3\nlabels:\n  "0": "Liver"\n  "1": "Kidney Left"\n'
        (task / "dataset.yaml").write_text(text + 'modalities:\n  "0": "CT"\n  "1": "PET"\n')
    else:
        (task / "dataset.json").write_text(
            json.dumps({"dim": 3, "labels": {"0": "liver", "1": "kidney_left"}})
        )
    return task


def nndetection_boxes_of(instance_map_ijk: np.ndarray) -> np.ndarray:
    """nnDetection's convention stated independently: on SimpleITK's (k, j, i) array, per instance
    (min0 - 1, min1 - 1, max0 + 1, max1 + 1, min2 - 1, max2 + 1) (its instances_to_boxes_np)."""
    image = sitk.GetImageFromArray(np.transpose(instance_map_ijk, (2, 1, 0)))
    seg = sitk.GetArrayFromImage(image)
    boxes = []
    for instance in [v for v in np.unique(seg) if v > 0]:
        idx = np.stack(np.nonzero(seg == instance), axis=1)
        lo, hi = idx.min(0), idx.max(0)
        boxes.append([lo[0] - 1, lo[1] - 1, hi[0] + 1, hi[1] + 1, lo[2] - 1, hi[2] + 1])
    return np.asarray(boxes, dtype=np.float64)


def test_box_convention_matches_nndetection():
    inst, _ = _instances()
    ours = boxes_from_labels(inst, GEOMETRY, None)
    voxel = np.asarray([b.box_voxel for b in ours])
    np.testing.assert_array_equal(to_nndetection_boxes(voxel), nndetection_boxes_of(inst))
    np.testing.assert_array_equal(from_nndetection_boxes(to_nndetection_boxes(voxel)), voxel)


def test_prediction_file(tmp_path):
    inst, _ = _instances()
    boxes = boxes_from_labels(inst, GEOMETRY, {1: "liver", 2: "spleen", 3: "kidney_left"})
    detections = [{"label": b.name, "label_id": b.label_id, "score": 0.9, "box_voxel": b.box_voxel.tolist(),
                   "box_mm": b.box_mm.tolist()} for b in boxes]  # fmt: skip
    prediction = {"case_id": "c1", "original": GEOMETRY.to_dict(), "detections": detections}
    path = write_prediction(prediction, tmp_path)
    assert path.name == "c1_boxes.pkl"
    data = pickle.loads(path.read_bytes())  # our own file, just written
    assert set(data) == set(prediction_boxes(prediction))
    np.testing.assert_array_equal(data["pred_boxes"], nndetection_boxes_of(inst))
    assert data["pred_labels"].tolist() == [0, 1, 2] and data["pred_scores"].dtype == np.float32
    assert data["original_size_of_raw_data"].tolist() == [16, 26, 30]  # SimpleITK array order (k, j, i)
    assert data["itk_spacing"] == GEOMETRY.spacing and data["itk_direction"] == GEOMETRY.direction
    with pytest.raises(InputError, match="no scan geometry"):
        prediction_boxes({"case_id": "c2", "detections": []})


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_convert_task(tmp_path, fmt):
    task = make_task(tmp_path, fmt=fmt)
    summary = convert(task / "raw_splitted", tmp_path / "Dataset101_Organs", progress=False)
    assert summary.failed == [] and summary.num_training == 2 and summary.num_test == 1
    dataset = load_dataset(tmp_path / "Dataset101_Organs")
    assert dataset.classes == {1: "liver", 2: "kidney_left"}
    info = read_dataset_json(tmp_path / "Dataset101_Organs")
    if fmt == "yaml":
        assert info["channel_names"] == {"0": "CT"} and info["channels_dropped"] == {"1": "PET"}
    inst, _ = _instances(0)
    labels = read_label_map(tmp_path / "Dataset101_Organs" / "labelsTr" / "case0.nii.gz").array
    np.testing.assert_array_equal(labels, np.select([inst == 3, inst > 0], [2, 1], 0))


def test_convert_reports_bad_instance_files(tmp_path):
    task = make_task(tmp_path)
    (task / "raw_splitted" / "labelsTr" / "case0.json").write_text(
        json.dumps({"instances": {"1": 0, "2": 0}})
    )
    (task / "raw_splitted" / "labelsTr" / "case1.json").unlink()
    summary = convert(task, tmp_path / "out", progress=False)
    failures = dict(summary.failed)
    assert "case0.json: instances [3] of the label map have no class" in failures["case0"]
    assert "case1.json: instance file is missing" in failures["case1"]
    with pytest.raises(InputError, match="no nnDetection task"):
        convert(tmp_path / "out", tmp_path / "out2", progress=False)


def test_cli_convert_nndetection(tmp_path):
    task = make_task(tmp_path, cases=("case0",))
    result = CliRunner().invoke(app, ["convert", "nndetection", str(task), str(tmp_path / "D")])
    assert result.exit_code == 0, result.output
    assert load_dataset(tmp_path / "D").classes == {1: "liver", 2: "kidney_left"}
    result = CliRunner().invoke(
        app, ["convert", "nndetection", str(task), str(tmp_path / "E"), "--box-mode", "x"]
    )
    assert result.exit_code == 2 and "monai-datalist format only" in " ".join(
        result.output.replace("│", " ").split()
    )
