"""The data of a suite run: the phantom set, its fixed train / val / test split and the perturbed test caches.

One synthetic phantom set (``organdetr.datasets.synthetic.phantom``, fixed seed) is preprocessed to
``size^3`` and split into train / validation / test cases; the robustness conditions (``PERTURBATIONS``:
+10 % zoom, +10 % translation on each axis) are copies of the test cases with image and labels transformed
and the boxes re-derived from the transformed labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from organdetr.core.boxes.world import grid_box_to_original
from organdetr.data.augment import AugmentParams, augment_pair
from organdetr.datasets.synthetic.phantom import PhantomConfig, write_synthetic_dataset
from organdetr.experiments.ablation.suite import BenchmarkConfig
from organdetr.preprocessing.cache import list_cases, load_case, write_case
from organdetr.preprocessing.plans import PreprocessConfig, load_plans
from organdetr.preprocessing.run import preprocess_dataset
from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError

PERTURBATIONS: dict[str, dict] = {"zoom+10%": {"zoom": 1.1}, "shift+10%": {"shift_fraction": 0.1}}


def split_case_ids(case_ids: list[str], cfg: BenchmarkConfig) -> dict[str, list[str]]:
    """Fixed train / val / test split of the (sorted) phantom cases; each part gets at least one case."""
    n = len(case_ids)
    n_test = max(1, round(cfg.test_fraction * n))
    n_val = max(1, round(cfg.val_fraction * n))
    if n - n_test - n_val < 1:
        raise InputError(None, f"{n} cases cannot make train, validation and test sets; use --cases >= 3")
    order = np.random.default_rng(cfg.data_seed).permutation(n)
    ids = [case_ids[i] for i in order]
    return {
        "test": sorted(ids[:n_test]),
        "val": sorted(ids[n_test : n_test + n_val]),
        "train": sorted(ids[n_test + n_val :]),
    }


def prepare_data(out_dir: Path, cfg: BenchmarkConfig) -> tuple[Path, dict[str, list[str]]]:
    """Synthesise the phantom set and preprocess it to ``size^3`` (reused when already there)."""
    raw, cache = out_dir / "data" / "raw", out_dir / "data" / "cache"
    expected = (cfg.size,) * 3
    ready = (cache / "plans.json").is_file() and len(list_cases(cache)) == cfg.cases
    if ready and tuple(load_plans(cache)["input_size"]) != expected:
        raise InputError(cache, f"holds a {load_plans(cache)['input_size']} cache; this run wants {expected}")
    if not ready:
        # the default (varied field of view) phantom, rendered at about the model's in-plane resolution
        phantom = PhantomConfig(size=expected)
        if not (raw / "dataset.json").is_file():
            write_synthetic_dataset(raw, cfg.cases, seed=cfg.data_seed, cfg=phantom, workers=cfg.workers)
        summary = preprocess_dataset(
            raw,
            cache,
            PreprocessConfig(input_size=expected, fit="resize", hu_window=cfg.hu_window),
            workers=cfg.workers,
            progress=False,
        )
        if summary.failed:
            case, message = summary.failed[0]
            raise InputError(
                raw, f"preprocessing failed for {len(summary.failed)} case(s), first {case}: {message}"
            )
    case_ids = list_cases(cache)
    if len(case_ids) != cfg.cases:
        raise InputError(cache, f"has {len(case_ids)} cases, expected {cfg.cases}; use a fresh --output")
    return cache, split_case_ids(case_ids, cfg)


def perturb_params(kind: str, size: tuple[int, int, int]) -> AugmentParams:
    """The fixed ``AugmentParams`` of a robustness perturbation (``PERTURBATIONS`` key)."""
    spec = PERTURBATIONS[kind]
    shift = tuple(spec.get("shift_fraction", 0.0) * s for s in size)
    return AugmentParams(zoom=spec.get("zoom", 1.0), shift=shift)


def _rederived_boxes(record: dict, new_label: np.ndarray) -> list[dict]:
    """The case record's boxes recomputed from the transformed label map (an organ gone: no box)."""
    slices = ndimage.find_objects(new_label.astype(np.int32))
    boxes = []
    for box in record["boxes"]:
        lid = int(box["label_id"])
        sl = slices[lid - 1] if lid <= len(slices) else None
        if sl is None:
            continue
        box_voxel = np.array([s.start for s in sl] + [s.stop for s in sl], dtype=np.float64)
        box_original, box_mm = grid_box_to_original(box_voxel, record)
        voxels = int((new_label[sl] == lid).sum())
        boxes.append(
            {
                **box,
                "box_voxel": box_voxel.tolist(),
                "box_voxel_original": np.asarray(box_original).tolist(),
                "box_mm": np.asarray(box_mm).tolist(),
                "voxels": voxels,
            }
        )
    return boxes


def write_perturbed_cache(cache: Path, out: Path, case_ids: list[str], kind: str) -> Path:
    """Copy ``case_ids`` of ``cache`` into ``out`` with image and labels transformed by ``kind``.

    Ground-truth boxes are recomputed from the transformed labels (an organ pushed partly out of the grid
    gets a smaller box; one pushed out entirely leaves the ground truth) and mapped to mm through the case
    record as the preprocessing does. Reused when complete.
    """
    if (out / "plans.json").is_file() and list_cases(out) == sorted(case_ids):
        return out
    plans = load_plans(cache)
    for case_id in case_ids:
        image, label, record = load_case(cache, case_id, mmap=False)
        params = perturb_params(kind, tuple(image.shape))
        new_image, new_label = augment_pair(
            torch.from_numpy(np.asarray(image, dtype=np.float32)),
            torch.from_numpy(np.asarray(label).astype(np.int64)),
            params,
        )
        new_label_np = new_label.numpy().astype(label.dtype)
        boxes = _rederived_boxes(record, new_label_np)
        new_record = {**record, "boxes": boxes, "perturbation": kind}
        write_case(out, case_id, new_image.numpy().astype(image.dtype), new_label_np, new_record)
    atomic.write_json(out / "plans.json", plans)
    return out


def _slug(kind: str) -> str:
    return kind.replace("+", "_plus_").replace("%", "pct")


def write_perturbed_caches(
    cache: Path, parent: Path, case_ids: list[str], prefix: str = ""
) -> dict[str, Path]:
    """``{"clean": cache, kind: parent / (prefix + slug)}``: every ``PERTURBATIONS`` kind written (or
    reused) for ``case_ids`` by :func:`write_perturbed_cache`."""
    folders = {"clean": cache}
    for kind in PERTURBATIONS:
        folders[kind] = write_perturbed_cache(cache, parent / f"{prefix}{_slug(kind)}", case_ids, kind)
    return folders


__all__ = [
    "PERTURBATIONS",
    "perturb_params",
    "prepare_data",
    "split_case_ids",
    "write_perturbed_cache",
    "write_perturbed_caches",
]
