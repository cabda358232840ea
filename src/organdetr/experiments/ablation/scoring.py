"""Scores on a cache: COCO-style box metrics of a detector or an image-blind prior, Dice / NSD / HD95 of a
segmenting detector, and the robustness table over the perturbed test caches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from organdetr.data.cache_dataset import CacheDataset, collate
from organdetr.evaluation import GroundTruth, evaluate_detections
from organdetr.evaluation.segmentation import evaluate_segmentation
from organdetr.experiments.ablation.data import PERTURBATIONS
from organdetr.models.baselines.prior import fit_box_prior, prior_detections
from organdetr.preprocessing.cache import load_case
from organdetr.preprocessing.plans import class_map_from_plans, load_plans
from organdetr.training.validation import evaluate


def evaluate_on(detector, cache: Path, case_ids: list[str], device: torch.device) -> dict[str, float]:
    """COCO-style metrics (``training.validation.evaluate``, 1 detection per class) of ``detector``."""
    dataset = CacheDataset(cache, case_ids, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate)
    return evaluate(detector, loader, dataset, device, max_detections=1)


def segmentation_metrics_on(
    detector, cache: Path, case_ids: list[str], device: torch.device, nsd_tolerance_mm: float | None = None
) -> dict[str, float]:
    """Mean Dice, NSD and HD95 (mm) of a segmenting detector's label maps against the cached labels, on the
    cache grid (its spacing); ``nsd_tolerance_mm`` ``None``: the grid's largest voxel spacing."""
    classes = class_map_from_plans(load_plans(cache), cache / "plans.json")
    lut = np.asarray([0, *classes], dtype=np.int64)  # dense class + 1 -> label id
    preds, gts, spacings = [], [], []
    for case_id in case_ids:
        image, label, record = load_case(cache, case_id, mmap=False)
        batch = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None].to(device)
        with torch.no_grad():
            preds.append(lut[detector.segment(batch)[0].cpu().numpy()])
        gts.append(np.asarray(label).astype(np.int64))
        spacings.append(record["grid"]["spacing"])
    tolerance = nsd_tolerance_mm if nsd_tolerance_mm is not None else float(np.max(spacings))
    result = evaluate_segmentation(preds, gts, classes, np.asarray(spacings), tolerance)
    return {**result.summary, "nsd_tolerance_mm": tolerance}


def prior_metrics(
    kind: str, train_cache: Path, train_ids: list[str], test_cache: Path, test_ids: list[str]
) -> dict:
    """COCO-style metrics (max 1 detection per class, mm) of the image-blind prior ``kind`` fitted on the
    training cases of ``train_cache`` and scored on the test cases of ``test_cache``."""
    prior = fit_box_prior(load_case(train_cache, c, mmap=True)[2] for c in train_ids)
    records = [load_case(test_cache, c, mmap=True)[2] for c in test_ids]
    names = list(load_plans(test_cache)["classes"].values())
    truth = [
        GroundTruth(r["case_id"], b["name"], np.asarray(b["box_mm"])) for r in records for b in r["boxes"]
    ]
    result = evaluate_detections(prior_detections(prior, records, kind), truth, names, max_detections=1)
    return {k: float(v) for k, v in result.summary.items() if isinstance(v, int | float) and math.isfinite(v)}


def robustness_scores(
    detector, folders: dict[str, Path], case_ids: list[str], device: torch.device, keys: tuple[str, ...]
) -> dict:
    """``{"metrics": {condition: {key: value}}, "mAP_change": {kind: relative change}}`` of ``detector`` on
    ``case_ids`` of every folder of :func:`~organdetr.experiments.ablation.data.write_perturbed_caches`
    (values rounded to 3 decimals; the change is ``None`` when the clean mAP is 0)."""
    table = {}
    for condition, folder in folders.items():
        m = evaluate_on(detector, folder, case_ids, device)
        table[condition] = {k: round(float(m[k]), 3) for k in keys}
    clean = table["clean"]["mAP"]
    change = {k: round(table[k]["mAP"] / clean - 1, 3) if clean > 0 else None for k in PERTURBATIONS}
    return {"metrics": table, "mAP_change": change}


__all__ = ["evaluate_on", "prior_metrics", "robustness_scores", "segmentation_metrics_on"]
