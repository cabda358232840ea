"""convert brats: the BraTS layouts -> four-channel nnU-Net datasets with regions and grades."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _brain_factory import brats_tree
from organdetr.core.geometry import Geometry
from organdetr.datasets import get_converter
from organdetr.datasets.brats import discover_cases
from organdetr.datasets.nnunet import load_dataset
from organdetr.io.images import read_image, read_label_map, write_image
from organdetr.runtime.errors import InputError


@pytest.mark.parametrize("layout", ["2018", "2020"])
def test_graded_layouts_give_four_channels_regions_and_case_labels(tmp_path, layout):
    grades = brats_tree(tmp_path / "src", layout)
    summary = get_converter("brats")(tmp_path / "src", tmp_path / "out", progress=False)
    assert not summary.failed and sorted(summary.done) == sorted(grades)
    dataset = load_dataset(tmp_path / "out")
    assert dataset.channels == ["T1", "T1ce", "T2", "FLAIR"]
    assert dataset.classes == {1: "necrotic_core", 2: "peritumoral_edema", 3: "enhancing_tumor"}
    assert dataset.regions == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert dataset.case_classes == ["LGG", "HGG"]
    assert {c.case_id: c.case_label for c in dataset.cases} == grades
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["official_label_ids"] == {"1": 1, "2": 2, "3": 4} and meta["label_set"] == "2018"
    case = dataset.cases[0]
    source = tmp_path / "src" / (grades[case.case_id] if layout == "2018" else "") / case.case_id
    for channel, suffix in zip(case.images, ("t1", "t1ce", "t2", "flair"), strict=True):
        np.testing.assert_array_equal(
            read_image(channel).array, read_image(source / f"{case.case_id}_{suffix}.nii.gz").array
        )
    official = read_label_map(source / f"{case.case_id}_seg.nii.gz").array
    dense = read_label_map(case.label).array
    np.testing.assert_array_equal(dense == 3, official == 4)  # ET: official 4 -> dense 3


def test_ungraded_and_2023_releases(tmp_path):
    brats_tree(tmp_path / "src21", "2021")
    get_converter("brats")(tmp_path / "src21", tmp_path / "out21", progress=False)
    dataset = load_dataset(tmp_path / "out21")
    assert dataset.case_classes == [] and not (tmp_path / "out21" / "case_labels.json").exists()
    assert dataset.regions == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

    brats_tree(tmp_path / "src23", "2023")
    cases, naming = discover_cases(tmp_path / "src23")
    assert naming == "2023" and [p.name.split("-")[-1] for p in cases[0].channels] == [
        "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz",
    ]  # fmt: skip
    summary = get_converter("brats")(tmp_path / "src23", tmp_path / "out23", progress=False)
    assert not summary.failed
    meta = json.loads((tmp_path / "out23" / "dataset.json").read_text())
    assert meta["label_set"] == "2023" and "official_label_ids" not in meta  # 1, 2, 3 are dense already
    assert meta["regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def test_a_missing_channel_or_a_misaligned_one_is_named(tmp_path):
    grades = brats_tree(tmp_path / "src", "2021", cases=2)
    first, second = sorted(grades)
    (tmp_path / "src" / first / f"{first}_t2.nii.gz").unlink()
    with pytest.raises(InputError, match="has no T2 file"):
        discover_cases(tmp_path / "src")
    brats_tree(tmp_path / "src2", "2021", cases=2)
    flair = tmp_path / "src2" / second / f"{second}_flair.nii.gz"
    volume = read_image(flair)
    g = volume.geometry
    write_image(flair, volume.array, Geometry(g.size, g.spacing, (5.0, 0.0, 0.0), g.direction))
    summary = get_converter("brats")(tmp_path / "src2", tmp_path / "out", progress=False)
    assert summary.done == [first]
    assert f"{second}_flair.nii.gz" in summary.failed[0][1] and "origin" in summary.failed[0][1]


def test_the_cli_converts_brats(tmp_path):
    from typer.testing import CliRunner

    from organdetr.cli import app

    brats_tree(tmp_path / "src", "2018", cases=1)
    result = CliRunner().invoke(app, ["convert", "brats", str(tmp_path / "src"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "label set 2018" in result.output and (tmp_path / "out" / "case_labels.json").is_file()
