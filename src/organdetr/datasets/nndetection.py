"""nnDetection's raw data layout in: ``organdetr convert nndetection TASK DST``.

nnDetection's raw layout (its README, "Adding New Data sets")::

    TaskXXX_Name/
      dataset.yaml | dataset.json   labels: {"0": "liver", ...} (classes start at 0), modalities: {"0": "CT"}
      raw_splitted/
        imagesTr/<case>_0000.nii.gz  one file per modality (_0000, _0001, ...)
        labelsTr/<case>.nii.gz       instance map: 0 background, 1..N one id per object
        labelsTr/<case>.json         {"instances": {"1": 0, "2": 1}}: instance id -> class
        imagesTs/, labelsTs/         optional, same structure

:func:`convert` turns each instance map into a label map of an nnU-Net v2 raw dataset (an instance of class
``c`` becomes label id ``c + 1``; instances of one class merge into that organ's label, the toolkit detects
one box per organ) and keeps modality ``_0000`` (the models take one channel). Writing predictions in
nnDetection's format is :mod:`organdetr.formats.nndetection`; its box convention,
:mod:`organdetr.core.boxes.modes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from organdetr.datasets.conversion import convert_cases
from organdetr.datasets.labels import snake_case
from organdetr.datasets.source import SourceCase, require_folder, select_cases
from organdetr.datasets.source_checks import read_label_file
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import collapse

FORMAT = "nndetection"
RAW_FOLDER = "raw_splitted"


def find_task(src: str | Path) -> Path:
    """The task folder (holding ``dataset.yaml``/``dataset.json`` and ``raw_splitted/``) at ``src``, its
    parent (when ``src`` is ``raw_splitted``), or one level below."""
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
    path = _dataset_file(task)
    if path is None:
        raise InputError(task, "no dataset.yaml or dataset.json")
    try:
        if path.suffix == ".json":
            info = read_json(path, "not readable")
        else:
            info = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise InputError(path, f"not readable ({collapse(str(err), 200)})") from None
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
    if not path.exists():
        raise InputError(path, "instance file is missing (every label map needs <case>.json)")
    data = read_json(path, "unreadable instance file")
    try:
        instances = {int(k): int(v) for k, v in data["instances"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        reason = collapse(str(err), 200)
        raise InputError(path, f'needs {{"instances": {{"1": <class>, ...}}}} ({reason})') from None
    return instances


def _semantic_labels(case, geometry, *, num_classes: int) -> np.ndarray:
    """LabelReader: the case's instance map -> label ids (instance of class ``c`` -> ``c + 1``)."""
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
    "FORMAT",
    "RAW_FOLDER",
    "convert",
    "discover_cases",
    "find_task",
    "read_instances",
    "read_task_info",
]
