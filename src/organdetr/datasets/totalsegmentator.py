"""TotalSegmentator (CT v1 and v2, and the MRI release) -> nnU-Net v2 raw, masks merged into one label map.

Source layout (zenodo TotalSegmentator dataset, both releases): ``<subject>/ct.nii.gz`` (``mri.nii.gz``
for the MRI release) and ``<subject>/segmentations/<structure>.nii.gz``, one binary mask per
structure; optional ``meta.csv`` (``image_id;...;split``, split ``train``/``val``/``test``) whose
``test`` cases go to imagesTs/labelsTs.

Releases of the CT dataset (:data:`RELEASES`): **v1** (1204 subjects, 104 classes, e.g.
``heart_myocardium``, ``face``; ``labels/totalsegmentator_v1.json``) and **v2** (117 classes, e.g.
``heart``, ``skull``; ``labels/totalsegmentator.json``). The release is detected from the mask names of
the subjects (:func:`detect_release`; ``label_set="v1"|"v2"`` forces one); a tree with subjects of both
releases is refused, a subject whose masks mix releases fails with a message naming the odd files.
A tree without any release-specific mask name is v2 (the behaviour before v1 was supported).
Organ-DETR (TMI 2025) reports TotalSegmentator with 104 classes: the v1 release.

Merging: each structure gets its id from the release's official class map (``total``: 104 or 117
classes, ``total_mr``: 50). Masks are painted in ascending id order, so where masks overlap **the
structure with the higher id wins** (the same rule as TotalSegmentator's own
``combine_masks_to_multilabel_file``). A missing mask file means an empty structure; a mask whose name
is not in the class map, or whose grid differs from the image's, fails the case with a message naming
that file.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from organdetr.core.geometry import Geometry
from organdetr.datasets import LABEL_SETS as ALL_LABEL_SETS
from organdetr.datasets.conversion import ConversionSummary, convert_cases
from organdetr.datasets.labels import class_map_description, class_map_source, load_class_map
from organdetr.datasets.source import SourceCase, check_paths, nifti_stem, require_folder, select_cases
from organdetr.datasets.source_checks import check_same_geometry
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief, collapse

OVERLAP_RULE = "masks painted in ascending official id order: the higher id wins where masks overlap"
# format -> (class map name, image file name, channel name)
VARIANTS = {
    "totalsegmentator": ("totalsegmentator", "ct.nii.gz", "CT"),
    "totalsegmentator_mr": ("totalsegmentator_mr", "mri.nii.gz", "MR"),
}
# CT release -> class map name; label_set "auto" detects the release from the mask names
RELEASES: dict[str, str] = {r: m for r, m in ALL_LABEL_SETS["totalsegmentator"].items() if m is not None}
DEFAULT_RELEASE = "v2"
LABEL_SETS = tuple(ALL_LABEL_SETS["totalsegmentator"])
SPLITS = ("train", "val", "test")
MAX_NAMES_SHOWN = 4


def read_splits(src: Path) -> dict[str, str]:
    """``meta.csv`` (``;`` or ``,`` separated, columns ``image_id`` and ``split``) -> subject -> split.

    InputError naming meta.csv and the row for a row without an image id or split, a split other
    than train/val/test, or a subject listed twice.
    """
    path = src / "meta.csv"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    if not lines:
        raise InputError(path, "is empty; expected a header with columns 'image_id' and 'split'")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    if not {"image_id", "split"} <= set(reader.fieldnames or ()):
        raise InputError(path, "expected columns 'image_id' and 'split'")
    splits: dict[str, str] = {}
    for row in reader:
        where = f"row {reader.line_num} ({brief(lines[reader.line_num - 1].strip())})"
        subject = (row.get("image_id") or "").strip()
        split = (row.get("split") or "").strip().lower()
        if not subject or not split:
            raise InputError(path, f"{where} has no {brief('image_id' if not subject else 'split')} value")
        if split not in SPLITS:
            raise InputError(path, f"{where}: split {brief(split)} is not one of {', '.join(SPLITS)}")
        if subject in splits:
            raise InputError(path, f"{where}: subject {brief(subject)} is listed twice")
        splits[subject] = split
    return splits


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


def mask_files(folder: Path) -> dict[str, Path]:
    """Structure name -> mask file of the ``*.nii.gz`` files in ``folder`` (none if it is missing)."""
    if not folder.is_dir():
        return {}
    return {
        nifti_stem(path): path
        for path in sorted(folder.iterdir())
        if path.name.endswith(".nii.gz") and not path.name.startswith(".")
    }


@cache
def release_only_names() -> dict[str, frozenset[str]]:
    """Release -> the structure names found in that release's class map and in no other."""
    names = {release: set(load_class_map(name).values()) for release, name in RELEASES.items()}
    return {
        release: frozenset(own - set().union(*(n for r, n in names.items() if r != release)))
        for release, own in names.items()
    }


def _shown(names: Sequence[str]) -> str:
    listed = ", ".join(f"{n}.nii.gz" for n in names[:MAX_NAMES_SHOWN])
    return listed + (f", ... ({len(names)} files)" if len(names) > MAX_NAMES_SHOWN else "")


def detect_release(cases: Sequence[SourceCase]) -> tuple[str, str]:
    """The CT release (``"v1"``/``"v2"``) of ``cases`` from their mask names, and how it was decided.

    A subject is of a release when it has mask names only that release has; subjects with both
    kinds are left to fail on their own (see :func:`merge_structure_masks`). InputError when
    subjects of both releases are present; the default release when no subject has such a name.
    """
    only = release_only_names()
    evidence: dict[str, tuple[SourceCase, list[str]]] = {}
    for case in cases:
        names = set(mask_files(case.label)) if case.label is not None else set()
        found = {release: sorted(names & marks) for release, marks in only.items() if names & marks}
        if len(found) == 1:
            release, marks = next(iter(found.items()))
            evidence.setdefault(release, (case, marks))
    if len(evidence) > 1:
        parts = [
            f"{case.case_id} is {release} ({_shown(marks)})" for release, (case, marks) in evidence.items()
        ]
        first_case = next(iter(evidence.values()))[0]
        raise InputError(
            first_case.image.parent.parent,
            f"holds subjects of both TotalSegmentator releases: {'; '.join(parts)}; "
            "convert them into separate datasets or force one with --classes v1|v2",
        )
    if not evidence:
        return DEFAULT_RELEASE, "default: no subject has a mask name that only one release has"
    release, (case, marks) = next(iter(evidence.items()))
    return release, f"detected from mask names, e.g. {case.case_id}: {_shown(marks)}"


def merge_structure_masks(
    case: SourceCase, geometry: Geometry, *, classes: dict[int, str], release: str | None = None
) -> np.ndarray:
    """Merge ``case.label/<structure>.nii.gz`` into one label map ``[I, J, K]`` (official ids).

    Masks are painted in ascending id order (higher id wins on overlap); each mask must share
    ``geometry`` (the image's grid). ``release`` (CT only) names the release of ``classes``: mask
    names of the other release are reported together as the odd files of a mixed subject.
    """
    folder = case.label
    if folder is None or not folder.is_dir():
        raise InputError(folder or case.image, "segmentations folder not found")
    ids = {name: label_id for label_id, name in classes.items()}
    files = mask_files(folder)
    unknown = sorted(name for name in files if name not in ids)
    if unknown:
        _raise_unknown_masks(files, unknown, release)
    dtype = np.uint8 if max(classes) <= np.iinfo(np.uint8).max else np.uint16
    # Painted in SimpleITK's (k, j, i) order and transposed once at the end: 117 per-mask transposed
    # copies would cost ~10x the merge itself (see BENCHMARKS.md, "Dataset conversion").
    merged_kji = np.zeros(tuple(reversed(geometry.size)), dtype=dtype)
    for label_id, path in sorted((ids[name], path) for name, path in files.items()):
        mask = _read_mask(path)
        check_same_geometry(path, _geometry_of(mask), geometry, case.image)
        merged_kji[sitk.GetArrayViewFromImage(mask) > 0] = label_id
    return np.ascontiguousarray(merged_kji.transpose(2, 1, 0))


def _raise_unknown_masks(files: dict[str, Path], unknown: list[str], release: str | None) -> None:
    """InputError naming the first mask file whose name the class map lacks (and the other odd ones)."""
    if release is None:
        name = unknown[0]
        raise InputError(files[name], f"structure {brief(name)} is not in the TotalSegmentator class map")
    other = {r: marks for r, marks in release_only_names().items() if r != release}
    foreign = {r: [n for n in unknown if n in marks] for r, marks in other.items()}
    foreign = {r: names for r, names in foreign.items() if names}
    if not foreign:
        name = unknown[0]
        raise InputError(
            files[name], f"structure {brief(name)} is not in the TotalSegmentator {release} class map"
        )
    odd_release, odd = next(iter(foreign.items()))
    own = sorted(set(files) & release_only_names()[release])
    if own:
        problem = (
            f"subject mixes TotalSegmentator releases: {odd_release}-only masks {_shown(odd)} next to "
            f"{release}-only masks {_shown(own)}; a subject must come from one release"
        )
    else:
        problem = (
            f"{odd_release}-only TotalSegmentator masks {_shown(odd)} in a {release} conversion "
            f"(--classes {odd_release} if the whole tree is {odd_release})"
        )
    raise InputError(files[odd[0]], problem)


def _read_mask(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot read mask ({collapse(str(err), 200)})") from None
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


def choose_release(label_set: str, cases: Sequence[SourceCase]) -> tuple[str, str]:
    """``(release, how)`` for ``label_set`` "auto" (detected), "v1" or "v2" (forced)."""
    if label_set not in LABEL_SETS:
        raise InputError(
            None, f"unknown TotalSegmentator label set {brief(label_set)}; known: {', '.join(LABEL_SETS)}"
        )
    if label_set == "auto":
        return detect_release(cases)
    return label_set, f"forced with --classes {label_set}"


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    variant: str = "totalsegmentator",
    label_set: str = "auto",
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert TotalSegmentator at ``src`` (``variant`` "totalsegmentator" or "totalsegmentator_mr").

    ``label_set`` (CT only): ``"auto"`` (release detected from the mask names), ``"v1"`` (104
    classes) or ``"v2"`` (117). ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress``
    of :func:`convert_cases`.
    """
    if variant not in VARIANTS:
        raise InputError(
            None, f"unknown TotalSegmentator variant {brief(variant)}; known: {', '.join(VARIANTS)}"
        )
    map_name, image_name, channel = VARIANTS[variant]
    if channel == "MR" and label_set != "auto":
        raise InputError(None, "--classes applies to the CT dataset only (the MRI release has one class map)")
    src, dst = check_paths(src, dst)
    cases = select_cases(discover_cases(src, image_name), subset, limit)
    extra: dict[str, Any] = {"source": str(src.resolve())}
    notes = []
    release = None
    if channel == "CT":
        release, how = choose_release(label_set, cases)
        map_name = RELEASES[release]
        extra |= {"label_set": release, "label_set_chosen": how}
        notes.append(f"TotalSegmentator {release}, {len(load_class_map(map_name))} classes; {how}")
    classes = load_class_map(map_name)
    return convert_cases(
        cases,
        dst,
        classes,
        dataset=variant,
        name="TotalSegmentator" + ("MRI" if channel == "MR" else ""),
        read_label=partial(merge_structure_masks, classes=classes, release=release),
        channel_name=channel,
        notes=notes,
        **options,
        extra=extra
        | {
            "label_set_description": class_map_description(map_name),
            "class_source": class_map_source(map_name),
            "overlap_rule": OVERLAP_RULE,
        },
    )
