"""Segmentation metrics of label maps: Dice, normalised surface distance (NSD) and HD95, per organ.

Conventions (worked examples and the MONAI differences: docs/metrics.md, "Segmentation metrics")

* Arrays are label maps ``[I, J, K]`` of label ids (0 = background) on one grid; ``spacing`` is the voxel
  size in mm in the same ``(i, j, k)`` order (docs/conventions.md). Distances are Euclidean, in mm.
* **Surface** of a mask = its voxels with at least one of the 6 face neighbours outside the mask (or
  outside the volume): ``mask & ~binary_erosion(mask)`` with the 6-connected structure - MONAI's and
  medpy's edge definition.
* **Surface distances**: from every surface voxel of one mask to the nearest surface voxel of the
  other (voxel centres, scaled by the spacing), in both directions. They are read off a
  ``scipy.ndimage.distance_transform_edt`` of each surface's complement on the *union bounding box* of the
  two masks - every surface voxel lies in that box, so the crop is exact and costs the organ's size, not
  the volume's.
* **HD95** = ``max(P95(pred -> gt), P95(gt -> pred))``, each a linear-interpolation percentile
  (``np.percentile``, = ``torch.quantile``) of one direction's distances: MONAI's
  ``HausdorffDistanceMetric(percentile=95)``.
* **NSD** at tolerance ``tau`` mm = (surface voxels of either mask within ``tau`` of the other surface) /
  (surface voxels of both): MONAI's ``SurfaceDiceMetric`` (``use_subvoxels=False``; each surface voxel
  counts 1, not its surface area as in Nikolov et al.'s surfel version).
* **Dice** = ``2 |P & G| / (|P| + |G|)``.
* **Empty masks**: an organ absent from both maps has no score (NaN; left out of every mean). Absent from
  one map only (a miss or a false positive): Dice 0, NSD 0 and HD95 = the volume's diagonal in mm (the
  largest distance the grid can hold - the worst-case value, as BraTS reports), so a missed organ costs
  the mean instead of vanishing from it. MONAI gives NaN Dice for an empty ground truth
  (``ignore_empty=True``) and ``inf`` HD95.
* **Means**: per organ over the cases where the score is defined; ``mean`` = the mean over organs of the
  per-organ means (organs without a defined score anywhere are left out).

Public API: :func:`mask_surface`, :func:`surface_distances`, :func:`organ_scores` (two boolean masks),
:func:`case_scores` (two label maps, many organs) and :func:`evaluate_segmentation` (many cases) ->
:class:`SegmentationResult`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from organdetr.runtime.text import brief
from organdetr.runtime.workers import map_tasks

METRICS: tuple[str, ...] = ("dice", "nsd", "hd95")
"""The per-organ metrics, in table order."""

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _as_spacing(spacing: float | Sequence[float], ndim: int = 3) -> np.ndarray:
    values = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    if not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"spacing must be {ndim} positive finite numbers (mm), got {brief(spacing)}")
    return values


def volume_diagonal_mm(shape: Sequence[int], spacing: float | Sequence[float]) -> float:
    """Length (mm) of the diagonal between the centres of two opposite corner voxels of ``shape``: the
    largest distance two voxels of the grid can have, the HD95 of a missed or spurious organ."""
    extent = (np.asarray(shape, dtype=np.float64) - 1) * _as_spacing(spacing, len(shape))
    return float(np.sqrt((extent**2).sum()))


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask ``[I, J, K]``: those with a face neighbour outside the mask or
    outside the array (6-connected erosion, as MONAI's ``get_mask_edges``)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def _union_box(pred: np.ndarray, gt: np.ndarray) -> tuple[slice, ...] | None:
    union = pred | gt
    found = ndimage.find_objects(union.astype(np.uint8))
    return found[0] if found else None


def _mask_pair(pred, gt, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, ...] | None]:
    """Two masks as boolean arrays of one shape (else ``ValueError``), the spacing per axis and the
    bounding box of their union (``None``: both empty)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt masks differ in shape: {pred.shape} vs {gt.shape}")
    return pred, gt, _as_spacing(spacing, pred.ndim), _union_box(pred, gt)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) ``(pred -> gt [Sp], gt -> pred [Sg])`` from each surface voxel of one boolean mask
    to the nearest surface voxel of the other; ``inf`` for every voxel when the other mask is empty.

    ``pred``, ``gt``: boolean ``[I, J, K]`` on one grid; ``spacing``: mm per axis (i, j, k) or a scalar.
    """
    pred, gt, sampling, box = _mask_pair(pred, gt, spacing)
    if box is None:
        return np.zeros(0), np.zeros(0)
    return _cropped_distances(pred[box], gt[box], sampling)


def _cropped_distances(
    pred: np.ndarray, gt: np.ndarray, sampling: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_distances` of masks already cropped to their union bounding box (exact there:
    every surface voxel, so every nearest neighbour, lies inside the box)."""
    surface_pred, surface_gt = mask_surface(pred), mask_surface(gt)
    out = []
    for source, target in ((surface_pred, surface_gt), (surface_gt, surface_pred)):
        if not source.any():
            out.append(np.zeros(0))
        elif not target.any():
            out.append(np.full(int(source.sum()), np.inf))
        else:
            out.append(ndimage.distance_transform_edt(~target, sampling=sampling)[source])
    return out[0], out[1]


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2 |P & G| / (|P| + |G|)`` of two boolean masks of one shape; NaN when both are empty."""
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0 and n_gt == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(pred & gt)) / (n_pred + n_gt)


def _scores_from_crop(
    pred: np.ndarray,
    gt: np.ndarray,
    sampling: np.ndarray,
    tolerance_mm: float,
    percentile: float,
    worst: float,
) -> tuple[float, float, float]:
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    if n_pred == 0 and n_gt == 0:
        return math.nan, math.nan, math.nan
    if n_pred == 0 or n_gt == 0:
        return 0.0, 0.0, worst
    dice = dice_score(pred, gt)
    to_gt, to_pred = _cropped_distances(pred, gt, sampling)
    nsd = (int((to_gt <= tolerance_mm).sum()) + int((to_pred <= tolerance_mm).sum())) / (
        to_gt.size + to_pred.size
    )
    hd = max(float(np.percentile(to_gt, percentile)), float(np.percentile(to_pred, percentile)))
    return dice, nsd, hd


def organ_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] = 1.0,
    *,
    nsd_tolerance_mm: float = 2.0,
    percentile: float = 95.0,
) -> tuple[float, float, float]:
    """``(dice, nsd, hd95_mm)`` of two boolean masks ``[I, J, K]`` (conventions in the module docstring).

    Both empty: ``(nan, nan, nan)``; one empty: ``(0, 0, volume diagonal in mm)``.
    """
    pred, gt, sampling, box = _mask_pair(pred, gt, spacing)
    if box is None:
        return math.nan, math.nan, math.nan
    worst = volume_diagonal_mm(pred.shape, sampling)
    return _scores_from_crop(pred[box], gt[box], sampling, float(nsd_tolerance_mm), percentile, worst)


def _label_boxes(labels: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label maps must hold integer ids, got dtype {labels.dtype}")
    if labels.dtype.itemsize > 4 or labels.dtype == np.uint32:
        labels = labels.astype(np.int64)
    return ndimage.find_objects(labels, max_label=max_label)


def _merge(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a or b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def case_scores(
    pred_map: np.ndarray,
    gt_map: np.ndarray,
    label_ids: Sequence[int],
    spacing: float | Sequence[float] = 1.0,
    *,
    nsd_tolerance_mm: float | Sequence[float] = 2.0,
    percentile: float = 95.0,
) -> np.ndarray:
    """Scores of every organ of one case -> ``[C, 3]`` float64 (columns ``dice, nsd, hd95_mm``).

    ``pred_map``, ``gt_map``: integer label maps ``[I, J, K]`` on one grid; ``label_ids [C]``: the organs'
    ids; ``nsd_tolerance_mm``: one tolerance or one per organ. Each organ is scored on the bounding box of
    its voxels in either map (one ``find_objects`` pass per map), so the cost follows the organs' size.
    """
    return _case(pred_map, gt_map, label_ids, spacing, nsd_tolerance_mm, percentile)[0]


def _case(
    pred_map: np.ndarray,
    gt_map: np.ndarray,
    label_ids: Sequence[int],
    spacing: float | Sequence[float],
    nsd_tolerance_mm: float | Sequence[float],
    percentile: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [C, 3], present [C, 2] bool: organ in (pred, gt))`` of one case."""
    pred_map, gt_map = np.asarray(pred_map), np.asarray(gt_map)
    if pred_map.shape != gt_map.shape:
        raise ValueError(f"label maps differ in shape: pred {pred_map.shape} vs gt {gt_map.shape}")
    sampling = _as_spacing(spacing, gt_map.ndim)
    tolerances = np.broadcast_to(np.asarray(nsd_tolerance_mm, dtype=np.float64), (len(label_ids),))
    worst = volume_diagonal_mm(gt_map.shape, sampling)
    ids = [int(i) for i in label_ids]
    if any(i < 1 for i in ids):
        raise ValueError(f"organ label ids must be >= 1 (0 is background), got {ids}")
    max_label = max(ids, default=0)
    pred_boxes, gt_boxes = _label_boxes(pred_map, max_label), _label_boxes(gt_map, max_label)
    scores = np.full((len(ids), len(METRICS)), np.nan)
    present = np.zeros((len(ids), 2), dtype=bool)
    for c, label_id in enumerate(ids):
        present[c] = pred_boxes[label_id - 1] is not None, gt_boxes[label_id - 1] is not None
        box = _merge(pred_boxes[label_id - 1], gt_boxes[label_id - 1])
        if box is None:
            continue
        scores[c] = _scores_from_crop(
            pred_map[box] == label_id,
            gt_map[box] == label_id,
            sampling,
            float(tolerances[c]),
            percentile,
            worst,
        )
    return scores, present


@dataclass
class SegmentationResult:
    """Scores of many cases.

    ``scores [N, C, 3]`` (cases x organs x ``dice, nsd, hd95_mm``; NaN where the organ is in neither map),
    ``per_class``: organ -> ``{dice, nsd, hd95_mm, num_cases, num_gt, num_pred, num_missed,
    num_spurious}``, ``summary``: ``{dice, nsd, hd95_mm}`` means over organs, ``settings``: the protocol.
    """

    scores: np.ndarray
    case_ids: list[str]
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    summary: dict[str, float]
    settings: dict
    counts: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0, 2), dtype=bool))

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN -> ``None``): settings, summary, per_class, per_case."""
        per_case = {
            case: {
                name: dict(
                    zip(("dice", "nsd", "hd95_mm"), (_finite(v) for v in self.scores[n, c]), strict=True)
                )
                for c, name in enumerate(self.classes)
                if not np.isnan(self.scores[n, c, 0])
            }
            for n, case in enumerate(self.case_ids)
        }
        return {
            "settings": self.settings,
            "summary": {k: _finite(v) for k, v in self.summary.items()},
            "per_class": {
                name: {k: _finite(v) if isinstance(v, float) else v for k, v in values.items()}
                for name, values in self.per_class.items()
            },
            "per_case": per_case,
        }


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _label_ids_and_names(classes: Mapping[int, str] | Sequence[str]) -> tuple[list[int], list[str]]:
    if isinstance(classes, Mapping):
        items = sorted((int(k), str(v)) for k, v in classes.items())
        return [k for k, _ in items], [v for _, v in items]
    names = [str(c) for c in classes]
    return list(range(1, len(names) + 1)), names


def evaluate_segmentation(
    pred_maps: Iterable[np.ndarray],
    gt_maps: Iterable[np.ndarray],
    classes: Mapping[int, str] | Sequence[str],
    spacing: float | Sequence[float] | Iterable[Sequence[float]] = 1.0,
    nsd_tolerance_mm: float | Mapping[str, float] = 2.0,
    *,
    case_ids: Sequence[str] | None = None,
    percentile: float = 95.0,
    workers: int = 1,
    progress: bool = False,
) -> SegmentationResult:
    """Dice, NSD and HD95 per organ and case, and their means.

    Args:
        pred_maps, gt_maps: label maps ``[I, J, K]`` (integer ids, 0 = background), pairwise on one grid;
            any iterables (e.g. generators reading files one case at a time).
        classes: ``{label id: organ name}``, or organ names for ids ``1..C``.
        spacing: voxel size (mm, ``(i, j, k)``): one for all cases, or one ``(3,)`` per case.
        nsd_tolerance_mm: NSD tolerance (mm), one for all organs or ``{organ name: mm}`` (missing organs
            take 2 mm).
        case_ids: names of the cases (default ``case_0 ...``).
        percentile: the Hausdorff percentile (95).
        workers: processes scoring cases in parallel (1 = in this process); at most ``2 * workers``
            cases are in flight, so a generator of maps is read as the scores come back.
        progress: show a tqdm bar.
    """
    label_ids, names = _label_ids_and_names(classes)
    tolerances = _tolerances(nsd_tolerance_mm, names)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    tasks = _tasks(
        zip(pred_maps, gt_maps, strict=True), _spacings(spacing), label_ids, tolerances, percentile
    )
    scores, counts = _score_cases(tasks, len(names), workers, progress)
    ids = list(case_ids) if case_ids is not None else [f"case_{n}" for n in range(len(scores))]
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} case ids for {len(scores)} cases")
    per_class = _per_class(scores, counts, names)
    summary = {
        key: _nanmean(np.asarray([v[key] for v in per_class.values()], dtype=np.float64))
        for key in ("dice", "nsd", "hd95_mm")
    }
    settings = _settings(tolerances, names, percentile, len(ids))
    return SegmentationResult(scores, ids, names, per_class, summary, settings, counts)


def _tolerances(nsd_tolerance_mm: float | Mapping[str, float], names: list[str]) -> list[float]:
    """The NSD tolerance (mm) of every organ; ``ValueError`` for unknown organs or bad values."""
    if isinstance(nsd_tolerance_mm, Mapping):
        unknown = sorted(set(nsd_tolerance_mm) - set(names))
        if unknown:
            raise ValueError(f"nsd_tolerance_mm names unknown organs {unknown}")
        tolerances = [float(nsd_tolerance_mm.get(n, 2.0)) for n in names]
    else:
        tolerances = [float(nsd_tolerance_mm)] * len(names)
    if any(not math.isfinite(t) or t < 0 for t in tolerances):
        raise ValueError(f"NSD tolerances must be finite and >= 0 mm, got {tolerances}")
    return tolerances


def _score_cases(
    tasks: Iterator[tuple], num_classes: int, workers: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N, C, 3], counts [N, C, 2])`` of every case, in case order (``workers`` processes)."""
    rows, presence = [], []
    with tqdm(desc="segmentation metrics", unit="case", disable=not progress, leave=False) as bar:
        for outcome in map_tasks(_case, tasks, workers, ordered=True, fatal=Exception):
            scores, present = outcome.result
            rows.append(scores)
            presence.append(present)
            bar.update(1)
    scores = np.stack(rows) if rows else np.zeros((0, num_classes, len(METRICS)))
    counts = np.stack(presence) if presence else np.zeros((0, num_classes, 2), dtype=bool)
    return scores, counts


def _per_class(scores: np.ndarray, counts: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per organ: mean scores over the cases where scored, and how often it was found, missed, spurious."""
    per_class = {}
    for c, name in enumerate(names):
        in_pred, in_gt = counts[:, c, 0], counts[:, c, 1]
        per_class[name] = {
            "dice": _nanmean(scores[:, c, 0]),
            "nsd": _nanmean(scores[:, c, 1]),
            "hd95_mm": _nanmean(scores[:, c, 2]),
            "num_cases": int((in_pred | in_gt).sum()),
            "num_gt": int(in_gt.sum()),
            "num_pred": int(in_pred.sum()),
            "num_missed": int((in_gt & ~in_pred).sum()),
            "num_spurious": int((in_pred & ~in_gt).sum()),
        }
    return per_class


def _settings(tolerances: list[float], names: list[str], percentile: float, num_cases: int) -> dict:
    """The protocol of a :class:`SegmentationResult` (``settings``)."""
    tolerance_setting: float | dict[str, float] = (
        tolerances[0]
        if len(set(tolerances)) <= 1 and tolerances
        else dict(zip(names, tolerances, strict=True))
    )
    return {
        "metrics": ["dice", "nsd", "hd95_mm"],
        "nsd_tolerance_mm": tolerance_setting,
        "hd_percentile": percentile,
        "surface": "6-connected erosion edge voxels, Euclidean voxel-centre distances in mm",
        "empty": "absent in both: not scored; absent in one: dice 0, nsd 0, hd95 = volume diagonal (mm)",
        "mean": "per organ over the cases where scored, then over organs",
        "num_cases": num_cases,
    }


def _tasks(pairs, spacings, label_ids, tolerances, percentile) -> Iterator[tuple]:
    for n, (pred, gt) in enumerate(pairs):
        case_spacing = next(spacings, None)
        if case_spacing is None:
            raise ValueError(f"spacing: fewer spacings than cases (case #{n} has none)")
        yield pred, gt, label_ids, case_spacing, tolerances, percentile


def _spacings(spacing) -> Iterator[np.ndarray]:
    """One spacing per case: a scalar / ``(3,)`` repeated, rows of an ``[N, 3]``, or an iterator's items."""
    if hasattr(spacing, "__next__"):
        yield from (np.asarray(s, dtype=np.float64) for s in spacing)
        return
    values = np.asarray(spacing, dtype=np.float64)
    if values.ndim == 2:
        yield from values
        return
    yield from itertools.repeat(values)


__all__ = [
    "METRICS",
    "SegmentationResult",
    "case_scores",
    "dice_score",
    "evaluate_segmentation",
    "mask_surface",
    "organ_scores",
    "surface_distances",
    "volume_diagonal_mm",
]
