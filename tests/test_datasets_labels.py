"""Official class maps kept as data (organdetr.datasets.labels)."""

from __future__ import annotations

import json
import re

import pytest

from organdetr.datasets import LABEL_SETS
from organdetr.datasets.labels import (
    CLASS_MAP_NAMES,
    class_map_description,
    class_map_source,
    load_class_map,
    load_regions,
    official_names,
    snake_case,
)
from organdetr.datasets.totalsegmentator import release_only_names

EXPECTED_SIZES = {
    "abdomenct1k": 4,
    "abdomenct1k_organs13": 13,
    "word": 16,
    "amos": 15,
    "verse": 28,
    "totalsegmentator": 117,
    "totalsegmentator_v1": 104,
    "totalsegmentator_mr": 50,
    "brats": 3,
    "brats2023": 3,
}
SPARSE_OFFICIAL_IDS = {"brats": [1, 2, 4]}  # published ids with a gap (the converter makes them dense)


@pytest.mark.parametrize("dataset", CLASS_MAP_NAMES)
def test_class_map_is_dense_unique_and_cited(dataset):
    classes = load_class_map(dataset)
    assert len(classes) == EXPECTED_SIZES[dataset]
    assert list(classes) == SPARSE_OFFICIAL_IDS.get(dataset, list(range(1, len(classes) + 1)))
    assert len(set(classes.values())) == len(classes)
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9_]*", name) for name in classes.values())
    assert len(class_map_source(dataset)) > 20
    assert len(class_map_description(dataset)) > 10


def test_known_ids():
    assert load_class_map("abdomenct1k") == {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}
    word = load_class_map("word")
    assert (word[3], word[4], word[11], word[16]) == (
        "kidney_left",
        "kidney_right",
        "intestine",
        "head_of_femur_right",
    )
    amos = load_class_map("amos")
    assert (amos[2], amos[8], amos[9], amos[15]) == (
        "kidney_right",
        "aorta",
        "inferior_vena_cava",
        "prostate_uterus",
    )
    verse = load_class_map("verse")
    assert (verse[1], verse[8], verse[20], verse[25], verse[26], verse[27], verse[28]) == (
        "vertebrae_C1", "vertebrae_T1", "vertebrae_L1", "vertebrae_L6", "sacrum", "coccyx", "vertebrae_T13",
    )  # fmt: skip
    assert official_names("verse")[27] == "cocc"
    assert load_regions("brats") == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert load_regions("brats2023") == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert load_regions("word") == {}
    assert official_names("amos")[9] == "postcava"


def test_totalsegmentator_maps_match_the_shared_manifest(shared_data):
    maps = json.loads((shared_data / "manifest.json").read_text())["label_maps"]
    assert load_class_map("totalsegmentator") == {int(k): v for k, v in maps["total"].items()}
    assert load_class_map("totalsegmentator_mr") == {int(k): v for k, v in maps["total_mr"].items()}


def test_unknown_dataset_and_snake_case():
    with pytest.raises(KeyError, match="known"):
        load_class_map("nope")
    assert snake_case(" Right Adrenal Gland") == "right_adrenal_gland"
    assert snake_case("prostate/uterus") == "prostate_uterus"


def test_label_sets_name_existing_class_maps():
    for label_sets in LABEL_SETS.values():
        assert all(name is None or name in CLASS_MAP_NAMES for name in label_sets.values())


def test_totalsegmentator_v1_and_v2_differ_as_the_v2_release_notes_say():
    v1, v2 = load_class_map("totalsegmentator_v1"), load_class_map("totalsegmentator")
    assert "951f07b9721404f5a4306236358d1d7cab1e3610" in class_map_source("totalsegmentator_v1")
    moved = {"face", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
             "heart_ventricle_right", "pulmonary_artery"}  # fmt: skip
    assert release_only_names()["v1"] == moved
    assert (
        len(release_only_names()["v2"]) == 20
        and {"heart", "skull", "vertebrae_S1"} <= release_only_names()["v2"]
    )
    assert len(set(v1.values()) & set(v2.values())) == 97
    assert (v1[8], v1[10], v1[42], v1[57], v1[92]) == (
        "inferior_vena_cava", "pancreas", "esophagus", "colon", "sacrum",
    )  # fmt: skip


def test_abdomenct1k_label_sets():
    organs13 = load_class_map("abdomenct1k_organs13")
    assert (organs13[1], organs13[2], organs13[3], organs13[4], organs13[13]) == (
        "liver", "kidney_right", "spleen", "pancreas", "kidney_left",
    )  # fmt: skip
    assert official_names("abdomenct1k_organs13")[2] == "RK" and "7860267" in class_map_source(
        "abdomenct1k_organs13"
    )
    assert "both kidneys" in class_map_description("abdomenct1k")
