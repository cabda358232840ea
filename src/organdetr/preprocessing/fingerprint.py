"""The fingerprint of a raw dataset (``organdetr plan``): what the scans and organs are like, as plain data.

Like nnU-Net's dataset fingerprint, read once from the nnU-Net v2 raw dataset that ``preprocess`` reads:
per case the size and spacing after canonical LPS reorientation (``(i, j, k)`` = (L, P, S) order), its
original orientation code, its field of view in mm, and the box of every organ in LPS mm (its extent, and
its corners relative to the scan's centre, ``box_from_centre_mm``); per channel the intensity percentiles
over all voxels, inside the labelled organs and per organ (sampled); per organ its median / smallest extent in
mm.
:mod:`organdetr.preprocessing.planning` turns it into a plan.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.geometry import axis_codes, reorient_geometry
from organdetr.datasets.nnunet import NnUNetCase, load_dataset
from organdetr.io.images import read_image, read_label_map
from organdetr.preprocessing.intensity import FOREGROUND_PERCENTILES
from organdetr.runtime.errors import InputError

PERCENTILES = (FOREGROUND_PERCENTILES[0], 50.0, FOREGROUND_PERCENTILES[1])
SAMPLES_PER_CASE = 20_000
ORGAN_SAMPLES = 2_000  # per organ and case
ORGAN_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)


def _pick_cases(cases: list[NnUNetCase], max_cases: int) -> list[NnUNetCase]:
    """Up to ``max_cases`` evenly spaced cases (all of them when there are fewer)."""
    positions = np.unique(np.linspace(0, len(cases) - 1, min(max_cases, len(cases))).round())
    return [cases[int(i)] for i in positions]


def _sample(values: np.ndarray, rng: np.random.Generator, count: int = SAMPLES_PER_CASE) -> np.ndarray:
    """Up to ``count`` of ``values`` drawn without replacement, float64."""
    values = values.reshape(-1)
    if values.size <= count:
        return values.astype(np.float64)
    return rng.choice(values, size=count, replace=False).astype(np.float64)


def _organ_samples(
    image: np.ndarray, labels: np.ndarray, classes: dict[int, str], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Samples of the intensities inside all organs together and per organ (one pass over the labels)."""
    foreground = labels > 0
    ids, values = labels[foreground], image[foreground]
    if not ids.size:
        return values.astype(np.float64), {}
    order = np.argsort(ids, kind="stable")
    ids, grouped = ids[order], values[order]
    present, starts = np.unique(ids, return_index=True)
    per_organ = {
        classes[int(i)]: _sample(part, rng, ORGAN_SAMPLES)
        for i, part in zip(present, np.split(grouped, starts[1:]), strict=True)
        if int(i) in classes
    }
    return _sample(values, rng), per_organ


def _case_fingerprint(
    case: NnUNetCase, classes: dict[int, str], rng: np.random.Generator
) -> tuple[dict, list]:
    """``(case entry, [(all-voxel samples, organ samples, {organ: samples}) per channel])`` of one case."""
    labels = read_label_map(case.label) if case.label is not None else None
    channels, samples = [], []
    for path in case.images:
        image = read_image(path)
        inside, per_organ = np.empty(0), {}
        if labels is not None and labels.array.shape == image.array.shape:
            inside, per_organ = _organ_samples(image.array, labels.array, classes, rng)
        samples.append((_sample(image.array, rng), inside, per_organ))
        channels.append(image)
    geometry = channels[0].geometry
    canonical = reorient_geometry(geometry)
    centre = canonical.index_to_world((np.asarray(canonical.size) - 1) / 2.0)
    organs = []
    if labels is not None:
        boxes = boxes_from_labels(labels.array, labels.geometry, classes, allow_empty=True, path=case.label)
        for box in boxes:
            extent = box.box_mm[3:] - box.box_mm[:3]
            from_centre = box.box_mm - np.concatenate([centre, centre])
            organs.append({
                "name": box.name, "size_mm": [round(float(e), 2) for e in extent], "voxels": box.voxels,
                "box_from_centre_mm": [round(float(v), 2) for v in from_centre],
            })  # fmt: skip
    entry = {
        "case_id": case.case_id,
        "size": [int(s) for s in canonical.size],
        "spacing": [round(float(s), 4) for s in canonical.spacing],
        "orientation": axis_codes(geometry),
        "extent_mm": [round(float(n * s), 2) for n, s in zip(canonical.size, canonical.spacing, strict=True)],
        "organs": organs,
    }
    return entry, samples


def _percentiles(values: list[np.ndarray], percentiles: tuple[float, ...] = PERCENTILES) -> dict | None:
    """``{"p0.5": v, ...}`` of the pooled samples (``None`` when there are none)."""
    joined = np.concatenate(values) if values else np.empty(0)
    if not joined.size:
        return None
    found = np.percentile(joined, percentiles)
    return {f"p{p:g}": round(float(v), 2) for p, v in zip(percentiles, found, strict=True)}


def _organ_summary(cases: list[dict], classes: dict[int, str]) -> dict[str, dict]:
    """Per organ (class order): cases it is in, median and smallest extent (mm, LPS axes), median voxels."""
    out: dict[str, dict] = {}
    for name in classes.values():
        sizes = np.array([o["size_mm"] for c in cases for o in c["organs"] if o["name"] == name])
        if not sizes.size:
            continue
        voxels = [o["voxels"] for c in cases for o in c["organs"] if o["name"] == name]
        out[name] = {
            "cases": int(len(sizes)),
            "size_mm_median": [round(float(v), 2) for v in np.median(sizes, axis=0)],
            "size_mm_min": [round(float(v), 2) for v in sizes.min(axis=0)],
            "voxels_median": int(np.median(voxels)),
        }
    return out


def fingerprint_dataset(
    root: str | Path, *, max_cases: int = 50, seed: int = 0, case_ids: Collection[str] | None = None
) -> dict:
    """The fingerprint of the nnU-Net v2 raw dataset at ``root`` (JSON-ready; see the module doc).

    Reads up to ``max_cases`` training cases, evenly spaced (only those in ``case_ids`` when given: a plan
    that must not see held-out cases). :class:`InputError` (naming the file) for an unreadable dataset or
    case, or a dataset whose cases hold no labelled organ.
    """
    dataset = load_dataset(root)
    rng = np.random.default_rng(seed)
    cases, per_channel = [], [([], [], {}) for _ in dataset.channels]
    wanted = None if case_ids is None else set(case_ids)
    pool = [c for c in dataset.cases if wanted is None or c.case_id in wanted]
    for case in _pick_cases(pool, max_cases):
        entry, samples = _case_fingerprint(case, dataset.classes, rng)
        cases.append(entry)
        for store, (everything, inside, per_organ) in zip(per_channel, samples, strict=True):
            store[0].append(everything)
            store[1].append(inside)
            for name, values in per_organ.items():
                store[2].setdefault(name, []).append(values)
    organs = _organ_summary(cases, dataset.classes)
    if not organs:
        raise InputError(Path(root) / "labelsTr", "no labelled organ in the training cases; nothing to plan")
    smallest = min(organs, key=lambda n: float(np.prod(organs[n]["size_mm_median"])))
    orientations: dict[str, int] = {}
    for c in cases:
        orientations[c["orientation"]] = orientations.get(c["orientation"], 0) + 1
    spacings, extents = np.array([c["spacing"] for c in cases]), np.array([c["extent_mm"] for c in cases])
    return {
        "dataset": str(Path(root)),
        "num_cases": len(dataset.cases),
        "cases_read": len(cases),
        "classes": {str(k): v for k, v in dataset.classes.items()},
        "channels": dataset.channels,
        "spacing_mm": _stats(spacings),
        "size_voxels": _stats(np.array([c["size"] for c in cases])),
        "extent_mm": _stats(extents),
        "orientations": orientations,
        "intensity": [
            {"channel": name, "all": _percentiles(everything), "organs": _percentiles(inside),
             "per_organ": {organ: _percentiles(v, ORGAN_PERCENTILES) for organ, v in per_organ.items()}}
            for name, (everything, inside, per_organ) in zip(dataset.channels, per_channel, strict=True)
        ],  # fmt: skip
        "organs": organs,
        "smallest_organ": {"name": smallest, "size_mm_median": organs[smallest]["size_mm_median"]},
        "cases": cases,
    }


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    """Median, min and max per axis of ``values [N, 3]``."""
    return {
        "median": [round(float(v), 4) for v in np.median(values, axis=0)],
        "min": [round(float(v), 4) for v in values.min(axis=0)],
        "max": [round(float(v), 4) for v in values.max(axis=0)],
    }


__all__ = ["PERCENTILES", "fingerprint_dataset"]
