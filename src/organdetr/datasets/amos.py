"""AMOS 2022 -> nnU-Net v2 raw (CT part by default).

Source layout (amos22.grand-challenge.org): ``amos22/dataset.json`` (its own ``"labels"``: id -> name),
``imagesTr/amos_0001.nii.gz`` + ``labelsTr``, ``imagesVa`` + ``labelsVa``, ``imagesTs`` (+ ``labelsTs`` in
later releases). Case ids <= 500 are CT, > 500 MR; ``modality="ct"`` (default) converts CT only.
Train and validation cases form the training pool; test cases go to imagesTs.

The class list is read from the dataset's own dataset.json when present: if its ids and names agree
with ``labels/amos.json`` (names compared in snake_case; the published typo ``arota`` counts as
``aorta``) our snake_case names are used, otherwise the dataset's own names (snake_cased) are.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organdetr.datasets.conversion import ConversionSummary, convert_cases
from organdetr.datasets.labels import class_map_source, load_class_map, official_names, snake_case
from organdetr.datasets.source import (
    SourceCase,
    check_paths,
    find_root,
    nifti_stem,
    require_folder,
    select_cases,
)
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief

FORMAT = "amos"
MAX_CT_ID = 500
SPLITS = {"Tr": "Tr", "Va": "Tr", "Ts": "Ts"}  # source folder suffix -> nnU-Net split
ALIASES = {"arota": "aorta"}


def case_number(case_id: str) -> int:
    """``amos_0507`` -> 507; InputError if the id has no number."""
    match = re.search(r"(\d+)$", case_id)
    if match is None:
        raise InputError(None, f"AMOS case id {brief(case_id)} does not end in a number")
    return int(match.group(1))


def discover_cases(src: str | Path, modality: str = "ct") -> list[SourceCase]:
    """AMOS cases of ``images{Tr,Va,Ts}`` at or below ``src``; ``modality`` "ct" (ids <= 500) or "mr"."""
    if modality not in ("ct", "mr"):
        raise InputError(None, f"modality must be 'ct' or 'mr', got {brief(modality)}")
    root = find_root(require_folder(src), "imagesTr")
    cases = []
    for suffix, split in SPLITS.items():
        for image in sorted((root / f"images{suffix}").glob("*.nii.gz")):
            case_id = nifti_stem(image)
            if image.name.startswith(".") or (case_number(case_id) <= MAX_CT_ID) != (modality == "ct"):
                continue
            label = root / f"labels{suffix}" / image.name
            has_label = label.is_file() or split == "Tr"
            cases.append(SourceCase(case_id, image, label if has_label else None, split))
    if not cases:
        raise InputError(root, f"no AMOS {modality.upper()} images (imagesTr/amos_XXXX.nii.gz) found")
    return cases


def class_map(root: Path) -> dict[int, str]:
    """Class map from ``root/dataset.json`` when present (see module doc), else ``labels/amos.json``."""
    ours = load_class_map(FORMAT)
    path = root / "dataset.json"
    if not path.is_file():
        return ours
    try:
        labels = read_json(path, "not a readable AMOS dataset.json")["labels"]
        theirs = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(path, "expected a 'labels' object mapping id -> name (AMOS dataset.json)") from None
    official = {i: snake_case(n) for i, n in official_names(FORMAT).items()}
    agree = set(theirs) == set(ours) and all(
        ALIASES.get(snake_case(n), snake_case(n)) in (official[i], ours[i]) for i, n in theirs.items()
    )
    if agree:
        return ours
    warnings.warn(
        f"{path}: labels differ from the published AMOS list; using the dataset's own", stacklevel=2
    )
    return {i: snake_case(n) for i, n in sorted(theirs.items())}


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    modality: str = "ct",
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert AMOS 2022 at ``src`` (CT cases by default) into the nnU-Net v2 raw dataset ``dst``.

    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    root, dst = check_paths(find_root(require_folder(src), "imagesTr"), dst)
    cases = select_cases(discover_cases(root, modality), subset, limit)
    return convert_cases(
        cases,
        dst,
        class_map(root),
        dataset=FORMAT,
        name=f"AMOS22_{modality.upper()}",
        channel_name="CT" if modality == "ct" else "MR",
        **options,
        extra={"source": str(root.resolve()), "class_source": class_map_source(FORMAT), "modality": modality},
    )
