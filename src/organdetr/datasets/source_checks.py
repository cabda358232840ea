"""Checks that a source file holds what its place in the layout says, before anything is converted.

Every image must look like an image and every label file like a label map of the class map (integer ids,
on the image's grid), else :class:`InputError` naming the file; a file of the wrong kind (a label map among
the images, a CT among the masks, ids of another class list) is a :class:`SourceMismatchError`, which fails
the whole run when it shows in the first case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organdetr.core.geometry import Geometry
from organdetr.datasets.source import SourceCase
from organdetr.io.images import integer_labels as cast_label_ids
from organdetr.io.images import read_image
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief, format_vector

# Geometry tolerance between an image and its label (headers are often rewritten in float32).
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

# An "image" with at most this many distinct values, all non-negative integers, is a label map (or
# blank): TotalSegmentator's 117 classes + background fit, a real CT/MR volume never does.
MAX_LABEL_MAP_VALUES = 128
# Voxels inspected before deciding that a large volume is an image (a strided sample, no copy).
SAMPLE_VOXELS = 1 << 20
# Label values this low are CT intensities (air is -1000 HU), not ids.
HU_LIKE_MIN = -100
# Unknown ids listed in an error message (the rest are counted).
MAX_IDS_SHOWN = 8


class SourceMismatchError(InputError):
    """A file does not hold what its place in the source layout says: a label map among the images,
    an image among the label maps, label ids of another class list. In the first case of a run it
    fails the whole run (the source tree, or the chosen label set, is then wrong as a whole)."""


def check_same_geometry(path: Path, geometry: Geometry, reference: Geometry, reference_path: Path) -> None:
    """InputError naming ``path`` unless its grid (size, spacing, origin, direction) equals ``reference``."""
    problems = []
    if tuple(geometry.size) != tuple(reference.size):
        problems.append(f"size {list(geometry.size)} vs {list(reference.size)}")
    for name, unit, rtol, atol in (
        ("spacing", " mm", SPACING_RTOL, 0),
        ("origin", " mm", 0, ORIGIN_ATOL_MM),
        ("direction", "", 0, DIRECTION_ATOL),
    ):
        ours, theirs = getattr(geometry, name), getattr(reference, name)
        if not np.allclose(ours, theirs, rtol=rtol, atol=atol):
            problems.append(f"{name} {format_vector(ours)} vs {format_vector(theirs)}{unit}")
    if problems:
        raise InputError(
            path, f"geometry differs from the image {reference_path.name}: {'; '.join(problems)}"
        )


def integer_labels(path: Path, array: np.ndarray) -> np.ndarray:
    """Label array as the smallest fitting unsigned integer type (no copy when it already is one).

    InputError naming ``path`` for non-3D arrays and for values that are no label ids: fractions,
    negative values (HU-like ranges are called out as an image taken for a label map).
    """
    if array.ndim != 3:
        raise InputError(
            path, f"label map is {array.ndim}D (shape {'x'.join(map(str, array.shape))}); expected 3D"
        )
    if array.size == 0:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))
    ):
        raise SourceMismatchError(
            path,
            f"label map holds non-integer values ({_value_range(array)}): an image, not a label map?",
        )
    low = array.min()
    if low < 0:
        looks = "CT intensities (HU): an image, not a label map?" if low <= HU_LIKE_MIN else "no label ids"
        raise SourceMismatchError(path, f"label map holds negative values ({_value_range(array)}), {looks}")
    return cast_label_ids(path, array)


def _value_range(array: np.ndarray) -> str:
    low, high = array.min(), array.max()
    return f"values {low:.6g}..{high:.6g}"


def check_is_image(path: Path, array: np.ndarray) -> None:
    """InputError naming ``path`` when the "image" ``array`` is a label map (or blank).

    A label map holds few distinct non-negative integers; a CT (negative HU) or MR volume holds
    many values. Large volumes are judged on a strided sample first, so an image costs one pass
    over ~1 M voxels.
    """
    if array.size == 0 or array.min() < 0:
        return
    step = max(1, round((array.size / SAMPLE_VOXELS) ** (1 / 3)))
    for candidate in (array[::step, ::step, ::step], array):
        values = np.unique(candidate)
        if values.size > MAX_LABEL_MAP_VALUES or not np.array_equal(values, np.round(values)):
            return
        if candidate is array or step == 1:
            break
    raise SourceMismatchError(
        path,
        f"is not an image: it holds only {values.size} distinct non-negative integer values "
        f"({values.min():.6g}..{values.max():.6g}), like a label map or a blank volume",
    )


def read_label_file(case: SourceCase, geometry: Geometry) -> np.ndarray:
    """Default :data:`LabelReader`: one multi-label file that must share the image's grid."""
    if case.label is None or not case.label.is_file():
        raise InputError(case.label or case.image, f"label file of case {brief(case.case_id)} is missing")
    label = read_image(case.label)
    labels = integer_labels(case.label, label.array)
    check_same_geometry(case.label, label.geometry, geometry, case.image)
    return labels


def read_image_checked(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image; InputError naming ``path`` for non-3D, non-finite or label-map-like data."""
    volume = read_image(path)
    array = volume.array
    if array.ndim != 3:
        raise InputError(
            path, f"image is {array.ndim}D (shape {'x'.join(map(str, array.shape))}); expected 3D"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(path, "image holds NaN or infinite values")
    check_is_image(path, array)
    return array, volume.geometry


def check_label_ids(
    path: Path, labels: np.ndarray, valid_ids: frozenset[int], dataset: str, hint: str = ""
) -> None:
    """InputError naming ``path`` if ``labels`` holds ids outside ``valid_ids`` (0 always allowed).

    The message lists the first :data:`MAX_IDS_SHOWN` unknown ids, says when the values look like an
    image rather than ids, and ends with ``hint`` (e.g. the other label sets of the dataset).
    """
    highest = int(labels.max()) if labels.size else 0
    if all(i in valid_ids for i in range(1, highest + 1)):
        return  # fast path: every id up to the maximum is valid, no need for np.unique
    values = np.unique(labels)
    unknown = sorted({int(v) for v in values} - valid_ids - {0})
    if not unknown:
        return
    shown = ", ".join(map(str, unknown[:MAX_IDS_SHOWN]))
    more = f", ... ({len(unknown)} ids)" if len(unknown) > MAX_IDS_SHOWN else ""
    problem = f"label ids [{shown}{more}] are not in the {dataset} class map"
    if values.size > MAX_LABEL_MAP_VALUES:
        problem += f"; {values.size} distinct values up to {highest} look like an image, not a label map"
    elif hint:
        problem += f" ({hint})"
    raise SourceMismatchError(path, problem)


__all__ = [
    "SourceMismatchError",
    "check_is_image",
    "check_label_ids",
    "check_same_geometry",
    "integer_labels",
    "read_image_checked",
    "read_label_file",
]
