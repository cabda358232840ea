"""BraTS (adult glioma MRI, T1 / T1ce / T2 / FLAIR) -> nnU-Net v2 raw with four channels, regions and grades.

Source layouts (each case a folder of NIfTI files named after it, ``.nii.gz`` or ``.nii``):

* **2018 / 2019**: ``HGG/<case>/`` and ``LGG/<case>/``, files ``<case>_{t1,t1ce,t2,flair,seg}``; the grade is
  the folder's name (``name_mapping.csv``, when present, is also read);
* **2020**: ``<case>/`` with the same file names and ``name_mapping.csv`` (``Grade`` column, the case id in
  one of the ``BraTS_20xx_subject_ID`` columns) giving the grade;
* **2021**: ``BraTS2021_<id>/`` with the same file names, no grade;
* **2023 (BraTS-GLI)**: ``BraTS-GLI-<id>-<tp>/`` with ``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``; no
  grade and other label ids (``labels/brats2023.json``).

Channels are written in the order T1, T1ce, T2, FLAIR (``_0000`` .. ``_0003``), each checked to share the
T1's grid. Labels keep the official meaning, made dense (2018-2021: 1, 2, 4 -> 1, 2, 3; the official ids are
kept in dataset.json under ``official_label_ids``), and the evaluation regions WT / TC / ET come as data from
``labels/brats*.json`` into dataset.json's ``regions``. Grades (LGG / HGG) become the case-level classes
(``case_classes`` + ``case_labels.json``); a release without grades has no case classes. Cases without a
segmentation (validation releases) go to imagesTs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organdetr.datasets.conversion import ConversionSummary, convert_cases
from organdetr.datasets.labels import class_map_source, load_class_map, load_regions
from organdetr.datasets.source import SourceCase, check_paths, require_folder, select_cases
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

FORMAT = "brats"
CHANNEL_NAMES = ("T1", "T1ce", "T2", "FLAIR")
GRADES = ("LGG", "HGG")  # case-level class order (index 0, 1)
# release naming -> (separator, channel suffixes in CHANNEL_NAMES order, segmentation suffix)
NAMING: dict[str, tuple[str, tuple[str, ...], str]] = {
    "2018": ("_", ("t1", "t1ce", "t2", "flair"), "seg"),
    "2023": ("-", ("t1n", "t1c", "t2w", "t2f"), "seg"),
}
LABEL_SET_MAPS = {"2018": "brats", "2023": "brats2023"}
ENDINGS = (".nii.gz", ".nii")


def _file(folder: Path, case_id: str, separator: str, suffix: str) -> Path | None:
    for ending in ENDINGS:
        path = folder / f"{case_id}{separator}{suffix}{ending}"
        if path.is_file():
            return path
    return None


def _naming_of(folder: Path) -> str | None:
    """The release naming whose T1ce / T1c file this case folder holds, else ``None``."""
    for release, (separator, suffixes, _) in NAMING.items():
        if _file(folder, folder.name, separator, suffixes[1]) is not None:
            return release
    return None


def _segmentation(folder: Path, case_id: str, separator: str, suffix: str) -> Path | None:
    """``<case><sep>seg``; else the one other NIfTI in the folder whose name says ``seg`` (BraTS 2020's
    case 355 ships ``W39_1998.09.19_Segm.nii``)."""
    path = _file(folder, case_id, separator, suffix)
    if path is not None:
        return path
    found = [p for p in folder.iterdir() if "seg" in p.name.lower() and p.name.endswith(ENDINGS)]
    return found[0] if len(found) == 1 else None


def read_grades(root: Path) -> dict[str, str]:
    """Case id -> grade from the ``name_mapping.csv`` files at or below ``root`` (empty when none)."""
    grades: dict[str, str] = {}
    for table in sorted(root.rglob("name_mapping*.csv")):
        with open(table, newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                grade = (row.get("Grade") or "").strip()
                if grade not in GRADES:
                    continue
                for key, value in row.items():
                    if key and "subject" in key.lower() and value and value.strip() not in ("", "NA"):
                        grades.setdefault(value.strip(), grade)
    return grades


def discover_cases(src: str | Path) -> tuple[list[SourceCase], str]:
    """Case folders at or below ``src`` -> ``(cases, release naming "2018" | "2023")``.

    InputError when there are none, when both namings occur, or a case lacks a channel.
    """
    root = require_folder(src)
    folders = sorted({p.parent for p in root.rglob("*.nii*") if _naming_of(p.parent) is not None})
    if not folders:
        raise InputError(
            root, "no BraTS case folders (<case>/<case>_t1ce.nii.gz or <case>/<case>-t1c.nii.gz) found"
        )
    namings = {_naming_of(f) for f in folders}
    if len(namings) > 1:
        raise InputError(root, "holds both BraTS 2018-2021 and 2023 file names; convert each release apart")
    naming = namings.pop()
    separator, suffixes, seg_suffix = NAMING[naming]
    grades = read_grades(root)
    cases = []
    for folder in folders:
        case_id = folder.name
        channels = []
        for name, suffix in zip(CHANNEL_NAMES, suffixes, strict=True):
            path = _file(folder, case_id, separator, suffix)
            if path is None:
                raise InputError(
                    folder, f"case {brief(case_id)} has no {name} file ({case_id}{separator}{suffix}.nii.gz)"
                )
            channels.append(path)
        label = _segmentation(folder, case_id, separator, seg_suffix)
        grade = folder.parent.name if folder.parent.name in GRADES else grades.get(case_id)
        split = "Tr" if label is not None else "Ts"
        cases.append(SourceCase(case_id, channels[0], label, split, tuple(channels), grade))
    return cases, naming


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    label_set: str = "auto",
    **options: Any,
) -> ConversionSummary:
    """Convert BraTS at ``src`` into the four-channel nnU-Net v2 raw dataset ``dst``.

    ``label_set``: ``auto`` (from the file names), ``2018`` (2018-2021 ids 1, 2, 4) or ``2023`` (1, 2, 3).
    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of :func:`convert_cases`.
    """
    root, dst = check_paths(require_folder(src), dst)
    cases, naming = discover_cases(root)
    if label_set not in ("auto", *LABEL_SET_MAPS):
        raise InputError(
            None, f"unknown BraTS label set {brief(label_set)}; known: auto, {', '.join(LABEL_SET_MAPS)}"
        )
    release = naming if label_set == "auto" else label_set
    class_map = LABEL_SET_MAPS[release]
    cases = select_cases(cases, subset, limit)
    graded = any(c.case_label is not None for c in cases)
    notes = [f"label set {release} ({class_map}.json), channels {', '.join(CHANNEL_NAMES)}"]
    notes.append(
        f"grades: {sum(c.case_label is not None for c in cases)} of {len(cases)} cases"
        if graded
        else "no grades in this release: no case-level classes"
    )
    return convert_cases(
        cases,
        dst,
        load_class_map(class_map),
        dataset=FORMAT,
        name="BraTS" + ("2023" if release == "2023" else ""),
        channel_names=CHANNEL_NAMES,
        regions=load_regions(class_map),
        case_classes=GRADES if graded else None,
        notes=notes,
        extra={"class_source": class_map_source(class_map), "label_set": release},
        **options,
    )


__all__ = ["CHANNEL_NAMES", "FORMAT", "GRADES", "convert", "discover_cases", "read_grades"]
