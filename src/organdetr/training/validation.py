"""Validation during training: ``evaluate`` (detect on cached cases, score in mm), the best-metric choice
and the metrics' part of the epoch line."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from organdetr.core.boxes.world import grid_box_to_original
from organdetr.data.cache_dataset import CacheDataset
from organdetr.evaluation import Detection, GroundTruth, evaluate_detections
from organdetr.evaluation.classification import evaluate_classification
from organdetr.evaluation.presence import presence_threshold
from organdetr.evaluation.segmentation import dice_score
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief
from organdetr.training import distributed
from organdetr.training.config import TrainConfig
from organdetr.training.distributed import DistInfo
from organdetr.training.loaders import val_loader


@torch.no_grad()
def evaluate(
    detector: nn.Module,
    loader: Iterable,
    dataset: CacheDataset,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    max_detections: int = 1,
    progress: bool = False,
    mode: str = "coco",
) -> dict[str, float]:
    """Detect on the validation cases and score them in mm (COCO-style, ``evaluate_detections``; ``mode``
    ``"monai"`` reproduces MONAI's ``COCOMetric`` numbers).

    Detections (voxel boxes on the cache grid) are mapped to LPS mm with
    ``geometry.grid_box_to_original`` and compared with the cached ground-truth ``box_mm``. Under DDP every
    rank detects its shard and all ranks return the same summary (``mAP``, ``AP50``, ``AP75``, ``mAR``...).

    A multi-task detector (one with ``tasks`` and ``infer``, e.g. MTMed3D) is also scored on what else it
    was trained for, from the same forward pass: ``Dice`` (mean over the classes in each case's labels or
    prediction, cache grid) for ``seg`` and ``cls_accuracy`` / ``cls_balanced_accuracy`` / ``cls_AUC`` for
    ``cls`` (:mod:`organdetr.evaluation.classification`). ``presence_threshold`` / ``presence_F1`` / ...:
    the score threshold of best organ-presence F1 over these cases (:mod:`organdetr.evaluation.presence`).
    """
    was_training = detector.training
    detector.eval()
    per_case: list[tuple[str, list[Detection]]] = []
    tasks = tuple(getattr(detector, "tasks", ()))
    extra: list[tuple[str, dict]] = []  # per case: dice / case probabilities of multi-task detectors
    main = distributed.current().is_main
    for images, targets in tqdm(loader, desc="validate", disable=not (progress and main), leave=False):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = (
                detector.infer(images.to(device))
                if tasks
                else {"detections": detector.detect(images.to(device))}
            )
        for b, target in enumerate(targets):
            if tasks:
                extra.append((target["case_id"], _task_scores(outputs, b, target, dataset.num_classes)))
        for result, target in zip(outputs["detections"], targets, strict=True):
            per_case.append((target["case_id"], _case_detections(result, target, dataset)))
    # the sharded sampler pads by repeating cases: keep each case once
    unique = dict(reversed(distributed.all_gather_list(per_case)))
    detections = [d for case in unique.values() for d in case]
    truths = _ground_truth(dataset)
    result = evaluate_detections(
        detections, truths, dataset.class_names, max_detections=max_detections, mode=mode
    )
    detector.train(was_training)
    summary = {
        k: float(v) for k, v in result.summary.items() if isinstance(v, int | float) and math.isfinite(v)
    }
    presence = presence_threshold(detections, truths, list(unique), dataset.class_names)
    if presence is not None:  # the score threshold predict uses by default (evaluation.presence)
        summary.update(presence.to_metrics())
    if extra:
        summary.update(_task_summary(dict(reversed(distributed.all_gather_list(extra))), dataset))
    return summary


@torch.no_grad()
def per_class_metrics(detector: nn.Module, dataset: CacheDataset, device: torch.device) -> dict[str, dict]:
    """Per-organ COCO-style metrics (``AP``, ``AP50``, ``AP75``, ...; one detection per organ, mm) of a
    box detector on every case of ``dataset``, one scan at a time (what the per-organ tables report)."""
    was_training = detector.training
    detector.eval()
    detections: list[Detection] = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        result = detector.detect(image[None].to(device))[0]
        detections.extend(_case_detections(result, target, dataset))
    detector.train(was_training)
    result = evaluate_detections(detections, _ground_truth(dataset), dataset.class_names, max_detections=1)
    return result.per_class


def _case_detections(result: dict, target: dict, dataset: CacheDataset) -> list[Detection]:
    """One case's detections (voxel boxes on the cache grid) as :class:`Detection` s in LPS mm."""
    record = dataset.record(target["index"])
    boxes = result["boxes"].float().cpu().numpy().reshape(-1, 6)
    boxes_mm = grid_box_to_original(boxes, record)[1] if len(boxes) else boxes
    return [
        Detection(
            target["case_id"], dataset.class_names[label], float(score), np.asarray(box_mm, dtype=np.float64)
        )
        for label, score, box_mm in zip(
            result["labels"].tolist(), result["scores"].tolist(), boxes_mm, strict=True
        )
    ]


def _ground_truth(dataset: CacheDataset) -> list[GroundTruth]:
    """Every cached organ box (``box_mm``) of the dataset's cases."""
    return [
        GroundTruth(dataset.case_ids[i], box["name"], np.asarray(box["box_mm"], dtype=np.float64))
        for i in range(len(dataset))
        for box in dataset.record(i)["boxes"]
    ]


def _task_scores(outputs: dict, b: int, target: dict, num_classes: int) -> dict:
    """Dice per class present (seg) and case probabilities (cls) of image ``b`` of a batch."""
    scores: dict = {}
    if "seg" in outputs:
        pred, truth = outputs["seg"][b].cpu(), target["seg"].cpu()
        dice = [dice_score((pred == c).numpy(), (truth == c).numpy()) for c in range(1, num_classes + 1)]
        dice = [d for d in dice if not math.isnan(d)]  # classes in neither map are not scored
        scores["dice"] = float(np.mean(dice)) if dice else math.nan
    if "case_probs" in outputs:
        scores["case_probs"] = outputs["case_probs"][b].float().cpu().tolist()
        scores["case_label"] = int(target.get("case_label", torch.tensor(-1)))
    return scores


def _task_summary(per_case: dict[str, dict], dataset: CacheDataset) -> dict[str, float]:
    """Mean Dice over cases and the classification metrics of :func:`evaluate`'s multi-task outputs."""
    out: dict[str, float] = {}
    dice = [s["dice"] for s in per_case.values() if math.isfinite(s.get("dice", math.nan))]
    if dice:
        out["Dice"] = float(np.mean(dice))
    labelled = {c: s for c, s in per_case.items() if "case_probs" in s and s["case_label"] >= 0}
    if labelled and dataset.case_classes:
        names = dataset.case_classes
        truth = {c: names[s["case_label"]] for c, s in labelled.items()}
        probs = {c: dict(zip(names, s["case_probs"], strict=True)) for c, s in labelled.items()}
        cls = evaluate_classification(truth, probs, names).summary()
        out.update({k: v for k, v in cls.items() if math.isfinite(v)})
    return out


def validate(
    cfg: TrainConfig,
    val_ds: CacheDataset,
    model: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist_info: DistInfo,
) -> dict[str, float]:
    """:func:`evaluate` ``model`` on the run's validation cases (``train.max_detections``)."""
    return evaluate(
        model,
        val_loader(val_ds, cfg, dist_info, device),
        val_ds,
        device,
        amp_dtype=amp_dtype,
        max_detections=cfg.train.max_detections,
        progress=cfg.train.progress,
    )


def best_metric_value(metrics: dict[str, float], name: str, cache_dir: Path) -> float | None:
    """``metrics[name]``; InputError naming the choices when validation does not produce it."""
    if not metrics or name in metrics:
        return metrics.get(name)
    if name == "mAP":  # the default: an architecture without boxes simply never saves best/
        return None
    raise InputError(
        cache_dir,
        f"train.best_metric={brief(name)} is not a validation metric here; choose one of {sorted(metrics)}",
    )


def metrics_summary(metrics: dict[str, float]) -> str:
    """The validation part of the epoch line (empty without metrics): mAP, AP50 and the task scores."""
    if not metrics:
        return ""
    text = f"  val mAP {metrics.get('mAP', float('nan')):.3f} "
    text += f"AP50 {metrics.get('AP50', float('nan')):.3f}"
    for key in ("Dice", "cls_accuracy", "cls_AUC"):
        if key in metrics:
            text += f" {key} {metrics[key]:.3f}"
    return text


__all__ = ["best_metric_value", "evaluate", "metrics_summary", "per_class_metrics", "validate"]
