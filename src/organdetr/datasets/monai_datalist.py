"""MONAI detection datalists in: ``organdetr convert monai-datalist DATALIST.json DST``.

A MONAI detection datalist (the JSON that ``monai.data.load_decathlon_datalist`` reads) is ``{"training":
[{"image": "a.nii.gz", "box": [[6 numbers], ...], "label": [0, ...]}, ...], "validation": [...]}``;
``label`` holds 0-based class indices (the toolkit's label id is ``label + 1``), boxes are in one of MONAI's
box modes and coordinate systems (:mod:`organdetr.core.boxes.modes`; the format, and the half voxel between
MONAI's world and image boxes: :mod:`organdetr.formats.monai_datalist`, which writes predictions as one).

:func:`read_datalist` reads the items (boxes as ``xyzxyz`` corners); :func:`convert` writes an nnU-Net v2 raw
dataset: items with boxes -> imagesTr and a box label map per case (the boxes filled with their label id on
the image grid, larger boxes first), items without -> imagesTs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from organdetr.core.boxes.modes import check_options, from_mode, lps_to_ras
from organdetr.core.boxes.raster import box_mask
from organdetr.core.boxes.world import world_box_to_voxel
from organdetr.datasets.conversion import convert_cases
from organdetr.datasets.labels import snake_case
from organdetr.datasets.source import SourceCase, nifti_stem, select_cases
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

DEFAULT_KEYS = ("training", "validation")
FORMAT = "monai-datalist"


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
    not_datalist = "not a MONAI datalist (expected a JSON object of lists)"
    document = read_json(path, "not a readable datalist JSON", not_object=not_datalist)
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


__all__ = ["DEFAULT_KEYS", "FORMAT", "convert", "read_datalist"]
