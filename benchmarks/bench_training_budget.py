"""Held-out accuracy after a fixed number of optimizer steps, beside the image-blind priors.

The harness behind the design experiments of BENCHMARKS.md ("Issue 10"): the demo's phantoms (``--cases``
varied-field-of-view scans, data seed ``--seed``), preprocessed onto a ``--size``^3 grid with the HU window
``--hu``, split 80 / 20 by the same seed; the mean-box priors (mm and field-of-view) are scored on the
held-out scans, then every ``--run`` is trained for exactly ``--steps`` optimizer steps (batch ``--batch``)
and validated on the held-out scans ``--val-points`` times (COCO-style in mm, 1 detection per organ).

``--test-set N`` adds an independent test set: N more phantoms of data seed ``--test-seed`` (default 7, none
of them seen in training), preprocessed the same way, also zoomed x1.1 and shifted +10 % of the grid on every
axis (``organdetr.experiments.ablation.PERTURBATIONS``). The priors and every run's final weights are scored
on all
three. The demo holds out only 8 scans (80 organs): too few to tell a 15 % change from noise (BENCHMARKS.md).

Usage::

    .venv/bin/python benchmarks/bench_training_budget.py --out /tmp/budget --steps 600 --threads 1 \\
        --run demo --run "demo|model.encoder=fpn" --run "seg2box|seg2box.features=[8, 8, 16, 32, 64, 8]"

A run is ``PRESET`` or ``PRESET|KEY=VALUE|KEY=VALUE...``. Every run gets the demo's optimiser (lr 1e-3,
grad clip 1.0, 50 warm-up steps) unless its overrides say otherwise. Prints one JSON line for the priors and
one per run; the validation curve of each run is in ``OUT/runs/<name>/val_log.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from organdetr.datasets.synthetic.phantom import write_synthetic_dataset
from organdetr.experiments.ablation.data import write_perturbed_caches
from organdetr.experiments.ablation.scoring import prior_metrics, robustness_scores
from organdetr.preprocessing.cache import list_cases
from organdetr.preprocessing.plans import PreprocessConfig
from organdetr.preprocessing.run import preprocess_dataset
from organdetr.training.checkpoint import load_detector
from organdetr.training.config import load_config
from organdetr.training.fit import fit

METRICS = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50")


def _phantom_cache(
    raw: Path,
    cache: Path,
    cases: int,
    size: int,
    hu: tuple[float, float],
    seed: int,
    spacing: tuple[float, float, float] | None = None,
) -> list:
    """``cases`` phantoms of data seed ``seed`` in ``raw``, preprocessed into ``cache`` (both reused when
    complete); returns the cache's case ids."""
    if not (raw / "dataset.json").is_file():
        write_synthetic_dataset(raw, cases, seed=seed, workers=1)
    if len(list_cases(cache)) < cases:
        fit = {"fit": "pad", "target_spacing": tuple(spacing)} if spacing else {"fit": "resize"}
        pre = PreprocessConfig(input_size=(size,) * 3, hu_window=hu, **fit)
        preprocess_dataset(raw, cache, pre, workers=1, progress=False)
    return sorted(list_cases(cache))


def _grid_name(size: int, hu: tuple[float, float], spacing: tuple[float, float, float] | None) -> str:
    """``64_hu-200_300`` (whole scan resized onto the grid) or ``64_hu-200_300_pad6x6x8`` (fixed spacing)."""
    pad = "_pad" + "x".join(f"{s:g}" for s in spacing) if spacing else ""
    return f"{size}_hu{hu[0]:g}_{hu[1]:g}{pad}"


def prepare(
    out: Path, cases: int, size: int, hu: tuple[float, float], seed: int, spacing=None
) -> tuple[Path, list, list]:
    """Phantoms + cache (reused when complete) and the seeded 80 / 20 split (train ids, held-out ids).
    ``spacing`` (mm, i / j / k): a fixed-spacing cache (``fit="pad"``) instead of the resized whole scan."""
    cache = out / f"cache{_grid_name(size, hu, spacing)}"
    ids = _phantom_cache(out / "raw", cache, cases, size, hu, seed, spacing)
    order = np.random.default_rng(seed).permutation(len(ids))
    test = sorted(ids[i] for i in order[: round(0.2 * len(ids))])
    return cache, [c for c in ids if c not in test], test


def prepare_test_set(
    out: Path, cases: int, size: int, hu: tuple[float, float], seed: int, spacing=None
) -> dict[str, Path]:
    """``cases`` phantoms of data seed ``seed``, same grid: ``{"clean": cache, <perturbation>: cache}``."""
    cache = out / f"test_cache{_grid_name(size, hu, spacing)}_seed{seed}"
    ids = _phantom_cache(out / f"test_raw_seed{seed}", cache, cases, size, hu, seed, spacing)
    return write_perturbed_caches(cache, cache.parent, ids, prefix=f"{cache.name}_")


def score_priors(cache: Path, train: list, test: list, test_set: dict[str, Path] | None = None) -> dict:
    """Held-out metrics of the mean training box per organ (kinds ``mm`` and ``fov``), on the held-out split
    and, with ``test_set``, on each condition of the independent test set (``"test:clean"`` ...)."""
    scores = {kind: prior_metrics(kind, cache, train, cache, test) for kind in ("mm", "fov")}
    out = {kind: {k: round(m[k], 3) for k in METRICS} for kind, m in scores.items()}
    for condition, folder in (test_set or {}).items():
        ids = list_cases(folder)
        for kind in ("mm", "fov"):
            m = prior_metrics(kind, cache, train, folder, ids)
            out[f"{kind} test:{condition}"] = {k: round(m[k], 3) for k in METRICS}
    return out


def run_dir_for(spec: str, out: Path, train_seed: int) -> Path:
    """``OUT/runs/<name>`` of a run spec (``_seed<n>`` appended for train seeds other than 0)."""
    preset, *overrides = spec.split("|")
    name = "_".join([preset] + [o.replace(" ", "").replace("/", "-") for o in overrides])[:120]
    return out / "runs" / (name if train_seed == 0 else f"{name}_seed{train_seed}")


def val_curve(run_dir: Path) -> list[dict]:
    """The run's held-out validation rows: ``[{"step", "mAP", ...}]`` (none before its first validation)."""
    if not (run_dir / "val_log.csv").is_file():
        return []
    with open(run_dir / "val_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"step": int(float(r["step"])), **{k: round(float(r[k]), 3) for k in METRICS}} for r in rows]


def train_run(
    spec: str, out: Path, cache: Path, train: list, test: list, args, test_set: dict[str, Path] | None = None,
    stop_at_step: int | None = None, resume: bool = False,
) -> dict:
    """Train ``PRESET|overrides`` for ``args.steps`` steps; returns the held-out validation curve.

    ``stop_at_step``: train only up to that step (the schedule still spans ``args.steps``) and save ``last/``;
    a later call with ``resume`` continues exactly from there. ``wall_s`` / ``cpu_s`` are this call's."""
    preset, *overrides = spec.split("|")
    epochs_per_val = max(1, args.steps // (args.val_points * max(1, len(train) // args.batch)))
    cfg = load_config(
        preset,
        [
            f"data.cache_dir={cache}",
            f"data.batch_size={args.batch}",
            "data.num_workers=0",
            f"train.steps={args.steps}",
            "train.device=cpu",
            "train.progress=false",
            "train.log_every=20",
            f"train.val_every={epochs_per_val}",
            f"train.checkpoint_every={10**6}",
            f"train.seed={args.train_seed}",
            "optim.lr=1e-3",
            "optim.grad_clip=1.0",
            "optim.warmup_steps=50",
            *overrides,
        ],
    )
    cfg.data.train_cases, cfg.data.val_cases = train, test
    run_dir = run_dir_for(spec, out, args.train_seed)
    start, cpu = time.perf_counter(), time.process_time()
    fit(cfg, run_dir, resume=resume, stop_at_step=stop_at_step)
    result = {
        "run": spec,
        "train_seed": args.train_seed,
        "steps": args.steps if stop_at_step is None else min(stop_at_step, args.steps),
        "threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - start),
        "cpu_s": round(time.process_time() - cpu),
        "val": val_curve(run_dir),
    }
    if test_set:
        detector, _, _ = load_detector(run_dir / "last", torch.device("cpu"))
        ids = list_cases(test_set["clean"])
        result["test_set"] = robustness_scores(detector, test_set, ids, torch.device("cpu"), METRICS)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--run", action="append", default=[], help="PRESET or PRESET|KEY=VALUE|... (repeatable)"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--hu", type=float, nargs=2, default=(-200.0, 300.0))
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=None, help="fixed spacing in mm (fit=pad; default: resize)"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom data and split seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--val-points", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-set", type=int, default=0, help="size of an independent test set (0: none)")
    parser.add_argument("--test-seed", type=int, default=7, help="its phantom data seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spacing = tuple(args.spacing) if args.spacing else None
    cache, train, test = prepare(args.out, args.cases, args.size, tuple(args.hu), args.seed, spacing)
    test_set = (
        prepare_test_set(args.out, args.test_set, args.size, tuple(args.hu), args.test_seed, spacing)
        if args.test_set
        else None
    )
    priors = score_priors(cache, train, test, test_set)
    print(json.dumps({"priors": priors, "train": len(train), "test": len(test)}), flush=True)
    for spec in args.run:
        print(json.dumps(train_run(spec, args.out, cache, train, test, args, test_set)), flush=True)


if __name__ == "__main__":
    main()
