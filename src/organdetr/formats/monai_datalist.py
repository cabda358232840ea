"""MONAI detection datalists: read them into the toolkit's nnU-Net layout, write predictions as one.

A MONAI detection datalist (the JSON that ``monai.data.load_decathlon_datalist`` reads, as in MONAI's
LUNA16 RetinaNet tutorial) is ``{"training": [{"image": "a.nii.gz", "box": [[6 numbers], ...], "label":
[0, ...]}, ...], "validation": [...]}``. ``label`` holds 0-based class indices; the toolkit's label id
is ``label + 1`` (0 is background in label maps). Boxes are in one of MONAI's 3D box modes
(``monai.data.box_utils`` names; conversions are MONAI's ``convert_box_mode``):

=========  =======================================
``xyzxyz``  ``x0, y0, z0, x1, y1, z1`` (corners)
``cccwhd``  ``cx, cy, cz, w, h, d`` (centre, size; LUNA16's convention)
``xxyyzz``  ``x0, x1, y0, y1, z0, z1``
``xyxyzz``  ``x0, y0, x1, y1, z0, z1``
``xyzwhd``  ``x0, y0, z0, w, h, d``
=========  =======================================

and in one of three coordinate systems (``coordinates``):

``world``      LPS mm, the toolkit's ``box_mm`` (what MONAI's ITK reader uses; load with
               ``AffineBoxToImageCoordinated(..., affine_lps_to_ras=True)`` as the LUNA16 tutorial does);
``world-ras``  RAS mm (x and y negated; for images read with nibabel's affine, ``affine_lps_to_ras=False``);
``image``      voxel indices of the image as stored on disk, ``[min, max + 1)`` per axis: exactly what
               MONAI's ``convert_mask_to_box`` gives for the label map (the toolkit's ``box_voxel``).

MONAI's world -> image conversion maps corner points through the affine, whose voxel centres sit at
integer indices; so a world box that spans whole voxels (``[lo - 0.5, hi + 0.5]`` in index units) lands
half a voxel below MONAI's mask-derived image box ``[lo, hi + 1)``. Boxes are exact in both systems; the
half voxel is MONAI's convention, stated here so nobody "fixes" it twice.

``organdetr convert monai-datalist DATALIST.json DST`` reads a datalist (items with boxes -> imagesTr, a
box label map per case; items without -> imagesTs). ``organdetr predict --format monai`` writes the run's
detections as ``OUT/monai_datalist.json`` (key ``"validation"``, as MONAI's detection inference writes its
results, with ``"score"`` per box).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from organdetr.runtime.atomic import write_json
from organdetr.runtime.errors import InputError

BOX_MODES = ("cccwhd", "xyzxyz", "xxyyzz", "xyxyzz", "xyzwhd")
COORDINATES = ("world", "world-ras", "image")
DEFAULT_KEYS = ("training", "validation")
FORMAT = "monai-datalist"

_RAS = np.array([-1.0, -1.0, 1.0])


def require_monai():
    try:
        from monai.data import box_utils
    except ImportError:
        raise InputError(None, "MONAI datalists need MONAI: pip install 'monai>=1.3'") from None
    return box_utils


def check_options(box_mode: str, coordinates: str) -> None:
    if box_mode not in BOX_MODES:
        raise InputError(None, f"box mode {box_mode!r} is not one of {', '.join(BOX_MODES)}")
    if coordinates not in COORDINATES:
        raise InputError(None, f"coordinates {coordinates!r} is not one of {', '.join(COORDINATES)}")


def to_mode(boxes_xyzxyz: np.ndarray, box_mode: str) -> np.ndarray:
    """Boxes ``[N, 6]`` ``xyzxyz`` -> ``box_mode`` (MONAI's ``convert_box_mode``), float64."""
    boxes = np.asarray(boxes_xyzxyz, dtype=np.float64).reshape(-1, 6)
    if box_mode == "xyzxyz" or len(boxes) == 0:
        return boxes
    return np.asarray(
        require_monai().convert_box_mode(boxes, src_mode="xyzxyz", dst_mode=box_mode), np.float64
    )


def from_mode(boxes: np.ndarray, box_mode: str) -> np.ndarray:
    """Boxes ``[N, 6]`` in ``box_mode`` -> ``xyzxyz`` (MONAI's ``convert_box_mode``), float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    if box_mode == "xyzxyz" or len(boxes) == 0:
        return boxes
    return np.asarray(
        require_monai().convert_box_mode(boxes, src_mode=box_mode, dst_mode="xyzxyz"), np.float64
    )


def lps_to_ras(boxes_mm: np.ndarray) -> np.ndarray:
    """``xyzxyz`` mm boxes ``[N, 6]`` between LPS and RAS (its own inverse): x and y negated, re-sorted."""
    boxes = np.asarray(boxes_mm, dtype=np.float64).reshape(-1, 6)
    a, b = boxes[:, :3] * _RAS, boxes[:, 3:] * _RAS
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)


# ----------------------------------------------------------------------------- writing


def prediction_item(prediction: Mapping, *, box_mode: str = "cccwhd", coordinates: str = "world") -> dict:
    """One datalist item ``{"image", "box", "label", "score"}`` for a prediction JSON."""
    check_options(box_mode, coordinates)
    detections = prediction.get("detections", [])
    if coordinates == "image":
        corners = np.asarray([d["box_voxel"] for d in detections], dtype=np.float64).reshape(-1, 6)
    else:
        corners = np.asarray([d["box_mm"] for d in detections], dtype=np.float64).reshape(-1, 6)
        if coordinates == "world-ras":
            corners = lps_to_ras(corners)
    return {
        "image": str(prediction["image"]),
        "box": [[round(float(v), 4) for v in box] for box in to_mode(corners, box_mode)],
        "label": [int(d["label_id"]) - 1 for d in detections],
        "score": [float(d["score"]) for d in detections],
    }


def datalist_document(
    predictions: Sequence[Mapping],
    *,
    box_mode: str = "cccwhd",
    coordinates: str = "world",
    key: str = "validation",
) -> dict:
    """A datalist of ``predictions`` under ``key``, plus what a reader needs to interpret it: ``labels``
    (0-based class index -> organ name), ``box_mode``, ``coordinates`` (extra keys MONAI ignores)."""
    items = [prediction_item(p, box_mode=box_mode, coordinates=coordinates) for p in predictions]
    names = {int(d["label_id"]) - 1: str(d["label"]) for p in predictions for d in p.get("detections", [])}
    return {
        key: items,
        "labels": {str(k): names[k] for k in sorted(names)},
        "box_mode": box_mode,
        "coordinates": coordinates,
        "world_frame": "RAS" if coordinates == "world-ras" else "LPS",
    }


def write_datalist(
    path: str | Path,
    predictions: Sequence[Mapping],
    *,
    box_mode: str = "cccwhd",
    coordinates: str = "world",
    key: str = "validation",
) -> Path:
    """Write ``predictions`` (prediction JSONs) as a MONAI detection datalist at ``path`` (atomically)."""
    path = Path(path)
    write_json(path, datalist_document(predictions, box_mode=box_mode, coordinates=coordinates, key=key))
    return path


# ----------------------------------------------------------------------------- reading


def read_datalist(
    path: str | Path,
    *,
    keys: Sequence[str] = DEFAULT_KEYS,
    box_mode: str | None = None,
    coordinates: str | None = None,
    base_dir: str | Path | None = None,
) -> tuple[list[dict], dict]:
    """Read a MONAI detection datalist -> ``(items, meta)``.

    ``items``: per image ``{"key", "image" (Path; relative paths are taken from ``base_dir``, default the
    datalist's folder, as MONAI does), "boxes" [N, 6] xyzxyz in ``meta["coordinates"]`` or None when the item
    has no ``box``, "labels" [N] int (0-based)}``. ``meta``: ``box_mode``, ``coordinates`` (the arguments,
    else what the file says, else ``cccwhd`` / ``world``), ``labels`` (index -> name from the file, may be
    empty). Lists named in ``keys`` that the file lacks are skipped; none present is an InputError.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable datalist JSON ({err})") from None
    if not isinstance(document, dict):
        raise InputError(path, "not a MONAI datalist (expected a JSON object of lists)")
    box_mode = box_mode or str(document.get("box_mode", "cccwhd"))
    coordinates = coordinates or str(document.get("coordinates", "world"))
    try:
        check_options(box_mode, coordinates)
    except InputError as err:
        raise InputError(path, err.problem) from None
    present = [k for k in keys if isinstance(document.get(k), list)]
    if not present:
        raise InputError(path, f"no list named {' or '.join(repr(k) for k in keys)} in the datalist")
    root = Path(base_dir) if base_dir is not None else path.parent
    items = []
    for key in present:
        for n, entry in enumerate(document[key]):
            items.append(_parse_item(path, key, n, entry, root, box_mode))
    labels = document.get("labels", {})
    meta = {
        "box_mode": box_mode,
        "coordinates": coordinates,
        "labels": {int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    }
    return items, meta


def _parse_item(path: Path, key: str, n: int, entry: Any, root: Path, box_mode: str) -> dict:
    where = f"{key}[{n}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise InputError(path, f"{where}: needs an 'image' path")
    image = Path(entry["image"])
    image = image if image.is_absolute() else root / image
    if "box" not in entry:
        return {"key": key, "image": image, "boxes": None, "labels": None}
    try:
        boxes = np.asarray(entry["box"], dtype=np.float64).reshape(-1, 6)
        labels = np.asarray(entry.get("label", []), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(
            path, f"{where}: 'box' must be a list of 6-number boxes and 'label' numbers"
        ) from None
    if len(labels) != len(boxes):
        raise InputError(path, f"{where}: {len(boxes)} boxes but {len(labels)} labels")
    if not np.all(np.isfinite(boxes)):
        raise InputError(path, f"{where}: boxes hold NaN or infinite values")
    if np.any(labels < 0) or not np.array_equal(labels, np.round(labels)):
        raise InputError(path, f"{where}: labels must be non-negative class indices")
    corners = from_mode(boxes, box_mode)
    if np.any(corners[:, 3:] < corners[:, :3]):
        raise InputError(path, f"{where}: a box has max < min after reading it as {box_mode}")
    return {"key": key, "image": image, "boxes": corners, "labels": labels.astype(int)}


# ----------------------------------------------------------------------------- convert -> nnU-Net


def _box_label_map(case, geometry, *, boxes: Mapping[str, tuple], coordinates: str) -> np.ndarray:
    """LabelReader for :func:`organdetr.datasets.conversion.convert_cases`: the case's boxes filled with
    their label id (``label + 1``) on the image grid, larger boxes first."""
    from organdetr.core.boxes.labels import world_box_to_voxel
    from organdetr.inference.predict import box_mask

    corners, labels = boxes[case.case_id]
    if coordinates == "image":
        voxel = corners
    else:
        world = lps_to_ras(corners) if coordinates == "world-ras" else corners
        voxel = world_box_to_voxel(world, geometry)
    upper = np.asarray(geometry.size, dtype=np.float64)
    outside = np.any(voxel[:, 3:] <= 0, axis=1) | np.any(voxel[:, :3] >= upper, axis=1)
    if np.any(outside):
        n = int(np.flatnonzero(outside)[0])
        raise InputError(case.label, f"case {case.case_id}: box {n} lies outside the image {case.image.name}")
    detections = [{"box_voxel": v, "label_id": int(lab) + 1} for v, lab in zip(voxel, labels, strict=True)]
    return box_mask(detections, geometry.size)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    box_mode: str | None = None,
    coordinates: str | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
    base_dir: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    **options: Any,
) -> Any:
    """Convert the MONAI detection datalist ``src`` into the nnU-Net v2 raw dataset ``dst``.

    Every item with boxes becomes a training case whose label map is its boxes filled with ``label + 1``
    (larger boxes first, so a small organ inside a larger box keeps its box); items without boxes become
    test images. Class names: ``label_names`` (for labels 0, 1, ...), else the datalist's ``labels``,
    else ``class_<label>``. ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress``.
    """
    from organdetr.datasets.conversion import convert_cases
    from organdetr.datasets.labels import snake_case
    from organdetr.datasets.source import SourceCase, nifti_stem, select_cases

    src = Path(src)
    if not src.is_file():
        raise InputError(src, "datalist JSON not found")
    items, meta = read_datalist(src, keys=keys, box_mode=box_mode, coordinates=coordinates, base_dir=base_dir)
    present = sorted({int(v) for item in items if item["labels"] is not None for v in item["labels"]})
    if label_names is not None and len(label_names) <= (present[-1] if present else -1):
        raise InputError(
            src, f"--label-names gives {len(label_names)} names but labels go up to {present[-1]}"
        )
    count = max(len(label_names or []), (present[-1] + 1) if present else 0, 1)
    names = {}
    for index in range(count):
        name = label_names[index] if label_names and index < len(label_names) else meta["labels"].get(index)
        names[index + 1] = snake_case(name) if name else f"class_{index}"
    cases, boxes, split = [], {}, {}
    for item in items:
        case_id = nifti_stem(item["image"])
        labelled = item["boxes"] is not None
        cases.append(
            SourceCase(case_id, item["image"], src if labelled else None, "Tr" if labelled else "Ts")
        )
        if labelled:
            boxes[case_id] = (item["boxes"], item["labels"])
        split.setdefault(item["key"], []).append(case_id)
    cases = select_cases(cases, subset, limit)
    reader = partial(_box_label_map, boxes=boxes, coordinates=meta["coordinates"])
    return convert_cases(
        cases,
        dst,
        names,
        dataset=FORMAT,
        name=src.stem,
        read_label=reader,
        **options,
        extra={
            "source": str(src.resolve()),
            "label_source": "boxes of a MONAI detection datalist, filled as box masks",
            "monai": {"box_mode": meta["box_mode"], "coordinates": meta["coordinates"]},
            "official_split": split,
        },
    )


__all__ = [
    "BOX_MODES",
    "COORDINATES",
    "convert",
    "datalist_document",
    "from_mode",
    "lps_to_ras",
    "prediction_item",
    "read_datalist",
    "to_mode",
    "write_datalist",
]
