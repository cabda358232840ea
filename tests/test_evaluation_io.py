"""Prediction / ground-truth loading and `organdetr evaluate` end to end (tiny synthetic data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.evaluation.io import load_ground_truth, load_predictions
from organdetr.runtime.errors import InputError

runner = CliRunner(env={"COLUMNS": "220"})
CLASSES = {"1": "liver", "2": "spleen"}
LABEL_IDS = {name: int(i) for i, name in CLASSES.items()}


def write_prediction(folder, case_id, detections, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    dets = [
        {"label": lab, "label_id": LABEL_IDS.get(lab, 99), "score": s, "box_mm": list(map(float, b))}
        for lab, s, b in detections
    ]
    (folder / f"{case_id}.json").write_text(
        json.dumps({"case_id": case_id, "world_frame": "LPS", "detections": dets, **extra})
    )


def write_cache(root, boxes_per_case):
    (root / "cases").mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps({"classes": CLASSES, "input_size": [8, 8, 8]}))
    for case_id, boxes in boxes_per_case.items():
        record = {"case_id": case_id, "boxes": [{"name": n, "box_mm": list(map(float, b))} for n, b in boxes]}
        (root / "cases" / f"{case_id}.json").write_text(json.dumps(record))
    return root


BOX = [0, 0, 0, 10, 10, 10]


def test_load_predictions_and_cache_ground_truth(tmp_path):
    write_prediction(tmp_path / "pred", "a", [("liver", 0.9, BOX)])
    (tmp_path / "pred" / "other.json").write_text(json.dumps({"note": "not a prediction"}))
    preds = load_predictions(tmp_path / "pred", ["liver", "spleen"])
    assert preds.case_ids == ["a"] and len(preds.detections) == 1
    assert [p.name for p in preds.skipped] == ["other.json"]
    truth = load_ground_truth(write_cache(tmp_path / "cache", {"a": [("liver", BOX)], "b": []}))
    assert truth.classes == ["liver", "spleen"] and truth.case_ids == ["a", "b"]
    assert len(truth.boxes) == 1


@pytest.mark.parametrize(
    ("detection", "message"),
    [
        (("lung", 0.9, BOX), "unknown organ 'lung'"),
        (("liver", None, BOX), "invalid score"),
        (("liver", 0.9, [10, 0, 0, 0, 10, 10]), "min > max"),
        (("liver", 0.9, [0, 0, 0, 1]), "6 numbers"),
    ],
)
def test_bad_prediction_files_name_the_file(tmp_path, detection, message):
    write_prediction(tmp_path, "a", [detection])
    with pytest.raises(InputError, match=message) as err:
        load_predictions(tmp_path, ["liver", "spleen"])
    assert "a.json" in str(err.value) and "\n" not in str(err.value)


def test_duplicate_case_ids_and_bad_json(tmp_path):
    write_prediction(tmp_path, "a", [])
    (tmp_path / "b.json").write_text(json.dumps({"case_id": "a", "detections": []}))
    with pytest.raises(InputError, match="duplicate case id 'a'"):
        load_predictions(tmp_path)
    (tmp_path / "b.json").write_text("{broken")
    with pytest.raises(InputError, match="b.json: not readable JSON"):
        load_predictions(tmp_path)


def test_unknown_ground_truth_folder(tmp_path):
    with pytest.raises(InputError, match="not a preprocessed cache"):
        load_ground_truth(tmp_path)


def test_dataset_ground_truth_from_label_maps(tmp_path):
    from organdetr.core.geometry import Geometry
    from organdetr.datasets.nnunet import write_dataset_json
    from organdetr.io.images import write_image

    root = tmp_path / "Dataset001_Tiny"
    geometry = Geometry((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[1:4, 2:5, 3:6] = 1
    for case, lab in (("c0", labels), ("c1", np.zeros_like(labels))):
        write_image(root / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((8, 8, 8), np.int16), geometry)
        write_image(root / "labelsTr" / f"{case}.nii.gz", lab, geometry)
    write_dataset_json(root, {1: "liver", 2: "spleen"}, 2, name="Tiny")
    truth = load_ground_truth(root, progress=False)
    assert truth.case_ids == ["c0", "c1"] and truth.classes == ["liver", "spleen"]
    (box,) = truth.boxes
    np.testing.assert_allclose(box.box_mm, [1, 3, 5, 7, 9, 11])  # voxel edges: (lo - 0.5) * 2 mm


def test_cli_evaluate_writes_report_and_lists_missing(tmp_path):
    cache = write_cache(tmp_path / "cache", {"a": [("liver", BOX), ("spleen", BOX)], "b": [("liver", BOX)]})
    write_prediction(tmp_path / "pred", "a", [("liver", 0.9, BOX), ("spleen", 0.8, [0, 0, 0, 10, 10, 7])])
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(cache), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "max 1 detection per organ per scan" in result.output and "COCO mode" in result.output
    assert "1 of 2 cases have no prediction file" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["max_detections"] == 1 and metrics["settings"]["mode"] == "coco"
    assert metrics["missing_predictions"] == ["b"]
    # liver: 1 of 2 found (AP50 51/101); spleen: IoU 0.7 (AP50 1, AP over .50:.95 = 5/10)
    assert metrics["summary"]["AP50"] == pytest.approx((51 / 101 + 1) / 2)
    assert metrics["per_class"]["spleen"]["AP"] == pytest.approx(0.5)
    assert (out / "pr_curves.png").stat().st_size > 0
    assert "| organ |" in (out / "metrics.md").read_text()
    assert (out / "metrics.csv").read_text().splitlines()[1].endswith(",coco,1")


def test_cli_evaluate_monai_mode_and_bad_input(tmp_path):
    cache = write_cache(tmp_path / "cache", {"a": [("liver", BOX)]})
    write_prediction(tmp_path / "pred", "a", [("liver", 0.9, BOX)])
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "pred"),
            str(cache),
            "--mode",
            "monai",
            "--max-detections",
            "100",
            "-o",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "MONAI mode, max 100 detections" in result.output
    write_prediction(tmp_path / "pred", "a", [("lung", 0.9, BOX)])
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(cache)])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
