"""VerSe 2019 / 2020 -> nnU-Net v2 raw (vertebra labels with the official VerSe ids).

Source layout (github.com/anjany/verse): ``<split>/rawdata/<subject>/<key>_ct.nii.gz`` and
``<split>/derivatives/<subject>/<key>_seg-vert_msk.nii.gz``, where ``<key>`` is e.g. ``sub-verse004`` or
``sub-gl003_dir-ax``; the case id is ``<key>``. Ids: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum,
27 coccyx, 28 T13. All labelled scans form the training pool; the source split folder of each case
(e.g. ``dataset-01training``) is kept in dataset.json under ``"official_split"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organdetr.datasets.conversion import ConversionSummary, convert_cases
from organdetr.datasets.labels import class_map_source, load_class_map
from organdetr.datasets.source import SourceCase, check_paths, require_folder, select_cases
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

FORMAT = "verse"
IMAGE_SUFFIX = "_ct.nii.gz"
MASK_SUFFIX = "_seg-vert_msk.nii.gz"


def _index(src: Path, suffix: str, part: str) -> dict[str, Path]:
    """``<key><suffix>`` files under a ``part`` ("rawdata"/"derivatives") folder, by key."""
    found: dict[str, Path] = {}
    for path in sorted(src.rglob(f"*{suffix}")):
        if part not in path.parts or path.name.startswith("."):
            continue
        key = path.name[: -len(suffix)]
        if key in found:
            raise InputError(path, f"case {brief(key)} also found at {found[key]}")
        found[key] = path
    return found


def discover_cases(src: str | Path) -> list[SourceCase]:
    """Every ``rawdata/**/<key>_ct.nii.gz`` under ``src`` with its ``derivatives/**/<key>_seg-vert_msk``."""
    src = require_folder(src)
    images = _index(src, IMAGE_SUFFIX, "rawdata")
    masks = _index(src, MASK_SUFFIX, "derivatives")
    if not images:
        raise InputError(src, "no VerSe scans (rawdata/<subject>/<subject>_ct.nii.gz) found")
    return [
        SourceCase(key, image, masks.get(key), "Tr" if key in masks else "Ts")
        for key, image in sorted(images.items())
    ]


def official_split(src: Path, cases: Sequence[SourceCase]) -> dict[str, str]:
    """Case id -> the top folder under ``src`` its scan came from (e.g. ``dataset-01training``)."""
    split = {}
    for case in cases:
        parts = case.image.relative_to(src).parts
        split[case.case_id] = parts[0] if parts[0] != "rawdata" else ""
    return split


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert VerSe at ``src`` into the nnU-Net v2 raw dataset ``dst``.

    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    src, dst = check_paths(src, dst)
    cases = select_cases(discover_cases(src), subset, limit)
    return convert_cases(
        cases,
        dst,
        load_class_map(FORMAT),
        dataset=FORMAT,
        name="VerSe",
        **options,
        extra={
            "source": str(src.resolve()),
            "class_source": class_map_source(FORMAT),
            "official_split": official_split(src, cases),
        },
    )
