"""Official class lists of the public datasets, kept as data in ``labels/<dataset>.json``.

Each JSON file holds ``"dataset"`` (full name), ``"source"`` (where the list comes from),
``"labels"`` (label id -> snake_case class name, as used throughout organdetr), optionally
``"description"`` (one line: which label set of the dataset this is) and, where the dataset's own
spelling differs from ours, ``"official_names"`` (label id -> name as published).

A dataset that published several label sets has one file per set: ``abdomenct1k`` (the official
4 organs) and ``abdomenct1k_organs13`` (the 50-case 13-organ release); ``totalsegmentator`` (v2, 117
classes) and ``totalsegmentator_v1`` (104 classes).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from organdetr.runtime.text import brief

LABELS_DIR = Path(__file__).resolve().parent / "labels"

CLASS_MAP_NAMES = (
    "abdomenct1k",
    "abdomenct1k_organs13",
    "word",
    "amos",
    "verse",
    "totalsegmentator",
    "totalsegmentator_v1",
    "totalsegmentator_mr",
    "brats",
    "brats2023",
)


@cache
def _load_table(dataset: str) -> dict:
    if dataset not in CLASS_MAP_NAMES:
        raise KeyError(f"unknown dataset {brief(dataset)}; known: {', '.join(CLASS_MAP_NAMES)}")
    with open(LABELS_DIR / f"{dataset}.json", encoding="utf-8") as fh:
        return json.load(fh)


def load_class_map(dataset: str) -> dict[int, str]:
    """Official class map of ``dataset``: label id (>= 1) -> snake_case name, sorted by id.

    ``dataset`` is one of :data:`CLASS_MAP_NAMES`.
    """
    labels = _load_table(dataset)["labels"]
    return {int(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}


def load_regions(dataset: str) -> dict[str, tuple[int, ...]]:
    """Declared segmentation regions of ``dataset`` (region name -> official label ids; the JSON's
    ``"regions"``), empty when it has none."""
    regions = _load_table(dataset).get("regions", {})
    return {str(name): tuple(int(i) for i in ids) for name, ids in regions.items()}


def class_map_source(dataset: str) -> str:
    """The citation of where ``dataset``'s class list comes from (the JSON's ``"source"``)."""
    return str(_load_table(dataset)["source"])


def class_map_description(dataset: str) -> str:
    """One line saying which label set ``dataset``'s class map is (the JSON's ``"description"``)."""
    table = _load_table(dataset)
    return str(table.get("description", table["dataset"]))


def official_names(dataset: str) -> dict[int, str]:
    """Label id -> name as the dataset publishes it (falls back to :func:`load_class_map`)."""
    table = _load_table(dataset)
    names = table.get("official_names", table["labels"])
    return {int(k): v for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}


def snake_case(name: str) -> str:
    """Lower-case ``name`` and join words with ``_`` (``"prostate/uterus"`` -> ``"prostate_uterus"``)."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
