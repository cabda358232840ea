"""Official class maps kept as data (organdetr.datasets.labels)."""

from __future__ import annotations

import json
import re

import pytest

from organdetr.datasets.labels import (
    CLASS_MAP_NAMES,
    class_map_source,
    load_class_map,
    official_names,
    snake_case,
)

EXPECTED_SIZES = {
    "abdomenct1k": 4,
    "word": 16,
    "amos": 15,
    "verse": 28,
    "totalsegmentator": 117,
    "totalsegmentator_mr": 50,
}


@pytest.mark.parametrize("dataset", CLASS_MAP_NAMES)
def test_class_map_is_dense_unique_and_cited(dataset):
    classes = load_class_map(dataset)
    assert len(classes) == EXPECTED_SIZES[dataset]
    assert list(classes) == list(range(1, len(classes) + 1))
    assert len(set(classes.values())) == len(classes)
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9_]*", name) for name in classes.values())
    assert len(class_map_source(dataset)) > 20


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
