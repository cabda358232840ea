"""Read evaluation inputs: prediction JSONs (``organdetr predict``) and ground truth (cache or dataset).

Predictions: ``PRED_DIR/<case>.json`` as in docs/conventions.md; only ``case_id`` and, per detection,
``label``, ``score`` and ``box_mm`` are used. Ground truth: a preprocessed cache (``plans.json`` +
``cases/<case>.json`` records, field ``boxes[*].name`` / ``box_mm``) or an nnU-Net raw dataset
(``dataset.json``; one box per organ from each label map via ``organdetr.core.boxes.labels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.datasets.nnunet import load_dataset
from organdetr.evaluation.coco import Detection, GroundTruth
from organdetr.io.images import read_label_map
from organdetr.runtime.atomic import visible_files
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief

Split = Literal["all", "tr", "ts"]


@dataclass
class PredictionSet:
    """Detections of every prediction file; ``case_ids`` in file order; ``skipped``: non-prediction JSONs."""

    detections: list[Detection]
    case_ids: list[str]
    files: dict[str, Path]
    skipped: list[Path] = field(default_factory=list)
    case_probabilities: dict[str, dict[str, float]] = field(default_factory=dict)  # "case_label" entries


@dataclass
class GroundTruthSet:
    """Ground-truth organ boxes of ``case_ids`` (cases without organs included) and the class names."""

    boxes: list[GroundTruth]
    case_ids: list[str]
    classes: list[str]
    source: str
    class_ids: dict[str, int] = field(default_factory=dict)  # organ name -> label id
    case_classes: list[str] = field(default_factory=list)  # case-level class names (empty: none)
    case_labels: dict[str, str | None] = field(default_factory=dict)  # case id -> its class name


def load_predictions(
    pred_dir: str | Path, classes: list[str] | None = None, class_ids: dict[str, int] | None = None
) -> PredictionSet:
    """Read ``pred_dir/*.json``. JSON objects without ``detections`` are skipped (and listed).

    Raises :class:`InputError` naming the file for unreadable JSON, a duplicate ``case_id``, an organ
    not in ``classes`` (when given), a score that is not a number in [0, 1], a ``label_id`` that is not
    the id of its ``label`` in ``class_ids`` (organ name -> label id, when given), or a ``box_mm`` that is
    not 6 finite numbers with min <= max.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    known = None if classes is None else set(classes)
    result = PredictionSet([], [], {})
    for path in visible_files(pred_dir, "*.json"):
        data = read_json(path)
        if not isinstance(data, dict) or "detections" not in data:
            result.skipped.append(path)
            continue
        case_id = data.get("case_id")
        if not isinstance(case_id, str) or not case_id:
            raise InputError(path, "prediction JSON needs a non-empty string 'case_id'")
        if case_id in result.files:
            raise InputError(
                path, f"duplicate case id {brief(case_id)} (also in {result.files[case_id].name})"
            )
        frame = data.get("world_frame", "LPS")
        if frame != "LPS":
            raise InputError(path, f"world_frame is {brief(frame)}; boxes must be LPS mm")
        if not isinstance(data["detections"], list):
            raise InputError(path, "'detections' must be a list")
        result.files[case_id] = path
        result.case_ids.append(case_id)
        for i, det in enumerate(data["detections"]):
            result.detections.append(_detection(path, case_id, i, det, known, class_ids))
        if "case_label" in data:
            result.case_probabilities[case_id] = _case_probabilities(path, data["case_label"])
    return result


def _case_probabilities(path: Path, entry) -> dict[str, float]:
    """A prediction's ``case_label`` -> class name -> probability (``probabilities``, else the label's)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
        raise InputError(path, "'case_label' must be {label, probability, probabilities}")
    probs = entry.get("probabilities") or {entry["label"]: entry.get("probability", 1.0)}
    if not isinstance(probs, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
        for v in probs.values()
    ):
        raise InputError(path, f"'case_label' probabilities must be numbers in [0, 1], got {brief(probs)}")
    return {str(k): float(v) for k, v in probs.items()}


def _detection(
    path: Path, case_id: str, i: int, det, known: set[str] | None, class_ids: dict[str, int] | None
) -> Detection:
    where = f"detection #{i}"
    if not isinstance(det, dict):
        raise InputError(path, f"{where} is not an object")
    label = det.get("label")
    if not isinstance(label, str):
        raise InputError(path, f"{where} needs a string 'label' (organ name)")
    if known is not None and label not in known:
        raise InputError(path, f"{where} has unknown organ {brief(label)} (not in the ground-truth classes)")
    if "label_id" in det:
        label_id = det["label_id"]
        if isinstance(label_id, bool) or not isinstance(label_id, int):
            raise InputError(path, f"{where} ({label}) has a non-integer label_id {brief(label_id)}")
        if class_ids and label in class_ids and class_ids[label] != label_id:
            owner = next((name for name, i in class_ids.items() if i == label_id), None)
            also = f" (that id is {brief(owner)})" if owner else ""
            raise InputError(
                path,
                f"{where}: label {brief(label)} is label id {class_ids[label]} in the class map, "
                f"but the detection says label_id {label_id}{also}",
            )
    score = det.get("score")
    if (
        isinstance(score, bool)
        or not isinstance(score, int | float)
        or not math.isfinite(score)
        or not 0.0 <= score <= 1.0
    ):
        raise InputError(
            path, f"{where} ({label}) has an invalid score {brief(score)}; expected a number in [0, 1]"
        )
    box = _box(path, f"{where} ({label})", det.get("box_mm"))
    return Detection(case_id, label, float(score), box)


def _box(path: Path, where: str, value) -> np.ndarray:
    if (
        not isinstance(value, list)
        or len(value) != 6
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise InputError(path, f"{where}: 'box_mm' must be 6 numbers [x0, y0, z0, x1, y1, z1]")
    box = np.asarray(value, dtype=np.float64)
    if not np.isfinite(box).all():
        raise InputError(path, f"{where}: 'box_mm' has non-finite values {value}")
    if (box[3:] < box[:3]).any():
        raise InputError(path, f"{where}: 'box_mm' has min > max {value}")
    return box


def load_ground_truth(path: str | Path, *, split: Split = "all", progress: bool = True) -> GroundTruthSet:
    """Ground-truth boxes from a preprocessed cache folder or an nnU-Net raw dataset folder.

    ``split`` (datasets only): ``"tr"`` labelsTr, ``"ts"`` labelsTs, ``"all"`` both.
    """
    path = Path(path)
    if (path / "plans.json").is_file():
        return _from_cache(path)
    if (path / "dataset.json").is_file():
        return _from_dataset(path, split, progress)
    raise InputError(path, "not a preprocessed cache (plans.json) nor an nnU-Net dataset (dataset.json)")


def _from_cache(cache_dir: Path) -> GroundTruthSet:
    plans = read_json(cache_dir / "plans.json")
    try:
        id_names = sorted((int(k), str(v)) for k, v in plans["classes"].items())
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(cache_dir / "plans.json", "needs 'classes' as {label id: name}") from None
    classes = [name for _, name in id_names]
    boxes, case_ids = [], []
    case_labels: dict[str, str | None] = {}
    for record_path in visible_files(cache_dir / "cases", "*.json"):
        record = read_json(record_path)
        case_id = record.get("case_id") if isinstance(record, dict) else None
        if not isinstance(case_id, str) or not isinstance(record.get("boxes"), list):
            raise InputError(record_path, "not a case record (needs 'case_id' and 'boxes')")
        if case_id in case_ids:
            raise InputError(record_path, f"duplicate case id {brief(case_id)}")
        case_ids.append(case_id)
        case_labels[case_id] = record.get("case_label")
        for i, box in enumerate(record["boxes"]):
            name = box.get("name") if isinstance(box, dict) else None
            if name not in classes:
                raise InputError(record_path, f"box #{i} has organ {brief(name)}, not in plans.json classes")
            boxes.append(
                GroundTruth(case_id, name, _box(record_path, f"box #{i} ({name})", box.get("box_mm")))
            )
    if not case_ids:
        raise InputError(cache_dir / "cases", "no case records (*.json) in the cache")
    case_classes = [str(plans["case_classes"][k]) for k in sorted(plans.get("case_classes") or {}, key=int)]
    if not case_classes:
        case_labels = {}
    return GroundTruthSet(
        boxes,
        case_ids,
        classes,
        f"cache {cache_dir}",
        {name: i for i, name in id_names},
        case_classes=case_classes,
        case_labels=case_labels,
    )


def _from_dataset(root: Path, split: Split, progress: bool) -> GroundTruthSet:
    dataset = load_dataset(root)
    cases = []
    if split in ("all", "tr"):
        cases += dataset.cases
    if split in ("all", "ts"):
        cases += [c for c in dataset.test_cases if c.label is not None]
    if not cases:
        raise InputError(root, f"no labelled cases in split {brief(split)}")
    boxes, case_ids = [], []
    for case in tqdm(cases, desc="ground truth", unit="case", disable=not progress, leave=False):
        if case.case_id in case_ids:
            raise InputError(
                case.label, f"duplicate case id {brief(case.case_id)} (in labelsTr and labelsTs)"
            )
        case_ids.append(case.case_id)
        labels = read_label_map(case.label)
        found = boxes_from_labels(
            labels.array, labels.geometry, dataset.classes, allow_empty=True, path=case.label
        )
        boxes += [GroundTruth(case.case_id, b.name, np.asarray(b.box_mm, dtype=np.float64)) for b in found]
    case_labels = {c.case_id: c.case_label for c in cases} if dataset.case_classes else {}
    return GroundTruthSet(
        boxes,
        case_ids,
        list(dataset.classes.values()),
        f"nnU-Net dataset {root}",
        {name: i for i, name in dataset.classes.items()},
        case_classes=dataset.case_classes,
        case_labels=case_labels,
    )
