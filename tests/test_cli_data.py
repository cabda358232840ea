"""`organdetr boxes` and `organdetr preprocess` end to end (typer CliRunner + one real subprocess)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.core.geometry import Geometry
from organdetr.io.images import write_image
from organdetr.runtime.errors import InputError
from test_preprocess import TINY, make_dataset  # tests/ is on sys.path (pytest rootdir import)

GEOMETRY = Geometry((12, 10, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def scan(tmp_path):
    labels = np.zeros(GEOMETRY.size, np.uint8)
    labels[1:4, 2:5, 0:2] = 1
    labels[6:11, 5:9, 3:8] = 5
    image = np.where(labels == 5, 60, -100).astype(np.int16)
    write_image(tmp_path / "seg.nii.gz", labels, GEOMETRY)
    write_image(tmp_path / "ct.nii.gz", image, GEOMETRY)
    return tmp_path


def test_boxes_table_uses_classes_and_image(scan):
    result = runner.invoke(
        app,
        [
            "boxes",
            str(scan / "seg.nii.gz"),
            "--image",
            str(scan / "ct.nii.gz"),
            "--classes",
            "totalsegmentator",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "spleen" in result.output and "liver" in result.output and "2 organs" in result.output
    assert "[6, 5, 3] - [11, 9, 8)" in result.output and "mean HU" in result.output


def test_boxes_json_and_csv_files(scan):
    out_json, out_csv = scan / "boxes.json", scan / "boxes.csv"
    assert runner.invoke(app, ["boxes", str(scan / "seg.nii.gz"), "-o", str(out_json)]).exit_code == 0
    report = json.loads(out_json.read_text())
    assert report["world_frame"] == "LPS" and report["orientation"] == "RAS"
    assert [(b["label_id"], b["name"]) for b in report["boxes"]] == [(1, "label_1"), (5, "label_5")]
    assert report["boxes"][0]["box_voxel"] == [1, 2, 0, 4, 5, 2] and report["boxes"][0]["voxels"] == 18
    classes = scan / "classes.json"
    classes.write_text(json.dumps({"1": "kidney", "5": "liver"}))
    args = [
        "boxes",
        str(scan / "seg.nii.gz"),
        "--classes",
        str(classes),
        "--min-voxels",
        "20",
        "-o",
        str(out_csv),
    ]
    assert runner.invoke(app, args).exit_code == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == ["liver"] and rows[0]["voxels"] == "100" and rows[0]["i1"] == "11"


def test_boxes_bad_input(scan, tmp_path):
    result = runner.invoke(app, ["boxes", str(scan / "seg.nii.gz"), "--classes", "nonsense"])
    assert result.exit_code == 2 and "neither a known dataset" in result.output
    only_one = tmp_path / "one.json"
    only_one.write_text(json.dumps({"1": "kidney"}))
    result = runner.invoke(app, ["boxes", str(scan / "seg.nii.gz"), "--classes", str(only_one)])
    assert isinstance(result.exception, InputError) and "not in the class map" in str(result.exception)
    other = Geometry(GEOMETRY.size, GEOMETRY.spacing, (5.0, 0.0, 0.0), GEOMETRY.direction)
    write_image(tmp_path / "other_ct.nii.gz", np.zeros(GEOMETRY.size, np.int16), other)
    result = runner.invoke(
        app, ["boxes", str(scan / "seg.nii.gz"), "--image", str(tmp_path / "other_ct.nii.gz")]
    )
    assert isinstance(result.exception, InputError) and "differs from the image" in str(result.exception)


def test_boxes_error_is_one_line_from_the_real_command(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"garbage" * 50)
    proc = subprocess.run(
        [sys.executable, "-c", "from organdetr.cli import main; main()", "boxes", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "broken.nii.gz: cannot read image" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_preprocess_command_lists_failures_and_resumes(tmp_path):
    root = make_dataset(tmp_path / "raw", bad={"case_bad": "corrupt"})
    cache = tmp_path / "cache"
    size = [str(s) for s in TINY.input_size]
    args = ["preprocess", str(root), str(cache), "--size", *size, "--fit", "resize", "--hu", "-500", "500"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "2 preprocessed, 0 already there, 1 failed" in result.output and "case_bad" in result.output
    assert json.loads((cache / "plans.json").read_text())["hu_window"] == [-500.0, 500.0]
    again = runner.invoke(app, args)
    assert "0 preprocessed, 2 already there, 1 failed" in again.output
    changed = runner.invoke(app, [*args[:-2], "-1000", "1000"])
    assert isinstance(changed.exception, InputError) and "hu_window" in str(changed.exception)
