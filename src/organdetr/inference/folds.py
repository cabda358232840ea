"""The runs of a cross-validation and their out-of-fold predictions.

A cross-validation folder ``RUNS/`` holds one run folder per fold, trained with ``organdetr train CONFIG
--cache CACHE --fold k -o RUNS/fold_k`` (any folder names: the fold is read from each run's
``config.yaml``, ``data.fold``). :func:`fold_runs` finds them; ``organdetr predict --folds RUNS`` ensembles
them on new scans (:class:`~organdetr.inference.ensemble.EnsemblePredictor`), and
:func:`predict_out_of_fold` predicts every case of the cache with the one model that did not train on it
(fold k's model on fold k's ``val`` cases, as nnU-Net's per-fold validation), so that ``organdetr evaluate
OOF CACHE`` scores the pooled out-of-fold predictions: each case exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from organdetr.data.splits import SPLITS_FILE, check_out_of_fold, read_splits
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.workers import BatchSummary
from organdetr.training.checkpoint import CHECKPOINT_NAMES, CONFIG_FILE
from organdetr.training.config import load_config


@dataclass(frozen=True)
class FoldRun:
    """One fold's run folder, the fold it trained and the cache it trained on."""

    fold: int
    run: Path
    cache_dir: Path


def _run_config(folder: Path) -> Path | None:
    """A run folder's ``config.yaml`` (the run's own, else its checkpoints'), ``None`` if it has none."""
    for place in (folder, *(folder / name for name in CHECKPOINT_NAMES)):
        if (place / CONFIG_FILE).is_file():
            return place / CONFIG_FILE
    return None


def fold_runs(runs_dir: str | Path) -> list[FoldRun]:
    """The fold runs directly inside ``runs_dir`` (those whose ``config.yaml`` has ``data.fold``), sorted by
    fold; InputError when there are none, two runs of one fold, or runs of different caches."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise InputError(runs_dir, "no such folder of cross-validation runs")
    found: dict[int, FoldRun] = {}
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        config = _run_config(folder)
        data = load_config(config).data if config is not None else None
        if data is None or data.fold is None:
            continue
        if data.fold in found:
            raise InputError(folder, f"a second run of fold {data.fold} (the first: {found[data.fold].run})")
        found[data.fold] = FoldRun(data.fold, folder, Path(data.cache_dir))
    if not found:
        raise InputError(runs_dir, "no fold runs here (run folders trained with `organdetr train --fold k`)")
    runs = [found[k] for k in sorted(found)]
    caches = {run.cache_dir.resolve() for run in runs}
    if len(caches) > 1:
        raise InputError(runs_dir, f"the fold runs trained on {len(caches)} different caches; give one CV")
    return runs


def _case_scan(cache_dir: Path, case_id: str) -> ScanInput:
    """The original scan of a cache case (its record's ``image`` / ``images``)."""
    path = cache_dir / "cases" / f"{case_id}.json"
    record = read_json(path, "unreadable case record", not_object="not a case record")
    if not isinstance(record.get("image"), str):
        raise InputError(path, "the case record names no original 'image' to predict")
    channels = tuple(Path(p) for p in record.get("images") or ())
    return ScanInput(Path(record["image"]), case_id, channels if len(channels) > 1 else ())


def out_of_fold_scans(runs: list[FoldRun]) -> list[tuple[FoldRun, list[ScanInput]]]:
    """Per fold run, the original scans of its fold's ``val`` cases; InputError when the cache's splits do
    not validate every case exactly once or a fold has no run (its cases would go unpredicted)."""
    cache_dir = runs[0].cache_dir
    if not cache_dir.is_dir():
        raise InputError(
            runs[0].run, f"its cache {cache_dir} is not here (a relative path: run from where it trained)"
        )
    splits_path = cache_dir / SPLITS_FILE
    splits = read_splits(splits_path)
    check_out_of_fold(splits, splits_path)
    by_fold = {run.fold: run for run in runs}
    missing = [k for k in range(len(splits)) if k not in by_fold]
    if missing:
        raise InputError(
            runs[0].run.parent, f"no run of fold(s) {', '.join(map(str, missing))} of {len(splits)}: "
            "their validation cases would have no out-of-fold prediction",
        )  # fmt: skip
    extra = [run for run in runs if run.fold >= len(splits)]
    if extra:
        raise InputError(extra[0].run, f"fold {extra[0].fold} is not in {splits_path} ({len(splits)} folds)")
    return [(by_fold[k], [_case_scan(cache_dir, c) for c in fold["val"]]) for k, fold in enumerate(splits)]


def predict_out_of_fold(
    plan: list[tuple[FoldRun, list[ScanInput]]],
    load: Callable[[FoldRun], Predictor],
    predict: Callable[[Predictor, list[ScanInput]], BatchSummary],
) -> BatchSummary:
    """Each fold's model (``load``) predicts its own validation scans (``predict``, e.g.
    :func:`~organdetr.inference.predict.predict_scans` into one folder); the summaries pooled."""
    pooled = BatchSummary()
    for run, scans in plan:
        summary = predict(load(run), scans)
        pooled.done += summary.done
        pooled.failed += summary.failed
    return pooled


__all__ = ["FoldRun", "fold_runs", "out_of_fold_scans", "predict_out_of_fold"]
