"""AbdomenCT-1K -> nnU-Net v2 raw.

Source layout (github.com/JunMa11/AbdomenCT-1K): images ``Case_00001_0000.nii.gz`` in one or more image
folders (``AbdomenCT-1K-ImagePart1`` ...), masks ``Case_00001.nii.gz`` in a mask folder, anywhere under
SRC. Classes: 1 liver, 2 kidney (both kidneys), 3 spleen, 4 pancreas. Images without a mask go to imagesTs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organdetr.datasets.conversion import (
    ConversionSummary,
    SourceCase,
    convert_cases,
    nifti_stem,
    require_folder,
    select_cases,
)
from organdetr.datasets.labels import class_map_source, load_class_map
from organdetr.errors import InputError

FORMAT = "abdomenct1k"


def discover_cases(src: str | Path) -> list[SourceCase]:
    """All ``*_0000.nii.gz`` images under ``src`` paired with the mask of the same case id."""
    src = require_folder(src)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for path in sorted(src.rglob("*.nii.gz")):
        if path.name.startswith("."):
            continue
        stem = nifti_stem(path)
        table, case_id = (images, stem[:-5]) if stem.endswith("_0000") else (masks, stem)
        if case_id in table:
            raise InputError(path, f"case {case_id!r} also found at {table[case_id]}")
        table[case_id] = path
    if not images:
        raise InputError(src, "no AbdomenCT-1K images (Case_XXXXX_0000.nii.gz) found")
    return [
        SourceCase(case_id, image, masks.get(case_id), "Tr" if case_id in masks else "Ts")
        for case_id, image in sorted(images.items())
    ]


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert AbdomenCT-1K at ``src`` into the nnU-Net v2 raw dataset ``dst``.

    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    cases = select_cases(discover_cases(src), subset, limit)
    return convert_cases(
        cases,
        dst,
        load_class_map(FORMAT),
        dataset=FORMAT,
        name="AbdomenCT1K",
        **options,
        extra={"source": str(Path(src).resolve()), "class_source": class_map_source(FORMAT)},
    )
