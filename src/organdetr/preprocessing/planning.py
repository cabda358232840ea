"""The data half of a plan (`organdetr plan`): spacing, fit mode and intensity window from a fingerprint, and
where ``preprocess`` / ``train`` find a plan.

A plan is one JSON file, ``organdetr_plan.json``: written beside the raw dataset's ``dataset.json`` (or where
``plan --output`` says), read by ``preprocess DATASET OUT`` from ``DATASET/`` (or ``--plan``) and copied into
the cache, read by ``train --cache CACHE`` from ``CACHE/``. Options given on the command line win over it.
Every choice has its reason in ``"reasons"`` (plain text). The model half (preset, queries, anchors, the
memory and time budget) is chosen above this layer, in :mod:`organdetr.experiments.planning`.

Spacing rule (BENCHMARKS.md, issue 20 "The k axis: a fixed-spacing cache": at 64^3 a fixed 6.5 x 6.5 x 6.0 mm,
``fit=pad``, halved the k-face error of resizing each whole scan onto the grid): ``fit=pad`` always, and per
axis the largest of the median field of view divided by the grid, the median native spacing (no upsampling
of thick slices) and the spacing whose centred field of view reaches as far from the scan centre as
:data:`COVERAGE` of the organ boxes do, each rounded up to 0.1 mm.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from organdetr.preprocessing.plans import default_channel_norm
from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

PLAN_FILE = "organdetr_plan.json"
PLAN_VERSION = 1
COVERAGE = 0.95
MIN_WINDOW_HU = 500.0
MIN_ORGAN_VOXELS = 4.0
"""The smallest organ should span at least this many voxels on its thinnest axis (else a finer grid)."""


def organ_coverage(fingerprint: dict, spacing: np.ndarray, grid: np.ndarray) -> float:
    """Fraction of the fingerprint's organ boxes wholly inside a centred ``grid * spacing`` mm field of
    view (``spacing`` mm and ``grid`` voxels, (i, j, k))."""
    reach = _organ_reach(fingerprint)
    if not reach.size:
        return 1.0
    return float(np.mean(np.all(reach <= grid * spacing / 2.0 + 1e-6, axis=1)))


def _organ_reach(fingerprint: dict) -> np.ndarray:
    """``[N, 3]`` mm: how far each organ box reaches from its scan's centre along i, j, k."""
    boxes = [o["box_from_centre_mm"] for c in fingerprint["cases"] for o in c["organs"]]
    if not boxes:
        return np.empty((0, 3))
    boxes_arr = np.asarray(boxes, dtype=np.float64)
    return np.maximum(-boxes_arr[:, :3], boxes_arr[:, 3:])


def choose_spacing(fingerprint: dict, grid: tuple[int, int, int]) -> tuple[dict, dict]:
    """``({"target_spacing", "fit"}, reasons)`` for a ``grid`` (I, J, K voxels), by the module's rule."""
    grid_arr = np.asarray(grid, dtype=np.float64)
    extent = np.asarray(fingerprint["extent_mm"]["median"], dtype=np.float64)
    native = np.asarray(fingerprint["spacing_mm"]["median"], dtype=np.float64)
    base = np.ceil(extent / grid_arr * 10) / 10
    reach = np.percentile(_organ_reach(fingerprint), 100 * COVERAGE, axis=0)
    organs = np.ceil(reach * 2 / grid_arr * 10) / 10
    spacing = np.maximum.reduce([base, native, organs])
    reason = f"median field of view {_mm(extent)} mm / grid {_mm(grid_arr)} = {_mm(base)} mm"
    bounds = (
        ("the native spacing (no upsampling of thick slices)", native),
        (f"the reach of {COVERAGE:.0%} of the organs from the scan centre", organs),
    )
    for label, bound in bounds:
        axes = [a for a in range(3) if bound[a] > base[a] and spacing[a] == bound[a]]
        if axes:
            reason += f"; axis {', '.join('ijk'[a] for a in axes)} raised to {label}"
    coverage = organ_coverage(fingerprint, spacing, grid_arr)
    fov = _mm(np.round(grid_arr * spacing))
    reason += f" -> field of view {fov} mm, holding {coverage:.0%} of the organ boxes"
    return {"target_spacing": [round(float(s), 2) for s in spacing], "fit": "pad"}, {
        "fit": "pad: one fixed spacing keeps an organ's size in voxels the same in every scan (resize "
        "squeezes each scan's own field of view onto the grid); at 64^3 a fixed ~6.5 x 6.5 x 6.0 mm beat "
        "resize, halving the k-face error (BENCHMARKS.md, issue 20)",
        "target_spacing": reason,
    }


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def organs_in_voxels(fingerprint: dict, spacing: list[float], grid: tuple[int, int, int], fit: str) -> dict:
    """Median organ extents in voxels of the planned grid (``fit=resize``: at each axis' median field-of-view
    spacing) -> ``{organ: [i, j, k]}``."""
    if fit == "resize":
        spacing = list(np.asarray(fingerprint["extent_mm"]["median"]) / np.asarray(grid))
    return {
        name: [round(float(s) / float(d), 2) for s, d in zip(organ["size_mm_median"], spacing, strict=True)]
        for name, organ in fingerprint["organs"].items()
    }


def intensity_plan(fingerprint: dict) -> tuple[dict, str]:
    """``({"hu_window", "channel_norm"}, reason)`` for the CT channel; z-score for the others (MR).

    The window spans the organs' own intensities: from the lowest organ's 25th to the highest organ's 75th
    percentile, widened about its centre to at least :data:`MIN_WINDOW_HU`. Not nnU-Net's 0.5 / 99.5
    percentiles of all organ voxels pooled: gas inside a stomach label stretches those to about -975 HU on the
    phantoms, and the width is the largest single factor there (BENCHMARKS.md, issue 10: -200..300 gave 3x
    the mAP of -1000..1000 at the same steps).
    """
    norm = default_channel_norm(fingerprint["channels"])
    stats = fingerprint["intensity"]
    ct = next((c for c in stats if c["channel"].upper() == "CT"), stats[0])
    if norm and "hu_window" not in norm:
        reason = "z-score per channel over the non-zero voxels (no CT channel: the window is unused)"
        return {"hu_window": [-1000, 1000], "channel_norm": list(norm)}, reason
    pooled = ct["organs"] or ct["all"]
    nnunet = f"{math.floor(pooled['p0.5'])} .. {math.ceil(pooled['p99.5'])}"
    per_organ = ct.get("per_organ") or {}
    if not per_organ:
        window = [math.floor(pooled["p0.5"]), math.ceil(pooled["p99.5"])]
        return {"hu_window": window, "channel_norm": list(norm)}, f"{nnunet}: nnU-Net's CT percentiles"
    low_organ = min(per_organ, key=lambda n: per_organ[n]["p25"])
    high_organ = max(per_organ, key=lambda n: per_organ[n]["p75"])
    low, high = per_organ[low_organ]["p25"], per_organ[high_organ]["p75"]
    centre, half = (low + high) / 2, max(high - low, MIN_WINDOW_HU) / 2
    window = [math.floor(centre - half), math.ceil(centre + half)]
    reason = (
        f"{window[0]} .. {window[1]}: the organs' intensities from {low_organ}'s 25th percentile ({low:g}) "
        f"to {high_organ}'s 75th ({high:g}), widened to at least {MIN_WINDOW_HU:g} HU (the width of "
        "-200..300, 3x the mAP of -1000..1000 on the phantoms, BENCHMARKS.md issue 10); nnU-Net's 0.5 / 99.5 "
        f"percentiles of all organ voxels would give {nnunet} (gas or bone inside organ labels stretch them)"
    )
    return {"hu_window": window, "channel_norm": list(norm)}, reason


# ----------------------------------------------------------------------------------------------------
# finding and using a plan


def read_plan(path: str | Path) -> dict:
    """A plan file's content; :class:`InputError` naming it when unreadable or not a plan."""
    plan = read_json(Path(path), "unreadable plan", not_object="plan is not a JSON object")
    if plan.get("version") != PLAN_VERSION or not isinstance(plan.get("preprocess"), dict):
        raise InputError(path, f"not an organdetr plan (version {PLAN_VERSION} with a 'preprocess' section)")
    return plan


def find_plan(folder: str | Path, explicit: str | Path | None = None) -> Path | None:
    """``explicit`` (must exist), else ``folder/organdetr_plan.json`` when present, else ``None``."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise InputError(explicit, "no such plan file")
        return Path(explicit)
    path = Path(folder) / PLAN_FILE
    return path if path.is_file() else None


DEFAULT_SETTINGS = {
    "target_spacing": (2.0, 2.0, 2.0), "input_size": (96, 96, 96), "fit": "resize", "hu_window": None,
}  # fmt: skip


def planned_settings(
    dataset: str | Path, given: dict, plan: str | Path | None = None, *, use_plan: bool = True
) -> tuple[dict, Path | None]:
    """``preprocess``'s grid settings: those ``given`` (not ``None``) win, then the plan's (``plan``, else
    ``DATASET/organdetr_plan.json`` when present and ``use_plan``), then :data:`DEFAULT_SETTINGS`
    (``hu_window`` ``None``: measured on the labelled organs). Returns ``(settings, plan used or None)``."""
    path = find_plan(dataset, plan) if use_plan or plan is not None else None
    planned = read_plan(path)["preprocess"] if path is not None else {}
    settings = {}
    for key, default in DEFAULT_SETTINGS.items():
        value = given.get(key)
        if value is None:
            value = planned.get(key, default)
        settings[key] = tuple(value) if isinstance(value, list) else value
    return settings, path


def keep_plan_with_cache(plan_path: Path, cache_dir: Path) -> None:
    """Copy the plan a cache was made with into it (``CACHE/organdetr_plan.json``), for ``train``."""
    target = Path(cache_dir) / PLAN_FILE
    if plan_path.resolve() != target.resolve():
        with atomic.atomic_path(target) as tmp:
            shutil.copyfile(plan_path, tmp)


def train_overrides_from_plan(plan: dict) -> tuple[str, list[str]]:
    """``(preset, ["KEY=VALUE", ...])`` of a plan's ``train`` section (values as JSON, which YAML reads)."""
    train = plan.get("train") or {}
    overrides = [f"{key}={json.dumps(value)}" for key, value in (train.get("overrides") or {}).items()]
    return str(train.get("preset", "demo")), overrides


def planned_training(cache_dir: str | Path, config: str | None) -> tuple[str | None, list[str], str]:
    """``train --cache CACHE [CONFIG]`` with ``CACHE/organdetr_plan.json``: ``(config, overrides, note)``.

    No CONFIG: the plan's preset and its settings (queries, anchors); CONFIG naming the plan's preset: its
    settings too; another CONFIG: the plan is not applied to the model (its settings are for its preset).
    The overrides go before the user's ``--set``, which win. Without a plan: ``(config, [], "")``.
    """
    path = find_plan(cache_dir)
    if path is None:
        return config, [], ""
    preset, overrides = train_overrides_from_plan(read_plan(path))
    if config is not None and config != preset:
        return config, [], f"plan {path}: made for preset {preset}; CONFIG {config} given, plan not applied"
    return preset, overrides, f"plan {path}: preset {preset}, " + ", ".join(overrides)


__all__ = [
    "COVERAGE",
    "DEFAULT_SETTINGS",
    "MIN_ORGAN_VOXELS",
    "MIN_WINDOW_HU",
    "PLAN_FILE",
    "PLAN_VERSION",
    "choose_spacing",
    "find_plan",
    "intensity_plan",
    "keep_plan_with_cache",
    "organ_coverage",
    "organs_in_voxels",
    "planned_settings",
    "planned_training",
    "read_plan",
    "train_overrides_from_plan",
]
