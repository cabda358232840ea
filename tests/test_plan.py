"""`organdetr plan DATASET`: the fingerprint, the choices and their reasons on the phantoms, a fake
anisotropic dataset and the real CT; `preprocess` and `train` pick the plan up; one-line refusals."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from _cli import run_cli
from organdetr.core.geometry import Geometry
from organdetr.datasets.nnunet import write_dataset_json
from organdetr.datasets.synthetic.phantom import write_synthetic_dataset
from organdetr.experiments.planning import PlanOptions, make_plan
from organdetr.io.images import read_label_table, write_image
from organdetr.preprocessing.planning import PLAN_FILE, planned_settings, planned_training

SETTINGS = ("input_size", "fit", "target_spacing", "hu_window", "preset", "queries", "anchors")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("phantoms") / "raw", 3, seed=0)


def _anisotropic(root: Path, cases: int = 2) -> Path:
    """Thick-slice scans: 0.8 x 0.8 x 5 mm voxels, 128 x 128 x 24 (102 x 102 x 120 mm), two cuboid organs."""
    geometry = Geometry((128, 128, 24), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for n in range(cases):
        image = np.full((128, 128, 24), -900, np.int16)
        labels = np.zeros((128, 128, 24), np.uint8)
        labels[30 + n : 70, 40:90, 6:18] = 1  # liver: 32-40 x 40 x 60 mm
        labels[80:100, 20 + n : 35, 8:12] = 2  # gallbladder: 16 x 12-11 x 20 mm
        image[labels == 1], image[labels == 2] = 60, 20
        write_image(root / "imagesTr" / f"case_{n}_0000.nii.gz", image, geometry)
        write_image(root / "labelsTr" / f"case_{n}.nii.gz", labels, geometry)
    write_dataset_json(root, {1: "liver", 2: "gallbladder"}, cases, name="Anisotropic")
    return root


def _cli_plan(capsys, dataset, out, *extra):
    code, stdout, err = run_cli(capsys, "plan", dataset, "--output", out, "--no-measure", *extra)
    assert code == 0, err
    return json.loads(Path(out).read_text()), stdout


def test_plan_on_the_phantoms_prints_choices_with_reasons(phantoms, tmp_path, capsys):
    """The phantoms at 64^3: a fixed spacing near the benchmark's 6.5 x 6.5 x 6.0 mm, fit=pad, the
    organs' HU window, the demo preset, 3 queries per organ, 4 levels of anchors; every choice printed."""
    plan, stdout = _cli_plan(capsys, phantoms, tmp_path / "plan.json")
    pre = plan["preprocess"]
    assert pre["input_size"] == [64, 64, 64] and pre["fit"] == "pad"
    assert all(5.5 <= s <= 7.5 for s in pre["target_spacing"]), pre["target_spacing"]
    low, high = pre["hu_window"]  # the organs' soft tissue (-158..342 on 3 phantoms), not the stomach's gas
    assert -250 < low < -100 and 250 < high < 400 and high - low >= 500, pre["hu_window"]
    assert "gas" in plan["reasons"]["hu_window"]
    assert plan["train"]["preset"] == "demo"
    overrides = plan["train"]["overrides"]
    assert overrides["model.num_queries"] == 3 * len(plan["fingerprint"]["classes"])
    anchors = overrides["model.anchor_sizes"]
    assert len(anchors) == 12 and all(0 < a <= 1 for a in anchors)
    fp = plan["fingerprint"]
    assert fp["orientations"] == {"LPS": 3} and fp["smallest_organ"]["name"] in fp["organs"]
    assert set(fp["intensity"][0]["organs"]) == {"p0.5", "p50", "p99.5"}
    for key in ("input_size", "fit", "target_spacing", "hu_window", "preset", "queries", "anchors"):
        assert len(plan["reasons"][key]) > 20, key
    for word in ("grid", "pad", "HU window", "demo", "queries", "anchors", "percentiles", "field of view"):
        assert word in stdout, word


def test_anisotropic_dataset_keeps_the_thick_axis_native(tmp_path, capsys):
    """0.8 x 0.8 x 5 mm scans of 102 x 102 x 120 mm on 64^3: i, j at the field of view / grid (1.6 mm), k not
    upsampled below its 5 mm slices, and the reason says so."""
    dataset = _anisotropic(tmp_path / "aniso")
    plan, _ = _cli_plan(capsys, dataset, tmp_path / "plan.json")
    spacing = plan["preprocess"]["target_spacing"]
    assert spacing == [1.6, 1.6, 5.0]
    assert "axis k raised to the native spacing" in plan["reasons"]["target_spacing"]
    assert plan["fingerprint"]["spacing_mm"]["median"] == [0.8, 0.8, 5.0]
    assert plan["fingerprint"]["smallest_organ"]["name"] == "gallbladder"


def test_gpu_memory_picks_a_larger_grid_for_small_organs(tmp_path):
    """With a GPU the grid grows until the smallest organ spans 8 voxels a side, or its native count along
    the thick axis (the gallbladder: ~11.6 mm = 7.25 voxels of 1.6 mm at 64^3, 10.5 of 1.1 mm at 96^3;
    4 slices of 5 mm in k at any grid), within the memory named; a tiny GPU stays at 64^3 and says why."""
    dataset = _anisotropic(tmp_path / "aniso")
    roomy = make_plan(dataset, PlanOptions(gpu_memory_gb=24, measure=False))
    assert roomy["preprocess"]["input_size"] == [96, 96, 96] and roomy["budget"]["device"] == "gpu"
    memory = roomy["budget"]["estimated_memory_gb"]
    assert 0 < memory["64"] < memory["96"] < memory["128"]
    small = make_plan(dataset, PlanOptions(gpu_memory_gb=memory["64"] / 0.8 + 0.01, measure=False))
    assert small["preprocess"]["input_size"] == [64, 64, 64]
    assert "largest that fits" in small["reasons"]["input_size"]


def test_cpu_plan_measures_seconds_per_step(tmp_path):
    plan = make_plan(_anisotropic(tmp_path / "aniso", cases=1), PlanOptions(measure=True))
    assert plan["budget"]["seconds_per_step"] > 0
    assert "per step measured here" in plan["reasons"]["input_size"]


def test_plan_on_the_real_ct(shared_data, tmp_path, capsys):
    """TS-A (RAS, 3 mm, abdomen and pelvis) with its TotalSegmentator labels: read as the project reads it."""
    folder = shared_data / "totalsegmentator"
    root = tmp_path / "real"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    os.symlink(folder / "example_ct.nii.gz", root / "imagesTr" / "tsa_0000.nii.gz")
    seg = folder / "example_seg_fast_force_split.nii.gz"
    os.symlink(seg, root / "labelsTr" / "tsa.nii.gz")
    write_dataset_json(root, read_label_table(seg), 1, name="RealCT")
    plan, stdout = _cli_plan(capsys, root, tmp_path / "plan.json")
    fp = plan["fingerprint"]
    assert fp["orientations"] == {"RAS": 1} and fp["spacing_mm"]["median"] == [3.0, 3.0, 3.0]
    assert fp["size_voxels"]["median"] == [122, 101, 112] and "liver" in fp["organs"]
    assert plan["preprocess"]["fit"] == "pad" and min(plan["preprocess"]["target_spacing"]) >= 3.0
    low, high = plan["preprocess"]["hu_window"]  # lungs to bone among TotalSegmentator's organs
    per_organ = fp["intensity"][0]["per_organ"]
    assert low == math.floor(min(v["p25"] for v in per_organ.values())) and high > 300
    assert low < per_organ["liver"]["p50"] < high
    assert "smallest organ" in stdout


def test_preprocess_and_train_pick_up_the_plan(phantoms, tmp_path, capsys):
    """preprocess finds DATASET/organdetr_plan.json (explicit options win) and copies it into the cache;
    train --cache takes the plan's preset and model settings, --set still wins."""
    plan, _ = _cli_plan(capsys, phantoms, phantoms / PLAN_FILE)
    settings, path = planned_settings(phantoms, {"target_spacing": None, "input_size": (32, 32, 32)})
    assert path == phantoms / PLAN_FILE and settings["input_size"] == (32, 32, 32)
    assert list(settings["target_spacing"]) == plan["preprocess"]["target_spacing"]
    cache = tmp_path / "cache"
    code, _, err = run_cli(capsys, "preprocess", phantoms, cache, "--size", "32", "32", "32")
    assert code == 0, err
    plans = json.loads((cache / "plans.json").read_text())
    assert plans["input_size"] == [32, 32, 32] and plans["fit"] == "pad"
    assert plans["target_spacing"] == plan["preprocess"]["target_spacing"]
    assert plans["hu_window"] == plan["preprocess"]["hu_window"]
    assert (cache / PLAN_FILE).is_file()
    config, overrides, note = planned_training(cache, None)
    assert config == "demo" and any(o.startswith("model.anchor_sizes=") for o in overrides) and "plan" in note
    assert planned_training(cache, "tiny")[1] == []  # another preset: the plan's model settings do not apply
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--cache", cache, "--output", run, "--set", "train.steps=1", "--set",
        "data.val_fraction=0", "--set", "train.progress=false", "--set", "data.num_workers=0",
        "--set", "model.num_queries=31", "--set", "train.amp=off",
    )  # fmt: skip
    assert code == 0, err
    config_yaml = (run / "config.yaml").read_text()
    anchors = plan["train"]["overrides"]["model.anchor_sizes"]
    assert f"anchor_sizes: [{anchors[0]}" in config_yaml and "num_queries: 31" in config_yaml
    assert "fine_level: true" in config_yaml  # the demo preset


def test_plan_of_an_empty_dataset_is_one_line_error(tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_dataset_json(root, {1: "liver"}, 0, name="Empty")
    code, _, err = run_cli(capsys, "plan", root, "--no-measure")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no training cases" in err
    assert not (root / PLAN_FILE).exists()


def test_plan_of_an_unreadable_dataset_is_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "plan", tmp_path / "nothing", "--no-measure")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dataset.json" in err
    root = tmp_path / "unlabelled"
    geometry = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(root / "imagesTr" / "a_0000.nii.gz", np.zeros((8, 8, 8), np.int16), geometry)
    write_image(root / "labelsTr" / "a.nii.gz", np.zeros((8, 8, 8), np.uint8), geometry)
    write_dataset_json(root, {1: "liver"}, 1, name="Unlabelled")
    code, _, err = run_cli(capsys, "plan", root, "--no-measure")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no labelled organ" in err
