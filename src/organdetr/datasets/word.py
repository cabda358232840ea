"""WORD (Whole abdominal ORgan Dataset) -> nnU-Net v2 raw.

Source layout (github.com/HiLab-git/WORD): ``WORD-V0.1.0/{imagesTr,labelsTr,imagesVal,labelsVal,imagesTs,
labelsTs}/word_0001.nii.gz``. Train and validation cases form the training pool (imagesTr), test cases go
to imagesTs/labelsTs; the official split is kept in dataset.json under ``"official_split"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organdetr.datasets.conversion import ConversionSummary, convert_cases
from organdetr.datasets.labels import class_map_source, load_class_map
from organdetr.datasets.source import (
    SourceCase,
    check_paths,
    find_root,
    nifti_stem,
    require_folder,
    select_cases,
)
from organdetr.runtime.errors import InputError

FORMAT = "word"

# source folder suffix -> (official split name, nnU-Net split)
SPLITS = {"Tr": ("train", "Tr"), "Val": ("val", "Tr"), "Ts": ("test", "Ts")}


def discover_cases(src: str | Path) -> list[SourceCase]:
    """Cases of ``images{Tr,Val,Ts}`` in the WORD folder at or below ``src``."""
    root = find_root(require_folder(src), "imagesTr")
    cases = []
    for suffix, (_, split) in SPLITS.items():
        folder = root / f"images{suffix}"
        if not folder.is_dir():
            continue
        for image in sorted(folder.glob("*.nii.gz")):
            if image.name.startswith("."):
                continue
            label = root / f"labels{suffix}" / image.name
            has_label = label.is_file() or split == "Tr"  # a missing training label is reported per case
            cases.append(SourceCase(nifti_stem(image), image, label if has_label else None, split))
    if not cases:
        raise InputError(root, "no WORD images (imagesTr/word_XXXX.nii.gz) found")
    return cases


def official_split(root: Path) -> dict[str, list[str]]:
    """The official train/val/test case ids (from the folder each image sits in)."""
    return {
        name: sorted(nifti_stem(p) for p in (root / f"images{suffix}").glob("*.nii.gz"))
        for suffix, (name, _) in SPLITS.items()
    }


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert WORD at ``src`` into the nnU-Net v2 raw dataset ``dst``.

    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    root, dst = check_paths(find_root(require_folder(src), "imagesTr"), dst)
    cases = select_cases(discover_cases(root), subset, limit)
    return convert_cases(
        cases,
        dst,
        load_class_map(FORMAT),
        dataset=FORMAT,
        name="WORD",
        **options,
        extra={
            "source": str(root.resolve()),
            "class_source": class_map_source(FORMAT),
            "official_split": official_split(root),
        },
    )
