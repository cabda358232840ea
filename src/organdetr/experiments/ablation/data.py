"""The data of a suite run: the phantom set, its fixed train / val / test split and the perturbed test caches.

One synthetic phantom set (``organdetr.datasets.synthetic.phantom``, fixed seed) is preprocessed to
``size^3`` and split into train / validation / test cases; the robustness conditions (``PERTURBATIONS``:
+10 % zoom, +10 % translation on each axis) are copies of the test cases with image and labels transformed.
Their ground truth is each organ's exact box moved by the same transform (:func:`~organdetr.data.augment.
transform_boxes` of the original scan's box on the grid): zoom and shift move a box exactly, so the truth
stays as precise as the clean one's. (Until issue 20 the boxes were re-derived from the transformed label
voxels: whole voxels of the model grid, a coarser truth than the clean condition's, which penalised a model
trained on exact boxes under every perturbation.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from organdetr.core.boxes.world import grid_box_to_original, record_box_on_grid
from organdetr.data.augment import AugmentParams, augment_pair, transform_boxes
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


def _exact_truth(out: Path, case_ids: list[str]) -> bool:
    """Whether the perturbed cache ``out`` holds the exactly moved boxes (not an older label-derived copy)."""
    return all(load_case(out, c, mmap=True)[2].get("box_truth") == "moved exactly" for c in case_ids[:1])


def _moved_boxes(record: dict, new_label: np.ndarray, params: AugmentParams) -> list[dict]:
    """The case record's boxes moved exactly by ``params`` (organs whose voxels all left the grid dropped);
    ``box_voxel`` stays the transformed label's voxel box, ``box_mm`` / ``box_voxel_original`` are the
    moved exact box."""
    slices = ndimage.find_objects(new_label.astype(np.int32))
    size = tuple(int(s) for s in new_label.shape)
    boxes = []
    for box in record["boxes"]:
        lid = int(box["label_id"])
        sl = slices[lid - 1] if lid <= len(slices) else None
        on_grid = record_box_on_grid(box["box_mm"], record)
        if sl is None or on_grid is None:
            continue
        moved = transform_boxes(on_grid[None], params, size)[0]
        if np.any(moved[3:] - moved[:3] <= 0):
            continue
        box_original, box_mm = grid_box_to_original(moved, record)
        boxes.append(
            {
                **box,
                "box_voxel": [float(s.start) for s in sl] + [float(s.stop) for s in sl],
                "box_voxel_original": np.asarray(box_original).tolist(),
                "box_mm": np.asarray(box_mm).tolist(),
                "voxels": int((new_label[sl] == lid).sum()),
            }
        )
    return boxes

def write_perturbed_cache(cache: Path, out: Path, case_ids: list[str], kind: str) -> Path:
    """Copy ``case_ids`` of ``cache`` into ``out`` with image and labels transformed by ``kind``.

    Ground-truth boxes are the organs' exact boxes moved by the transform (module docstring), clipped to
    the grid (an organ pushed partly out of the grid gets a smaller box; one whose voxels all left the grid
    leaves the ground truth), and mapped to mm through the case record as the preprocessing does. Reused when
    complete (a folder written before the exact boxes is rewritten: its records lack ``"box_truth"``).
    """
    if (out / "plans.json").is_file() and list_cases(out) == sorted(case_ids) and _exact_truth(out, case_ids):
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
        boxes = _moved_boxes(record, new_label_np, params)
        new_record = {**record, "boxes": boxes, "perturbation": kind, "box_truth": "moved exactly"}
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
