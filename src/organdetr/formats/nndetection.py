"""nnDetection: its raw data layout into the toolkit's nnU-Net layout, predictions out in its box format.

nnDetection's raw layout (its README, "Adding New Data sets")::

    TaskXXX_Name/
      dataset.yaml | dataset.json   labels: {"0": "liver", ...} (classes start at 0), modalities: {"0": "CT"}
      raw_splitted/
        imagesTr/<case>_0000.nii.gz  one file per modality (_0000, _0001, ...)
        labelsTr/<case>.nii.gz       instance map: 0 background, 1..N one id per object
        labelsTr/<case>.json         {"instances": {"1": 0, "2": 1}}: instance id -> class
        imagesTs/, labelsTs/         optional, same structure

``organdetr convert nndetection TASK DST`` turns each instance map into a label map (an instance of class
``c`` becomes label id ``c + 1``; instances of one class merge into that organ's label, the toolkit detects
one box per organ) and keeps modality ``_0000`` (the models take one channel).

Predictions (``organdetr predict --format nndetection``) are written as nnDetection writes its own,
``OUT/<case>_boxes.pkl``: a pickled dict with ``pred_boxes [N, 6]``, ``pred_scores [N]``, ``pred_labels [N]``
(class = label id - 1), ``restore``, ``original_size_of_raw_data`` and ``itk_origin`` / ``itk_spacing`` /
``itk_direction``, which its tools (``nndet_boxes2nii``, evaluation) read. nnDetection's boxes index the
array that SimpleITK's ``GetArrayFromImage`` returns, axes ``(k, j, i)``, ordered ``(x1, y1, x2, y2, z1,
z2)`` and spanning ``[min - 1, max + 1]`` of the object's voxels (its ``instances_to_boxes_np``); the
toolkit's half-open ``(i0, j0, k0, i1, j1, k1)`` box maps onto that exactly (:func:`to_nndetection_boxes`).
The toolkit writes these pickles but never reads one (pickles run code when loaded).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from organdetr.runtime.atomic import write_bytes
from organdetr.runtime.errors import InputError

FORMAT = "nndetection"
RAW_FOLDER = "raw_splitted"


# ----------------------------------------------------------------------------- box conventions


def to_nndetection_boxes(box_voxel: np.ndarray) -> np.ndarray:
    """Toolkit voxel boxes ``[N, 6]`` ``(i0, j0, k0, i1, j1, k1)`` half-open -> nnDetection boxes ``[N, 6]``
    ``(x1, y1, x2, y2, z1, z2)`` on the ``(k, j, i)`` array: ``(k0 - 1, j0 - 1, k1, j1, i0 - 1, i1)``."""
    box = np.asarray(box_voxel, dtype=np.float64).reshape(-1, 6)
    i0, j0, k0, i1, j1, k1 = box.T
    return np.stack([k0 - 1, j0 - 1, k1, j1, i0 - 1, i1], axis=1)


def from_nndetection_boxes(boxes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_nndetection_boxes`."""
    box = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    x1, y1, x2, y2, z1, z2 = box.T
    return np.stack([z1 + 1, y1 + 1, x1 + 1, z2, y2, x2], axis=1)


def prediction_boxes(prediction: Mapping) -> dict:
    """nnDetection's per-case box dict for a prediction JSON (needs the scan geometry, ``original``)."""
    original = prediction.get("original")
    if not original:
        raise InputError(None, f"prediction {prediction.get('case_id')}: no scan geometry ('original')")
    detections = prediction.get("detections", [])
    boxes = to_nndetection_boxes(np.asarray([d["box_voxel"] for d in detections]).reshape(-1, 6))
    return {
        "pred_boxes": boxes.astype(np.float32),
        "pred_scores": np.asarray([d["score"] for d in detections], dtype=np.float32),
        "pred_labels": np.asarray([int(d["label_id"]) - 1 for d in detections], dtype=np.int64),
        "restore": True,
        "original_size_of_raw_data": np.asarray(original["size"][::-1], dtype=np.int64),
        "itk_origin": tuple(float(v) for v in original["origin"]),
        "itk_spacing": tuple(float(v) for v in original["spacing"]),
        "itk_direction": tuple(float(v) for v in original["direction"]),
    }


def write_prediction(prediction: Mapping, out_dir: str | Path) -> Path:
    """Write ``OUT/<case>_boxes.pkl`` (nnDetection's prediction file) atomically; returns its path."""
    path = Path(out_dir) / f"{prediction['case_id']}_boxes.pkl"
    write_bytes(path, pickle.dumps(prediction_boxes(prediction), protocol=4))
    return path


# ----------------------------------------------------------------------------- reading the raw layout


def find_task(src: str | Path) -> Path:
    """The task folder (holding ``dataset.yaml``/``dataset.json`` and ``raw_splitted/``) at ``src``, its
    parent (when ``src`` is ``raw_splitted``), or one level below."""
    from organdetr.datasets.source import require_folder

    src = require_folder(src)
    candidates = [src, src.parent, *sorted(p for p in src.iterdir() if p.is_dir())]
    for folder in candidates:
        if (folder / RAW_FOLDER).is_dir() and _dataset_file(folder) is not None:
            return folder
    raise InputError(
        src, f"no nnDetection task here (a folder with dataset.yaml or dataset.json and {RAW_FOLDER}/)"
    )


def _dataset_file(task: Path) -> Path | None:
    for name in ("dataset.yaml", "dataset.yml", "dataset.json"):
        if (task / name).is_file():
            return task / name
    return None


def read_task_info(task: Path) -> dict:
    """``dataset.yaml`` / ``dataset.json`` of a task -> ``{"classes": {label id: name}, "modalities": {...},
    "name": str}``; class ``c`` gets label id ``c + 1``."""
    import yaml

    from organdetr.datasets.labels import snake_case

    path = _dataset_file(task)
    if path is None:
        raise InputError(task, "no dataset.yaml or dataset.json")
    try:
        text = path.read_text(encoding="utf-8")
        info = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise InputError(path, f"not readable ({' '.join(str(err).split())[:200]})") from None
    labels = info.get("labels") if isinstance(info, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, 'needs \'labels\': {"0": "<class name>", ...}')
    try:
        classes = {int(k) + 1: snake_case(str(v)) for k, v in labels.items()}
    except ValueError:
        raise InputError(path, "'labels' keys must be class indices 0, 1, ...") from None
    if min(classes) != 1:
        raise InputError(path, "'labels' must start at class 0")
    if int(info.get("dim", 3)) != 3:
        raise InputError(path, f"dim {info.get('dim')}: only 3D data sets can be converted")
    modalities = {str(k): str(v) for k, v in (info.get("modalities") or {"0": "CT"}).items()}
    return {
        "classes": classes,
        "modalities": modalities,
        "name": str(info.get("name") or info.get("task") or task.name),
    }


def discover_cases(task: Path) -> list:
    """Cases of ``raw_splitted/images{Tr,Ts}`` (modality ``_0000``) with their instance maps when present."""
    from organdetr.datasets.source import SourceCase

    raw = task / RAW_FOLDER
    cases = []
    for split in ("Tr", "Ts"):
        folder = raw / f"images{split}"
        if not folder.is_dir():
            continue
        for image in sorted(folder.glob("*_0000.nii.gz")):
            if image.name.startswith("."):
                continue
            case_id = image.name[: -len("_0000.nii.gz")]
            label = raw / f"labels{split}" / f"{case_id}.nii.gz"
            has_label = label.is_file() or split == "Tr"  # a missing training label is reported per case
            cases.append(SourceCase(case_id, image, label if has_label else None, split))
    if not cases:
        raise InputError(raw, "no images (imagesTr/<case>_0000.nii.gz) found")
    return cases


def read_instances(path: Path) -> dict[int, int]:
    """``<case>.json`` -> ``{instance id: class}``; InputError naming the file when malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        instances = {int(k): int(v) for k, v in data["instances"].items()}
    except FileNotFoundError:
        raise InputError(path, "instance file is missing (every label map needs <case>.json)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(path, f'needs {{"instances": {{"1": <class>, ...}}}} ({err})') from None
    return instances


def _semantic_labels(case, geometry, *, num_classes: int) -> np.ndarray:
    """LabelReader: the case's instance map -> label ids (instance of class ``c`` -> ``c + 1``)."""
    from organdetr.datasets.source_checks import read_label_file

    instance_map = read_label_file(case, geometry)
    json_path = case.label.with_name(case.label.name[: -len(".nii.gz")] + ".json")
    instances = read_instances(json_path)
    present = [int(v) for v in np.unique(instance_map) if v > 0]
    missing = [i for i in present if i not in instances]
    if missing:
        raise InputError(json_path, f"instances {missing[:10]} of the label map have no class")
    bad = sorted({c for c in instances.values() if not 0 <= c < num_classes})
    if bad:
        raise InputError(json_path, f"classes {bad} are not in the task's labels (0..{num_classes - 1})")
    lut = np.zeros(max(present, default=0) + 1, dtype=np.uint8 if num_classes < 255 else np.uint16)
    for instance, cls in instances.items():
        if instance < len(lut):
            lut[instance] = cls + 1
    return lut[instance_map]


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    subset: Sequence[str] | None = None,
    limit: int | None = None,
    **options: Any,
) -> Any:
    """Convert the nnDetection task at ``src`` into the nnU-Net v2 raw dataset ``dst``.

    ``options``: ``keep_classes``, ``workers``, ``resume``, ``progress`` of
    :func:`organdetr.datasets.conversion.convert_cases`.
    """
    from organdetr.datasets.conversion import convert_cases
    from organdetr.datasets.source import select_cases

    task = find_task(src)
    info = read_task_info(task)
    cases = select_cases(discover_cases(task), subset, limit)
    extra: dict[str, Any] = {"source": str(task.resolve()), "label_source": "nnDetection instance maps"}
    if len(info["modalities"]) > 1:
        extra["channels_dropped"] = {k: v for k, v in info["modalities"].items() if k != "0"}
    return convert_cases(
        cases,
        dst,
        info["classes"],
        dataset=FORMAT,
        name=info["name"],
        read_label=partial(_semantic_labels, num_classes=len(info["classes"])),
        channel_name=info["modalities"].get("0", "CT"),
        **options,
        extra=extra,
    )


__all__ = [
    "convert",
    "discover_cases",
    "find_task",
    "from_nndetection_boxes",
    "prediction_boxes",
    "read_instances",
    "read_task_info",
    "to_nndetection_boxes",
    "write_prediction",
]
