"""AbdomenCT-1K -> nnU-Net v2 raw, with either label set its authors published.

Source layout (github.com/JunMa11/AbdomenCT-1K): images ``Case_00001_0000.nii.gz`` in one or more image
folders (``AbdomenCT-1K-ImagePart1`` ...), masks ``Case_00001.nii.gz`` in a mask folder, anywhere under
SRC. Images without a mask go to imagesTs. The 50-case 13-organ release (the FLARE22 labelled training
set, doi:10.5281/zenodo.7860267) is found the same way as long as it keeps this naming (its exact
folder layout was not checked here).

Label sets (:data:`LABEL_SETS`, each a class map in ``labels/``, recorded in dataset.json):

* ``organs4`` (default): the official labels of all >1000 scans: 1 liver, 2 kidney (both kidneys in
  one label), 3 spleen, 4 pancreas;
* ``organs13``: the 50-case release with 13 organs (kidneys split: 2 right, 13 left).

The README's earlier "50 cases with 12 organs" set never published its label ids and is not
convertible (recorded in ``labels/abdomenct1k.json``).

Organ-DETR (TMI 2025) reports AbdomenCT-1K with an organ count other than 4 (as issue 15 reads the
paper; its tables were not at hand here). The authors' code (github.com/pascual-tejero/
CL_3D-Organ_Detection, ``utils/match_labels_datasets_WORD_ABDOMENCT-1K.py``) uses 5 classes: 1 liver,
2 right kidney, 3 spleen, 4 pancreas, 5 left kidney, without saying how the kidney label was split.
``organs13`` with ``keep_classes=[liver, kidney_right, spleen, pancreas, kidney_left]`` gives exactly
those ids, for 50 cases only. Low confidence that this is what the paper's tables used.

A source tree that is already an nnU-Net raw dataset (``dataset.json`` + ``imagesTr/``) is refused:
its label maps would be read as images (``labelsTr/case_0000.nii.gz`` ends in ``_0000``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organdetr.datasets import LABEL_SETS as ALL_LABEL_SETS
from organdetr.datasets.conversion import ConversionSummary, convert_cases
from organdetr.datasets.labels import class_map_description, class_map_source, load_class_map
from organdetr.datasets.source import SourceCase, check_paths, nifti_stem, require_folder, select_cases
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

FORMAT = "abdomenct1k"
# label set name (convert --classes) -> class map name (labels/<name>.json)
LABEL_SETS: dict[str, str] = {name: str(map_name) for name, map_name in ALL_LABEL_SETS[FORMAT].items()}
DEFAULT_LABEL_SET = next(iter(LABEL_SETS))


def discover_cases(src: str | Path) -> list[SourceCase]:
    """All ``*_0000.nii.gz`` images under ``src`` paired with the mask of the same case id."""
    src = require_folder(src)
    _refuse_nnunet_tree(src)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for path in sorted(src.rglob("*.nii.gz")):
        if path.name.startswith("."):
            continue
        stem = nifti_stem(path)
        table, case_id = (images, stem[:-5]) if stem.endswith("_0000") else (masks, stem)
        if case_id in table:
            raise InputError(path, f"case {brief(case_id)} also found at {table[case_id]}")
        table[case_id] = path
    if not images:
        raise InputError(src, "no AbdomenCT-1K images (Case_XXXXX_0000.nii.gz) found")
    return [
        SourceCase(case_id, image, masks.get(case_id), "Tr" if case_id in masks else "Ts")
        for case_id, image in sorted(images.items())
    ]


def _refuse_nnunet_tree(src: Path) -> None:
    for folder in (src, *(p for p in src.iterdir() if p.is_dir())):
        if (folder / "dataset.json").is_file() and (folder / "imagesTr").is_dir():
            raise InputError(
                folder / "dataset.json",
                "this is already an nnU-Net raw dataset, not the AbdomenCT-1K release; "
                "use it directly (organdetr preprocess) instead of converting it",
            )


def label_set_class_map(label_set: str) -> str:
    """The class map name of AbdomenCT-1K label set ``label_set``; InputError for unknown sets."""
    if label_set not in LABEL_SETS:
        raise InputError(
            None, f"unknown AbdomenCT-1K label set {brief(label_set)}; known: {', '.join(LABEL_SETS)}"
        )
    return LABEL_SETS[label_set]


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    label_set: str = DEFAULT_LABEL_SET,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert AbdomenCT-1K at ``src`` into the nnU-Net v2 raw dataset ``dst``.

    ``label_set``: ``"organs4"`` (official, default) or ``"organs13"`` (see the module doc).
    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    map_name = label_set_class_map(label_set)
    src, dst = check_paths(src, dst)
    cases = select_cases(discover_cases(src), subset, limit)
    others = [name for name in LABEL_SETS if name != label_set]
    return convert_cases(
        cases,
        dst,
        load_class_map(map_name),
        dataset=FORMAT,
        name="AbdomenCT1K",
        id_hint=f"label set {label_set}; the other: --classes {', '.join(others)}",
        notes=[f"label set {label_set}: {class_map_description(map_name)}"],
        **options,
        extra={
            "source": str(src.resolve()),
            "label_set": label_set,
            "label_set_description": class_map_description(map_name),
            "class_source": class_map_source(map_name),
        },
    )
