"""A case label survives convert -> preprocess -> train -> predict -> evaluate (BraTS grades, MTMed3D)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from _brain_factory import brats_tree
from organdetr.cli import app


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_grade_travels_from_the_source_tree_to_the_prediction(tmp_path):
    grades = brats_tree(tmp_path / "src", "2018", cases=2)
    invoke("convert", "brats", tmp_path / "src", tmp_path / "raw")
    assert json.loads((tmp_path / "raw" / "case_labels.json").read_text()) == grades

    invoke("preprocess", tmp_path / "raw", tmp_path / "cache", "--size", 32, 32, 32)
    plans = json.loads((tmp_path / "cache" / "plans.json").read_text())
    assert plans["case_classes"] == {"0": "LGG", "1": "HGG"} and plans["regions"]["ET"] == [3]
    for case_id, grade in grades.items():
        record = json.loads((tmp_path / "cache" / "cases" / f"{case_id}.json").read_text())
        assert record["case_label"] == grade

    run = tmp_path / "run"
    invoke("train", "mtmed3d_tiny", "--cache", tmp_path / "cache", "-o", run, "--set", "train.steps=2")
    config = (run / "config.yaml").read_text()
    assert "arch: mtmed3d" in config and "in_channels: 4" in config  # channels came from the data

    out = tmp_path / "pred"
    invoke("predict", run, tmp_path / "raw" / "imagesTr", "-o", out, "--device", "cpu", "--no-progress")
    for case_id in grades:
        prediction = json.loads((out / f"{case_id}.json").read_text())
        case_label = prediction["case_label"]
        assert case_label["label"] in ("LGG", "HGG")
        assert case_label["probability"] == max(case_label["probabilities"].values())
        assert sum(case_label["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(prediction["images"]) == 4 and (out / prediction["segmentation"]).is_file()

    output = invoke("evaluate", out, tmp_path / "raw")
    assert "Case classification: 2 cases" in output
    report = json.loads((out / "evaluation" / "classification.json").read_text())
    assert report["cases"] == 2 and set(report["per_class"]) == {"LGG", "HGG"}
    assert report["per_class"]["HGG"]["support"] == sum(g == "HGG" for g in grades.values())
