"""formats/codes/snomed.json: every code is pydicom's, every class-list organ is covered, fallbacks listed."""

from __future__ import annotations

import json

import pytest
from pydicom.sr._concepts_dict import concepts

from organdetr.datasets.labels import CLASS_MAP_NAMES, load_class_map
from organdetr.formats.organ_codes import (
    CODES_FILE,
    FALLBACK_SCHEME,
    coding_scheme_identification,
    fallback_organ_names,
    organ_code,
    slicer_terminology,
    table_organ_names,
)

TABLE = json.loads(CODES_FILE.read_text(encoding="utf-8"))

# Organs of the class lists with no concept in pydicom's SCT dictionary (private 99ORGANDETR codes).
# Adding a code to the table for one of them must remove it here.
EXPECTED_FALLBACKS = [
    "autochthon_left",
    "autochthon_right",
    "enhancing_tumor",
    "gluteus_maximus_left",
    "gluteus_maximus_right",
    "gluteus_medius_left",
    "gluteus_medius_right",
    "gluteus_minimus_left",
    "gluteus_minimus_right",
    "hip_left",
    "hip_right",
    "iliopsoas_left",
    "iliopsoas_right",
    "intervertebral_discs",
    "portal_vein_and_splenic_vein",
    "prostate_uterus",
    "vertebrae_L6",
    "vertebrae_S1",
    "vertebrae_T13",
]


def _standard_codes():
    yield from TABLE["laterality"].values()
    yield from TABLE["categories"].values()
    for entry in TABLE["organs"].values():
        if not entry.get("fallback"):
            yield entry["type"]
        if "region" in entry:
            yield entry["region"]


@pytest.mark.parametrize("code", list(_standard_codes()), ids=lambda c: c["pydicom_keyword"])
def test_every_standard_code_is_in_pydicoms_dictionary(code):
    """Value, meaning and context groups match pydicom's SCT entry of the keyword (nothing from memory)."""
    assert code["scheme"] == "SCT"
    entry = concepts["SCT"][code["pydicom_keyword"]]
    assert code["value"] in entry
    meaning, cids = entry[code["value"]]
    assert code["meaning"] == meaning
    assert set(code["cids"]) <= set(cids)


def test_table_covers_every_class_list_organ():
    names = {name for dataset in CLASS_MAP_NAMES for name in load_class_map(dataset).values()}
    assert set(table_organ_names()) == names, (
        f"formats/codes/snomed.json lacks {sorted(names - set(table_organ_names()))}: add them with "
        "codes from pydicom's dictionary (codes.SCT), or as a 99ORGANDETR fallback with its reason"
    )


def test_fallbacks_are_the_listed_organs_and_say_why():
    assert fallback_organ_names() == EXPECTED_FALLBACKS
    for name in EXPECTED_FALLBACKS:
        code = organ_code(name)
        assert code.fallback and code.note
        assert code.property_type.scheme_designator == FALLBACK_SCHEME
        assert code.property_type.value == name.removesuffix("_left").removesuffix("_right")
    item = coding_scheme_identification()
    assert item.CodingSchemeDesignator == FALLBACK_SCHEME


def test_paired_organs_carry_laterality_and_cysts_a_region():
    left, right = organ_code("kidney_left"), organ_code("kidney_right")
    assert left.property_type == right.property_type == organ_code("kidney").property_type
    assert (left.laterality.value, right.laterality.value) == ("7771000", "24028007")
    assert organ_code("liver").laterality is None
    cyst = organ_code("kidney_cyst_left")
    assert cyst.property_type.meaning == "Cyst"
    assert cyst.region.meaning == "Kidney" and cyst.anatomic_location == cyst.region
    assert cyst.category.meaning == "Morphologically Abnormal Structure"
    assert organ_code("gluteus_medius_right").laterality.meaning == "Right"


def test_unknown_names_get_a_private_code():
    code = organ_code("my_custom_lesion")
    assert code.fallback and code.property_type.scheme_designator == FALLBACK_SCHEME
    assert code.property_type.value == "my_custom_lesion"
    assert code.property_type.meaning == "My custom lesion"


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("liver", "Liver"),
        ("kidney_right", "Right kidney"),
        ("adrenal_gland_left", "Left adrenal gland"),
        ("urinary_bladder", "Bladder"),
        ("kidney_cyst_left", "Cyst of left kidney"),
        ("gluteus_maximus_right", "Right gluteus maximus muscle"),
        ("my_own_organ", "My own organ"),
    ],
)
def test_display_name_is_the_codes_meaning_in_words(name, label):
    """Segment / ROI labels: the SNOMED CT meanings with the side, never the snake_case class name."""
    assert organ_code(name).display_name == label


def test_slicer_terminology_carries_the_seg_codes():
    """3D Slicer terminology entry: the SEG's category / type codes, laterality as the type's modifier (or the
    region's, where the organ has a region), in slicerio's ``[scheme, value, meaning]`` triplets."""
    kidney = slicer_terminology("kidney_right")
    assert kidney["contextName"] == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert kidney["category"] == ["SCT", "91723000", "Anatomical Structure"]
    assert kidney["type"] == ["SCT", "64033007", "Kidney"]
    assert kidney["typeModifier"] == ["SCT", "24028007", "Right"]
    cyst = slicer_terminology("kidney_cyst_left")
    assert "typeModifier" not in cyst and cyst["anatomicRegion"][1] == "64033007"
    assert cyst["anatomicRegionModifier"] == ["SCT", "7771000", "Left"]
    assert "typeModifier" not in slicer_terminology("liver")
