"""SNOMED CT codes for organ names (the table ``formats/codes/snomed.json``), as pydicom ``Code`` objects.

Every organ name of the class lists in ``datasets/labels/*.json`` has an entry: a segmentation property
category (CID 7150), a property type (the organ's concept from pydicom's SCT dictionary) and, for paired
organs, a laterality modifier (SCT Left / Right). Organs with no concept in pydicom's dictionary, and names
that are not in the table at all (a user's own class list), get a clearly marked fallback: a code of the
private scheme ``99ORGANDETR`` whose value is the organ name (without its side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

CODES_FILE = Path(__file__).resolve().parent / "codes" / "snomed.json"
FALLBACK_SCHEME = "99ORGANDETR"


@dataclass(frozen=True)
class OrganCode:
    """How one organ is coded in DICOM.

    ``property_type`` is the organ's concept (or the finding, e.g. "Cyst", with the organ as ``region``);
    ``laterality`` (SCT Left / Right) modifies the type, or the region where one is given. ``fallback`` is
    True when ``property_type`` is a private ``99ORGANDETR`` code, with ``note`` saying why.
    """

    name: str
    category: Code
    property_type: Code
    laterality: Code | None = None
    region: Code | None = None
    fallback: bool = False
    note: str | None = None

    @property
    def anatomic_location(self) -> Code:
        """The anatomic concept of the organ: ``region`` where given, else ``property_type``."""
        return self.region or self.property_type

    @property
    def display_name(self) -> str:
        """The organ in words, from the codes' meanings (a segment / ROI label): ``"Liver"``,
        ``"Right kidney"``, ``"Cyst of left kidney"``; at most 64 characters (a DICOM LO)."""
        side = f"{self.laterality.meaning.lower()} " if self.laterality is not None else ""
        if self.region is not None:
            text = f"{self.property_type.meaning} of {side}{self.region.meaning.lower()}"
        else:
            text = f"{side}{self.property_type.meaning.lower()}" if side else self.property_type.meaning
        return (text[:1].upper() + text[1:])[:64]


def _code(entry: dict) -> Code:
    return Code(value=entry["value"], scheme_designator=entry["scheme"], meaning=entry["meaning"])


@cache
def _table() -> dict:
    with open(CODES_FILE, encoding="utf-8") as fh:
        return json.load(fh)


def laterality_code(side: str) -> Code:
    """SCT ``Left`` (7771000) or ``Right`` (24028007) for ``side`` in ``{"left", "right"}``."""
    return _code(_table()["laterality"][side])


def category_code(category: str) -> Code:
    """A CID 7150 segmentation property category by table name (``"anatomical_structure"``, ...)."""
    return _code(_table()["categories"][category])


def organ_code(name: str) -> OrganCode:
    """The DICOM coding of organ ``name`` (snake_case, as in the class maps).

    Names missing from the table get a private fallback code (value = the name, meaning = the name in
    words) with ``fallback=True``, so a user's own class list can always be written.
    """
    entry = _table()["organs"].get(name)
    if entry is None:
        meaning = name.replace("_", " ").strip().capitalize()[:64] or "Unnamed structure"
        return OrganCode(
            name=name,
            category=category_code("anatomical_structure"),
            property_type=Code(value=name or "unnamed", scheme_designator=FALLBACK_SCHEME, meaning=meaning),
            fallback=True,
            note="not in organdetr's code table",
        )
    side = entry.get("laterality")
    return OrganCode(
        name=name,
        category=category_code(entry["category"]),
        property_type=_code(entry["type"]),
        laterality=laterality_code(side) if side else None,
        region=_code(entry["region"]) if "region" in entry else None,
        fallback=bool(entry.get("fallback", False)),
        note=entry.get("reason") or entry.get("note"),
    )


SLICER_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_REGION_CONTEXT = "Anatomic codes - DICOM master list"


def slicer_terminology(name: str) -> dict:
    """3D Slicer's terminology entry of organ ``name`` as slicerio writes it (``Segment<i>_Terminology``:
    ``context~category~type~type modifier~anatomic context~region~region modifier``, each code
    ``scheme^value^meaning``): the same codes as the DICOM SEG, laterality as the type's modifier (or the
    region's, where the organ has a region)."""
    code = organ_code(name)
    entry = {
        "contextName": SLICER_TYPE_CONTEXT,
        "category": _triple(code.category),
        "type": _triple(code.property_type),
    }
    if code.region is not None:
        entry["anatomicContextName"] = SLICER_REGION_CONTEXT
        entry["anatomicRegion"] = _triple(code.region)
        if code.laterality is not None:
            entry["anatomicRegionModifier"] = _triple(code.laterality)
    elif code.laterality is not None:
        entry["typeModifier"] = _triple(code.laterality)
    return entry


def _triple(code: Code) -> list[str]:
    return [code.scheme_designator, code.value, code.meaning]


def table_organ_names() -> list[str]:
    """Every organ name the code table covers, sorted."""
    return sorted(_table()["organs"])


def fallback_organ_names() -> list[str]:
    """Organ names of the table that have no standard code (private ``99ORGANDETR`` fallback), sorted."""
    return sorted(name for name, entry in _table()["organs"].items() if entry.get("fallback"))


def coding_scheme_identification() -> Dataset:
    """The ``CodingSchemeIdentificationSequence`` item that declares the private fallback scheme
    (required in an instance that uses a scheme not defined in DICOM PS3.16)."""
    scheme = _table()["fallback_scheme"]
    item = Dataset()
    item.CodingSchemeDesignator = scheme["designator"]
    item.CodingSchemeName = scheme["name"]
    item.CodingSchemeResponsibleOrganization = scheme["responsible_organization"]
    return item


__all__ = [
    "FALLBACK_SCHEME",
    "OrganCode",
    "category_code",
    "coding_scheme_identification",
    "fallback_organ_names",
    "laterality_code",
    "organ_code",
    "slicer_terminology",
    "table_organ_names",
]
