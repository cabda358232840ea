"""Read the inputs of ``organdetr evaluate --seg``: predicted and ground-truth label maps, paired by case.

Predictions: ``PRED_DIR/<case>_seg.nii.gz`` (what ``organdetr predict`` writes for a segmenting model) or
``PRED_DIR/<case>.nii.gz`` (nnU-Net / TotalSegmentator style; other image suffixes of ``organdetr.io.images``
too). Ground truth: an nnU-Net raw dataset (``labelsTr`` / ``labelsTs``, class map of ``dataset.json``)
or a preprocessed cache (each case record's original ``label`` file, class map of ``plans.json``).

Each pair must share one grid (size, spacing, origin, direction: ``Geometry.is_close``), and a
prediction may only hold label ids of the class map; both are checked before any score is computed and
reported as :class:`~organdetr.runtime.errors.InputError` naming the prediction file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organdetr.datasets.nnunet import load_dataset
from organdetr.io.images import read_label_map
from organdetr.runtime.atomic import visible_files
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief

PRED_SUFFIXES = ("_seg.nii.gz", ".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class LabelMapSet:
    """Ground-truth label maps: ``cases`` = ``[(case_id, label file)]``, ``classes`` = ``{id: name}``."""

    cases: list[tuple[str, Path]]
    classes: dict[int, str]
    source: str


@dataclass
class PairedLabelMaps:
    """Ground truth paired with prediction files (``None``: no prediction, scored as an empty map)."""

    truth: LabelMapSet
    predictions: dict[str, Path | None]
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def load_label_map_truth(path: str | Path, *, split: str = "all") -> LabelMapSet:
    """Ground-truth label maps of an nnU-Net dataset (``split``: tr, ts, all) or a preprocessed cache."""
    path = Path(path)
    if (path / "dataset.json").is_file():
        dataset = load_dataset(path)
        cases = []
        if split in ("all", "tr"):
            cases += [(c.case_id, c.label) for c in dataset.cases]
        if split in ("all", "ts"):
            cases += [(c.case_id, c.label) for c in dataset.test_cases if c.label is not None]
        if not cases:
            raise InputError(path, f"no labelled cases in split {brief(split)}")
        return LabelMapSet(cases, dict(dataset.classes), f"nnU-Net dataset {path}")
    if (path / "plans.json").is_file():
        return _from_cache(path)
    raise InputError(path, "not an nnU-Net dataset (dataset.json) nor a preprocessed cache (plans.json)")


def _from_cache(cache_dir: Path) -> LabelMapSet:
    plans = read_json(cache_dir / "plans.json", not_object="expected a JSON object")
    try:
        classes = {int(k): str(v) for k, v in plans["classes"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(cache_dir / "plans.json", "needs 'classes' as {label id: name}") from None
    cases = []
    for record_path in visible_files(cache_dir / "cases", "*.json"):
        record = read_json(record_path, not_object="expected a JSON object")
        label = record.get("label")
        if not isinstance(record.get("case_id"), str) or not isinstance(label, str):
            raise InputError(
                record_path, "case record has no 'case_id' / original 'label' file to score against"
            )
        if not Path(label).is_file():
            raise InputError(record_path, f"its original label file {label} does not exist")
        cases.append((record["case_id"], Path(label)))
    if not cases:
        raise InputError(cache_dir / "cases", "no case records (*.json) in the cache")
    return LabelMapSet(cases, classes, f"cache {cache_dir}")


def pair_predictions(pred_dir: str | Path, truth: LabelMapSet) -> PairedLabelMaps:
    """Find each ground-truth case's prediction in ``pred_dir`` (``<case>_seg.nii.gz`` first, then
    ``<case>.nii.gz`` and the other suffixes); list the cases without one and the unmatched files."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    found: dict[str, Path | None] = {}
    for case_id, _ in truth.cases:
        found[case_id] = next(
            (pred_dir / f"{case_id}{s}" for s in PRED_SUFFIXES if (pred_dir / f"{case_id}{s}").is_file()),
            None,
        )
    used = {p.name for p in found.values() if p is not None}
    extra = sorted(
        p.name
        for p in visible_files(pred_dir)
        if p.is_file() and p.name.endswith(PRED_SUFFIXES) and p.name not in used
    )
    missing = [c for c, p in found.items() if p is None]
    if len(missing) == len(found):
        raise InputError(pred_dir, f"no label map matches a ground-truth case of {truth.source}")
    return PairedLabelMaps(truth, found, missing, extra)


def read_pairs(
    paired: PairedLabelMaps,
) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Yield ``(pred [I, J, K], gt [I, J, K], spacing (i, j, k) mm)`` per ground-truth case, one at a time;
    a missing prediction is an all-background map."""
    known = set(paired.truth.classes)
    for case_id, gt_path in paired.truth.cases:
        gt = read_label_map(gt_path)
        _check_ids(gt_path, gt.array, known, "ground truth")
        pred_path = paired.predictions[case_id]
        if pred_path is None:
            yield np.zeros_like(gt.array), gt.array, gt.geometry.spacing
            continue
        pred = read_label_map(pred_path)
        if not pred.geometry.is_close(gt.geometry):
            raise InputError(
                pred_path,
                f"grid differs from the ground truth {gt_path.name} (size {pred.geometry.size} vs "
                f"{gt.geometry.size}, spacing {_r(pred.geometry.spacing)} vs {_r(gt.geometry.spacing)}, "
                f"origin {_r(pred.geometry.origin)} vs {_r(gt.geometry.origin)}); "
                "label maps must share the scan's grid",
            )
        _check_ids(pred_path, pred.array, known, "prediction")
        yield pred.array, gt.array, gt.geometry.spacing


def _check_ids(path: Path, array: np.ndarray, known: set[int], what: str) -> None:
    present = np.flatnonzero(np.bincount(array.ravel()))
    unknown = sorted(int(i) for i in present if i != 0 and int(i) not in known)
    if unknown:
        raise InputError(path, f"{what} holds label ids {unknown[:10]} that are not in the class map")


def _r(values) -> list[float]:
    return [round(float(v), 3) for v in values]


__all__ = [
    "PRED_SUFFIXES",
    "LabelMapSet",
    "PairedLabelMaps",
    "load_label_map_truth",
    "pair_predictions",
    "read_pairs",
]
