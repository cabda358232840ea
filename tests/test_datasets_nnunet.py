"""nnU-Net v2 raw format: load_dataset validation and write_dataset_json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from organdetr.core.geometry import Geometry
from organdetr.datasets.nnunet import image_path, label_path, load_dataset, write_dataset_json
from organdetr.io.images import write_image
from organdetr.runtime.errors import InputError

GEOMETRY = Geometry((4, 3, 2), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
CLASSES = {1: "liver", 2: "spleen"}


def make_dataset(root: Path, train=("a", "b"), test=("t",), ending=".nii.gz", **extra) -> Path:
    image = np.zeros(GEOMETRY.size, np.int16)
    label = np.zeros(GEOMETRY.size, np.uint8)
    for case_id in train:
        write_image(image_path(root, case_id, "Tr", ending), image, GEOMETRY)
        write_image(label_path(root, case_id, "Tr", ending), label, GEOMETRY)
    for case_id in test:
        write_image(image_path(root, case_id, "Ts", ending), image, GEOMETRY)
    write_dataset_json(root, CLASSES, len(train), name="Dataset001_Tiny", file_ending=ending, **extra)
    return root


def edit_json(root: Path, **changes) -> None:
    path = root / "dataset.json"
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


def test_round_trip(tmp_path):
    root = make_dataset(tmp_path / "Dataset001_Tiny", source="somewhere")
    content = json.loads((root / "dataset.json").read_text())
    assert content["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert content["source"] == "somewhere" and content["channel_names"] == {"0": "CT"}
    dataset = load_dataset(root)
    assert dataset.name == "Dataset001_Tiny" and dataset.classes == CLASSES
    assert [c.case_id for c in dataset.cases] == ["a", "b"]
    assert dataset.cases[0].image == root / "imagesTr" / "a_0000.nii.gz"
    assert dataset.cases[0].label == root / "labelsTr" / "a.nii.gz"
    assert [(c.case_id, c.label) for c in dataset.test_cases] == [("t", None)]


def test_file_ending_is_honoured(tmp_path):
    root = make_dataset(tmp_path / "d", ending=".nrrd")
    write_image(image_path(root, "stray", "Tr", ".nii.gz"), np.zeros(GEOMETRY.size), GEOMETRY)
    dataset = load_dataset(root)
    assert dataset.file_ending == ".nrrd"
    assert [c.image.name for c in dataset.cases] == ["a_0000.nrrd", "b_0000.nrrd"]


def test_missing_or_broken_dataset_json(tmp_path):
    with pytest.raises(InputError, match="dataset.json: dataset.json not found"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0}, "file_ending": ".nii.gz"}')
    with pytest.raises(InputError, match="numTraining"):
        load_dataset(tmp_path)


def test_missing_label_is_named(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(InputError) as err:
        load_dataset(root)
    assert str(err.value).startswith(str(root / "labelsTr" / "b.nii.gz"))
    assert "\n" not in str(err.value)


def test_num_training_must_match(tmp_path):
    root = make_dataset(tmp_path / "d")
    edit_json(root, numTraining=3)
    with pytest.raises(InputError, match="numTraining is 3 but 2"):
        load_dataset(root)


def test_region_based_and_bad_labels_rejected(tmp_path):
    root = make_dataset(tmp_path / "d")
    edit_json(root, labels={"background": 0, "liver": 1, "tumour": [1, 2]})
    with pytest.raises(InputError, match="region-based label 'tumour'"):
        load_dataset(root)
    edit_json(root, labels={"liver": 1})
    with pytest.raises(InputError, match="background"):
        load_dataset(root)
    edit_json(root, labels={"background": 0, "liver": 1, "spleen": 1})
    with pytest.raises(InputError, match="used twice"):
        load_dataset(root)


def test_explicit_case_listing_names_missing_file(tmp_path):
    root = make_dataset(tmp_path / "d")
    listing = {
        "a": {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"},
        "x": {"images": ["imagesTr/x_0000.nii.gz"], "label": "labelsTr/x.nii.gz"},
    }
    edit_json(root, dataset=listing, numTraining=2)
    with pytest.raises(InputError) as err:
        load_dataset(root)
    assert str(err.value).startswith(str(root / "imagesTr" / "x_0000.nii.gz"))
    del listing["x"]
    edit_json(root, dataset=listing, numTraining=1)
    assert [c.case_id for c in load_dataset(root).cases] == ["a"]


def test_write_dataset_json_rejects_bad_classes(tmp_path):
    with pytest.raises(InputError, match="repeated: liver"):
        write_dataset_json(tmp_path, {1: "liver", 2: "liver"}, 0, name="x")
    with pytest.raises(InputError, match=">= 1"):
        write_dataset_json(tmp_path, {0: "liver"}, 0, name="x")
    assert not (tmp_path / "dataset.json").exists()
