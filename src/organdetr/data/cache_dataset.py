"""Training / validation samples read from the preprocessed cache (docs/conventions.md, "Preprocessed cache").

``CacheDataset[key]`` -> ``(image [C, I, J, K] float32, target)`` with the DETR target of conventions.md:
``labels [M]`` int64 dense class index, ``boxes [M, 6]`` normalised ``cxcyczwhd``, ``seg [I, J, K]`` int64
(dense class + 1, 0 = background), plus ``case_id`` (str). Which organs are in the targets always follows
the (possibly augmented) labels, so an organ pushed out of the volume leaves them. Their boxes
(``box_targets``):

* ``"labels"``: the box of the organ's voxels on the cache grid - quantised to whole voxels, twice (the
  nearest-neighbour resampling of preprocessing, then of augmentation); a perfect predictor of these targets
  scores median IoU 0.88 against the ground truth the metric uses (issue 20), thin organs ~0.82;
* ``"exact"``: the continuous box of the organ in the *original* scan (the record's ``box_mm``, from the
  original-resolution labels: what the metric scores against) mapped onto the cache grid, then carried
  through the sample's zoom / shift / flip exactly (:func:`~organdetr.data.augment.transform_boxes`). A
  rotated sample keeps its label boxes, since the box of a rotated box is an upper bound, not the organ's.

``C`` is 1 for the single-channel caches and the cache's channel count otherwise (``plans["channel_norm"]``).
A cache with case-level classes
(``plans["case_classes"]``) adds ``case_label``: int64 scalar, the case's class index (-1 = unlabelled).

Reproducibility: ``EpochSampler`` yields ``(index, seed)`` keys whose seed depends only on the run seed,
the epoch and the position in the epoch, so augmentation is identical whatever the number of DataLoader
workers and after a resume (mid-epoch resumes skip the batches already seen without loading them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from organdetr.core.boxes.labels import boxes_from_seg
from organdetr.core.boxes.world import record_box_on_grid
from organdetr.data.augment import (
    AugmentConfig,
    AugmentParams,
    augment_pair,
    left_right_swap_table,
    sample_params,
    transform_boxes,
)
from organdetr.data.resynthesis import Resynthesis, resynthesize
from organdetr.data.splits import fold_cases
from organdetr.preprocessing.cache import list_cases, load_case
from organdetr.preprocessing.plans import (
    case_classes_from_plans,
    class_map_from_plans,
    load_plans,
    num_channels,
    regions_from_plans,
)
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

BOX_TARGETS: tuple[str, ...] = ("labels", "exact")


def region_table(classes: dict[int, str], regions: dict[str, tuple[int, ...]]) -> np.ndarray:
    """Membership ``[K + 1, R]`` bool: row ``c + 1`` (dense class ``c``; row 0 background) marks the
    regions that hold that class's label id. ``seg`` (dense class + 1) -> region masks is ``table[seg]``."""
    dense = {label_id: d + 1 for d, label_id in enumerate(sorted(classes))}
    table = np.zeros((len(classes) + 1, len(regions)), dtype=bool)
    for r, ids in enumerate(regions.values()):
        for label_id in ids:
            table[dense[label_id], r] = True
    return table


def dense_lut(classes: dict[int, str]) -> np.ndarray:
    """Lookup ``label id -> dense class + 1`` (0 = background); unknown ids map to -1."""
    lut = np.full(max(classes) + 1, -1, dtype=np.int64)
    lut[0] = 0
    for dense, label_id in enumerate(sorted(classes)):
        lut[label_id] = dense + 1
    return lut


def split_cases(
    case_ids: list[str],
    val_fraction: float,
    seed: int,
    train_cases: list[str] | None = None,
    val_cases: list[str] | None = None,
    cache_dir: str | Path | None = None,
    fold: int | None = None,
) -> tuple[list[str], list[str]]:
    """Train / validation case lists: a cross-validation ``fold`` of ``CACHE/splits_final.json``
    (:func:`~organdetr.data.splits.fold_cases`), else explicit lists, else a seeded random ``val_fraction``
    holdout."""
    if fold is not None:
        if train_cases is not None or val_cases is not None:
            raise InputError(cache_dir, "data.fold and data.train_cases / data.val_cases exclude each other")
        return fold_cases(cache_dir or ".", fold, case_ids)
    available = set(case_ids)
    for name, given in (("train_cases", train_cases), ("val_cases", val_cases)):
        missing = sorted(set(given or ()) - available)
        if missing:
            raise InputError(cache_dir, f"data.{name} names cases not in the cache: {', '.join(missing[:5])}")
    if val_cases is not None:
        train = (
            list(train_cases) if train_cases is not None else [c for c in case_ids if c not in set(val_cases)]
        )
        return train, list(val_cases)
    if train_cases is not None:
        return list(train_cases), [c for c in case_ids if c not in set(train_cases)]
    n_val = 0
    if val_fraction > 0 and len(case_ids) >= 2:
        n_val = max(1, round(val_fraction * len(case_ids)))
    order = np.random.default_rng(seed).permutation(len(case_ids))
    val = sorted(case_ids[i] for i in order[:n_val])
    return [c for c in case_ids if c not in set(val)], val


class CacheDataset(Dataset):
    """Cases of a preprocessed cache as model inputs and DETR targets.

    Args:
        cache_dir: the ``organdetr preprocess`` output folder (``plans.json``, ``cases/``).
        case_ids: which cases (default: every complete case).
        augment: on-the-fly augmentation (``None`` or ``enabled: false`` = none, e.g. for validation).
        box_targets: ``"labels"`` or ``"exact"`` (see the module docstring).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        case_ids: list[str] | None = None,
        augment: AugmentConfig | None = None,
        box_targets: str = "labels",
        synthesis: Resynthesis | None = None,
    ):
        if box_targets not in BOX_TARGETS:
            raise ValueError(f"box_targets must be one of {BOX_TARGETS}, got {brief(box_targets)}")
        self.box_targets = box_targets
        self.cache_dir = Path(cache_dir)
        self.plans = load_plans(self.cache_dir)
        self.classes = class_map_from_plans(self.plans, self.cache_dir / "plans.json")
        self.class_names = list(self.classes.values())
        self.input_size = tuple(int(s) for s in self.plans["input_size"])
        self.case_ids = list(list_cases(self.cache_dir) if case_ids is None else case_ids)
        self.in_channels = num_channels(self.plans)
        self.case_classes = case_classes_from_plans(self.plans)
        self.regions = regions_from_plans(self.plans)
        self.augment = augment if augment is not None and augment.enabled else None
        self._lut = dense_lut(self.classes)
        self._swap = left_right_swap_table(self.class_names)
        self._exact: dict[str, dict[int, np.ndarray]] = {}  # case id -> dense class -> grid box
        self.synthesis = synthesis
        if synthesis is not None and ("hu_window" not in self.plans or "channel_norm" in self.plans):
            raise InputError(
                self.cache_dir / "plans.json",
                "data.synthesis: appearance needs a single-channel cache normalised with an HU window",
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.case_ids)

    def record(self, index: int) -> dict:
        """The case record JSON of case ``index`` (geometry, original boxes)."""
        return load_case(self.cache_dir, self.case_ids[index], mmap=True)[2]

    def _dense_seg(self, label: np.ndarray, case_id: str) -> Tensor:
        label = np.asarray(label).astype(np.int64, copy=False)
        in_range = label.size == 0 or (int(label.min()) >= 0 and int(label.max()) < len(self._lut))
        seg = self._lut[np.clip(label, 0, len(self._lut) - 1)]
        if not in_range or (seg < 0).any():
            bad = np.unique(label[(label < 0) | (label >= len(self._lut))]).tolist()
            bad += np.unique(label[seg < 0]).tolist()
            raise InputError(
                self.cache_dir / "cases" / f"{case_id}_label.npy",
                f"label ids {sorted(set(bad))[:10]} are not in plans.json classes {sorted(self.classes)}",
            )
        return torch.from_numpy(seg)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        case_id = self.case_ids[index]
        image_np, label_np, record = load_case(self.cache_dir, case_id, mmap=True)
        expected = self.input_size if self.in_channels == 1 and image_np.ndim == 3 else None
        expected = expected or (self.in_channels, *self.input_size)
        if tuple(image_np.shape) != expected:
            raise InputError(
                self.cache_dir / "cases" / f"{case_id}_image.npy",
                f"shape {tuple(image_np.shape)} differs from plans.json ({expected}: channels, input_size)",
            )
        image = torch.from_numpy(np.array(image_np, dtype=np.float32))
        if not bool(torch.isfinite(image).all()):
            bad = int((~torch.isfinite(image)).sum())
            raise InputError(
                self.cache_dir / "cases" / record["image_file"],
                f"cached image holds {bad} NaN/inf values (corrupt cache; rerun organdetr preprocess)",
            )
        if label_np is None:
            raise InputError(self.cache_dir / "cases" / f"{case_id}.json", "case has no label array")
        seg = self._dense_seg(label_np, case_id)
        if self.synthesis is not None:
            image = self._resynthesised(image, seg, record, seed)
        params = AugmentParams()
        if self.augment is not None:
            rng = np.random.default_rng(seed if seed is not None else None)
            params = sample_params(self.augment, self.input_size, rng)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            image, seg = augment_pair(image, seg, params, self._swap, gen)
        labels, boxes = boxes_from_seg(seg, self.num_classes)
        if self.box_targets == "exact" and not any(params.angles_deg):
            boxes = self._exact_boxes(case_id, record, labels, boxes, params)
        target = {"labels": labels, "boxes": boxes, "seg": seg, "case_id": case_id, "index": index}
        if self.case_classes:
            target["case_label"] = torch.tensor(self.case_label_index(record, case_id), dtype=torch.int64)
        return (image[None] if image.ndim == 3 else image), target

    def _resynthesised(self, image: Tensor, seg: Tensor, record: dict, seed: int | None) -> Tensor:
        """``image`` replaced, with probability ``synthesis.probability``, by a new appearance of its labels
        (:mod:`organdetr.data.resynthesis`); its own random stream, so the augmentation's draws stay as they
        are without synthesis."""
        rng = np.random.default_rng(None if seed is None else [int(seed), 24])
        if rng.uniform() >= self.synthesis.probability:
            return image
        spacing = tuple(float(s) for s in record["grid"]["spacing"])
        window = tuple(float(v) for v in self.plans["hu_window"])
        new = resynthesize(
            image.numpy(), seg.numpy(), self.class_names, spacing, window, rng, self.synthesis.appearance
        )
        return torch.from_numpy(np.ascontiguousarray(new, dtype=np.float32))

    def median_box_sizes(self) -> Tensor:
        """Median normalised ``(i, j, k)`` box extent of each organ class over this dataset's cases
        (from the case records' grid boxes) -> ``[K', 3]`` for the ``K'`` classes that occur."""
        dense = {label_id: d for d, label_id in enumerate(sorted(self.classes))}
        size = np.asarray(self.input_size, dtype=np.float64)
        per_class: dict[int, list[np.ndarray]] = {}
        for index in range(len(self)):
            for entry in self.record(index).get("boxes", []):
                box = entry.get("box_voxel")
                if box is None or int(entry.get("label_id", -1)) not in dense:
                    continue
                box = np.asarray(box, dtype=np.float64)
                per_class.setdefault(dense[int(entry["label_id"])], []).append((box[3:] - box[:3]) / size)
        if not per_class:
            raise InputError(self.cache_dir, "no organ boxes in the case records to size anchors from")
        medians = [np.median(np.stack(per_class[c]), axis=0) for c in sorted(per_class)]
        return torch.as_tensor(np.stack(medians), dtype=torch.float32)

    def _grid_boxes(self, case_id: str, record: dict) -> dict[int, np.ndarray]:
        """Dense class -> the organ's continuous voxel box ``[6]`` on the cache grid, from the record's
        original-scan ``box_mm`` (computed once per case)."""
        if case_id not in self._exact:
            boxes: dict[int, np.ndarray] = {}
            dense = {label_id: d for d, label_id in enumerate(sorted(self.classes))}
            try:
                for entry in record.get("boxes", []):
                    box = record_box_on_grid(entry["box_mm"], record)
                    if box is not None and int(entry["label_id"]) in dense:
                        boxes[dense[int(entry["label_id"])]] = box
            except (KeyError, TypeError, ValueError):
                boxes = {}  # an older record without the original geometry: label boxes only
            self._exact[case_id] = boxes
        return self._exact[case_id]

    def _exact_boxes(
        self, case_id: str, record: dict, labels: Tensor, boxes: Tensor, params: AugmentParams
    ) -> Tensor:
        """``boxes [M, 6]`` (normalised cxcyczwhd) with every organ that has an original-scan box replaced by
        that box carried through ``params``; an organ without one (or moved off the grid) keeps its box."""
        known = self._grid_boxes(case_id, record)
        rows = [i for i, c in enumerate(labels.tolist()) if c in known]
        if not rows:
            return boxes
        moved = transform_boxes(np.stack([known[int(labels[i])] for i in rows]), params, self.input_size)
        size = np.asarray(self.input_size, dtype=np.float64)
        lo, hi = moved[:, :3] / size, moved[:, 3:] / size
        exact = torch.as_tensor(np.concatenate([(lo + hi) / 2, hi - lo], axis=1), dtype=torch.float32)
        keep = (exact[:, 3:] > 0).all(dim=1)
        out = boxes.clone()
        index = torch.as_tensor(rows, dtype=torch.int64)
        out[index[keep]] = exact[keep]
        return out

    def case_label_index(self, record: dict, case_id: str) -> int:
        """Class index of a case record's ``case_label`` (-1 when it has none)."""
        name = record.get("case_label")
        if name is None:
            return -1
        if name not in self.case_classes:
            raise InputError(
                self.cache_dir / "cases" / f"{case_id}.json",
                f"case_label {brief(name)} is not one of plans.json case_classes {self.case_classes}",
            )
        return self.case_classes.index(name)


class EpochSampler(Sampler):
    """Deterministic per-epoch shuffling, sharded over ``world_size`` ranks, resumable mid-epoch.

    Yields ``(dataset_index, augmentation_seed)``. Each epoch's order is a permutation seeded by
    ``(seed, epoch)``; it is padded by wrap-around to a multiple of ``world_size`` (as
    ``DistributedSampler``) and rank ``r`` takes positions ``r, r + W, ...``. ``skip`` drops the first
    ``skip`` samples of this rank (batches already trained before a resume).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        epoch: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
    ):
        self.num_samples, self.seed, self.epoch, self.shuffle = num_samples, seed, epoch, shuffle
        self.rank, self.world_size, self.skip = rank, world_size, skip

    @property
    def per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.per_rank * self.world_size
        padded = np.resize(order, total)  # wrap-around padding
        for position in range(self.rank + self.skip * self.world_size, total, self.world_size):
            seed = int(np.random.default_rng([self.seed, self.epoch, position]).integers(2**62))
            yield int(padded[position]), seed


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    """Stack images to ``[B, C, I, J, K]``; targets stay a list of dicts."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


__all__ = [
    "BOX_TARGETS",
    "CacheDataset",
    "EpochSampler",
    "collate",
    "dense_lut",
    "region_table",
    "split_cases",
]
