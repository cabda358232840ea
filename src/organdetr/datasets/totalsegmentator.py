"""TotalSegmentator v2 (CT, and the MRI release) -> nnU-Net v2 raw, masks merged into one label map.

Source layout (zenodo TotalSegmentator dataset): ``<subject>/ct.nii.gz`` (``mri.nii.gz`` for the MRI
release) and ``<subject>/segmentations/<structure>.nii.gz``, one binary mask per structure;
optional ``meta.csv`` (``image_id;...;split``) whose ``test`` cases go to imagesTs/labelsTs.

Merging: each structure gets its id from TotalSegmentator's official class map (``total``: 117
classes, ``total_mr``: 50; ``labels/totalsegmentator*.json``). Masks are painted in ascending id
order, so where masks overlap **the structure with the higher id wins** (the same rule as
TotalSegmentator's own ``combine_masks_to_multilabel_file``). A missing mask file means an empty
structure; a mask whose name is not in the class map, or whose grid differs from the image's,
fails the case with a message naming that file.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from organdetr.datasets.conversion import (
    ConversionSummary,
    SourceCase,
    check_same_geometry,
    convert_cases,
    nifti_stem,
    require_folder,
    select_cases,
)
from organdetr.datasets.labels import class_map_source, load_class_map
from organdetr.errors import InputError
from organdetr.geometry import Geometry

OVERLAP_RULE = "masks painted in ascending official id order: the higher id wins where masks overlap"
# format -> (class map name, image file name, channel name)
VARIANTS = {
    "totalsegmentator": ("totalsegmentator", "ct.nii.gz", "CT"),
    "totalsegmentator_mr": ("totalsegmentator_mr", "mri.nii.gz", "MR"),
}


def read_splits(src: Path) -> dict[str, str]:
    """``meta.csv`` (``;`` or ``,`` separated, columns ``image_id`` and ``split``) -> subject -> split."""
    path = src / "meta.csv"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig")
    delimiter = ";" if text.splitlines()[0].count(";") > text.splitlines()[0].count(",") else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if rows and not {"image_id", "split"} <= set(rows[0]):
        raise InputError(path, "expected columns 'image_id' and 'split'")
    return {row["image_id"]: row["split"].strip().lower() for row in rows}


def discover_cases(src: str | Path, image_name: str = "ct.nii.gz") -> list[SourceCase]:
    """One case per ``<subject>/`` folder of ``src`` holding ``image_name``; label = its segmentations/."""
    src = require_folder(src)
    splits = read_splits(src)
    cases = [
        SourceCase(
            subject.name,
            subject / image_name,
            subject / "segmentations",
            "Ts" if splits.get(subject.name) == "test" else "Tr",
        )
        for subject in sorted(p for p in src.iterdir() if p.is_dir())
        if (subject / image_name).is_file()
    ]
    if not cases:
        raise InputError(src, f"no TotalSegmentator subjects (<subject>/{image_name}) found")
    return cases


def merge_structure_masks(case: SourceCase, geometry: Geometry, *, classes: dict[int, str]) -> np.ndarray:
    """Merge ``case.label/<structure>.nii.gz`` into one label map ``[I, J, K]`` (official ids).

    Masks are painted in ascending id order (higher id wins on overlap); each mask must share
    ``geometry`` (the image's grid).
    """
    folder = case.label
    if folder is None or not folder.is_dir():
        raise InputError(folder or case.image, "segmentations folder not found")
    ids = {name: label_id for label_id, name in classes.items()}
    masks = []
    for path in folder.iterdir():
        if not path.name.endswith(".nii.gz") or path.name.startswith("."):
            continue
        name = nifti_stem(path)
        if name not in ids:
            raise InputError(path, f"structure {name!r} is not in the TotalSegmentator class map")
        masks.append((ids[name], path))
    dtype = np.uint8 if max(classes) <= np.iinfo(np.uint8).max else np.uint16
    # Painted in SimpleITK's (k, j, i) order and transposed once at the end: 117 per-mask transposed
    # copies would cost ~10x the merge itself (see BENCHMARKS.md, "Dataset conversion").
    merged_kji = np.zeros(tuple(reversed(geometry.size)), dtype=dtype)
    for label_id, path in sorted(masks):
        mask = _read_mask(path)
        check_same_geometry(path, _geometry_of(mask), geometry, case.image)
        merged_kji[sitk.GetArrayViewFromImage(mask) > 0] = label_id
    return np.ascontiguousarray(merged_kji.transpose(2, 1, 0))


def _read_mask(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot read mask ({' '.join(str(err).split())[:200]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"mask is not a 3D scalar image (dimension {image.GetDimension()})")
    return image


def _geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(
        size=tuple(int(s) for s in image.GetSize()),
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    variant: str = "totalsegmentator",
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert TotalSegmentator at ``src`` (``variant`` "totalsegmentator" or "totalsegmentator_mr").

    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    if variant not in VARIANTS:
        raise InputError(None, f"unknown TotalSegmentator variant {variant!r}; known: {', '.join(VARIANTS)}")
    map_name, image_name, channel = VARIANTS[variant]
    src = require_folder(src)
    classes = load_class_map(map_name)
    cases = select_cases(discover_cases(src, image_name), subset, limit)
    return convert_cases(
        cases,
        dst,
        classes,
        dataset=variant,
        name="TotalSegmentator" + ("MRI" if channel == "MR" else ""),
        read_label=partial(merge_structure_masks, classes=classes),
        channel_name=channel,
        **options,
        extra={
            "source": str(src.resolve()),
            "class_source": class_map_source(map_name),
            "overlap_rule": OVERLAP_RULE,
        },
    )
