"""The runs of a suite: train, score and profile every (variant, seed), and ``run_suite`` that does it all.

``run_suite``, on one synthetic phantom set (``organdetr.datasets.synthetic.phantom``, fixed seed, split
into train / validation / test cases, :mod:`organdetr.experiments.ablation.data`):

1. trains every variant for every seed with the same budget (``iterations`` optimizer steps), through the
   same engine as ``organdetr train`` (``training.fit.fit``), validating along the way (convergence curve);
2. evaluates the final weights on the test cases with ``training.validation.evaluate`` (COCO-style, boxes in
   mm, max 1 detection per class) - clean, at +10 % zoom and at +10 % translation (each axis) of the test
   scans (boxes re-derived from the transformed labels); segmenting variants (``seg2box``, ``maskmed``:
   detectors with ``segment``) are also scored on their label maps (Dice, NSD, HD95 in mm on the cache
   grid, ``evaluation.segmentation``; NSD tolerance ``nsd_tolerance_mm``, default one voxel);
3. profiles the first seed's detectors: parameters, FLOPs (``FlopCounterMode``, see
   ``organdetr.experiments.profiling``), peak memory and latency per scan, all timed interleaved in this
   process;
4. writes ``table.md``, ``results.json``, ``convergence.png`` and one run folder per (variant, seed)
   (:mod:`organdetr.experiments.ablation.report`).

Runs already finished in the output folder are reused (a rerun after an interruption only trains what
is missing); a run cut off midway resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from organdetr.experiments.ablation.data import prepare_data, write_perturbed_caches
from organdetr.experiments.ablation.report import machine_description, write_reports
from organdetr.experiments.ablation.scoring import evaluate_on, prior_metrics, segmentation_metrics_on
from organdetr.experiments.ablation.suite import (
    METRICS,
    SEG_METRICS,
    BenchmarkConfig,
    Suite,
    Variant,
    load_suite,
)
from organdetr.experiments.profiling import COUNTED_OPS, measure_latency, profile_detector
from organdetr.training.checkpoint import load_detector, read_state
from organdetr.training.config import apply_overrides, config_from_dict, read_config_dict
from organdetr.training.fit import fit


def build_train_config(
    suite: Suite, variant: Variant, seed: int, cache: Path, split: dict[str, list[str]], cfg: BenchmarkConfig
):
    """The ``TrainConfig`` of one (variant, seed) run: suite base + overrides + the runner's budget."""
    data, path = read_config_dict(suite.base)
    data = apply_overrides(
        data, [*suite.overrides, *variant.overrides, *cfg.extra_overrides], path=suite.path
    )
    steps_per_epoch = math.ceil(len(split["train"]) / cfg.batch_size)
    epochs = math.ceil(cfg.iterations / steps_per_epoch)
    data.setdefault("data", {}).update(
        cache_dir=str(cache),
        train_cases=split["train"],
        val_cases=split["val"],
        batch_size=cfg.batch_size,
        num_workers=0,
    )
    train = data.setdefault("train", {})
    train.update(
        epochs=epochs,
        seed=seed,
        device=cfg.device,
        progress=False,
        val_every=max(1, round(epochs / cfg.val_points)),
        checkpoint_every=epochs,
        log_every=max(1, min(int(train.get("log_every", 10)), cfg.iterations // 10 or 1)),
    )
    optim = data.setdefault("optim", {})
    optim["warmup_steps"] = min(int(optim.get("warmup_steps", 0)), cfg.iterations // 5)
    return config_from_dict(data, path=suite.path or path)


def train_run(train_cfg, run_dir: Path, iterations: int) -> Path:
    """Train (or finish, or reuse) one run; returns its ``last`` checkpoint folder."""
    last = run_dir / "last"
    if last.is_dir():
        if int(read_state(last).get("step", 0)) >= iterations:
            return last
        fit(train_cfg, run_dir, resume=True, stop_at_step=iterations)
    else:
        fit(train_cfg, run_dir, stop_at_step=iterations)
    return last


def read_val_curve(run_dir: Path) -> list[dict[str, float]]:
    """``[{step, mAP, ...}]`` from a run's ``val_log.csv`` (empty when it has none)."""
    path = run_dir / "val_log.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in rows]


@dataclass
class RunResult:
    variant: str
    seed: int
    test: dict[str, dict[str, float]]  # condition ("clean", "zoom+10%", ...) -> metrics
    curve: list[dict[str, float]]
    train_seconds: float


def _evaluate_prior(variant: Variant, cache: Path, perturbed: dict[str, Path], split) -> RunResult:
    """A prior 'run': fitted on the training cases, scored on the clean and every perturbed test set."""
    folders = {"clean": cache, **perturbed}
    test = {
        condition: prior_metrics(variant.prior, cache, split["train"], folder, split["test"])
        for condition, folder in folders.items()
    }
    return RunResult(variant.name, 0, test, [], 0.0)


def _evaluate_run(name, seed, last, cache, perturbed, split, device, seconds, cfg) -> RunResult:
    detector, _, _ = load_detector(last, device, use_ema=True)
    segments = callable(getattr(detector, "segment", None))
    test = {}
    for kind, folder in {"clean": cache, **perturbed}.items():
        test[kind] = evaluate_on(detector, folder, split["test"], device)
        if segments:
            test[kind].update(
                segmentation_metrics_on(detector, folder, split["test"], device, cfg.nsd_tolerance_mm)
            )
    return RunResult(name, seed, test, read_val_curve(last.parent), seconds)


def profile_variants(final: dict[str, Path], cfg: BenchmarkConfig, device: torch.device) -> dict[str, dict]:
    """Params, FLOPs, peak memory and interleaved latency of each variant's trained detector (one scan)."""
    detectors = {name: load_detector(path, device)[0] for name, path in final.items()}
    size = (cfg.size,) * 3
    cost = {name: profile_detector(det, size, device).to_dict() for name, det in detectors.items()}
    images = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0)).to(device)
    latency = measure_latency(
        {name: (lambda d=det: d.detect(images)) for name, det in detectors.items()},
        repeats=cfg.latency_repeats,
        warmup=1,
        device=device,
    )
    reference = latency[next(iter(latency))].median_s
    for name, stats in latency.items():
        cost[name]["latency"] = {**stats.to_dict(), "ratio_to_first": stats.median_s / reference}
    return cost


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _assemble(suite, cfg, split, runs, cost, command) -> dict:
    summary: dict[str, dict] = {}
    for variant in suite.variants:
        mine = [r for r in runs if r.variant == variant.name]
        conditions = {}
        for condition in mine[0].test:
            keys = [m for m in (*METRICS, *SEG_METRICS) if m in METRICS or m in mine[0].test[condition]]
            conditions[condition] = {
                m: dict(
                    zip(("mean", "std"), _mean_std([r.test[condition].get(m) for r in mine]), strict=True)
                )
                for m in keys
            }
            if "nsd_tolerance_mm" in mine[0].test[condition]:
                conditions[condition]["nsd_tolerance_mm"] = mine[0].test[condition]["nsd_tolerance_mm"]
        summary[variant.name] = {
            "overrides": variant.overrides,
            "prior": variant.prior,
            "test": conditions,
            "cost": cost.get(variant.name),
        }
    return {
        "suite": suite.name,
        "description": suite.description,
        "base": suite.base,
        "command": command,
        "machine": machine_description(cfg.threads),
        "budget": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "split": {k: len(v) for k, v in split.items()},
        "split_cases": split,
        "flop_counter": {
            "tool": "torch.utils.flop_counter.FlopCounterMode",
            "counted_ops": list(COUNTED_OPS),
        },
        "variants": summary,
        "runs": [asdict(r) for r in runs],
    }


def run_suite(
    suite_name: str | Path,
    out_dir: str | Path,
    cfg: BenchmarkConfig | None = None,
    *,
    command: str = "",
    progress: bool = True,
) -> dict:
    """Run a whole suite into ``out_dir`` (see the module docstring); returns the results dict."""
    cfg = cfg or BenchmarkConfig()
    suite = load_suite(suite_name)
    out_dir = Path(out_dir)
    console = Console(stderr=True, quiet=not progress)
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)

    console.print(
        f"[bold]suite {suite.name}[/]: {len(suite.variants)} variants x {len(cfg.seeds)} seeds, "
        f"{cfg.iterations} iterations, {cfg.cases} cases at {cfg.size}^3"
    )
    cache, split = prepare_data(out_dir, cfg)
    folders = write_perturbed_caches(cache, out_dir / "data", split["test"], prefix="test_")
    perturbed = {kind: folder for kind, folder in folders.items() if kind != "clean"}
    runs: list[RunResult] = []
    final: dict[str, Path] = {}
    trained = [v for v in suite.variants if v.prior is None]
    for variant in suite.variants:
        if variant.prior is not None:
            runs.append(_evaluate_prior(variant, cache, perturbed, split))
            console.print(f"prior {variant.name}: test mAP {runs[-1].test['clean'].get('mAP', math.nan):.3f}")
    total = len(trained) * len(cfg.seeds)
    for n, (variant, seed) in enumerate(((v, s) for v in trained for s in cfg.seeds), start=1):
        run_dir = out_dir / "runs" / f"{variant.name}-seed{seed}"
        console.print(f"[{n}/{total}] train {variant.name} seed {seed} -> {run_dir}")
        train_cfg = build_train_config(suite, variant, seed, cache, split, cfg)
        started = time.perf_counter()
        last = train_run(train_cfg, run_dir, cfg.iterations)
        seconds = time.perf_counter() - started
        runs.append(_evaluate_run(variant.name, seed, last, cache, perturbed, split, device, seconds, cfg))
        final.setdefault(variant.name, last)
        console.print(f"      test mAP {runs[-1].test['clean'].get('mAP', math.nan):.3f}  ({seconds:.0f} s)")
    console.print("profiling (params, FLOPs, memory, interleaved latency) ...")
    cost = profile_variants(final, cfg, device) if final else {}
    results = _assemble(suite, cfg, split, runs, cost, command)
    write_reports(results, out_dir)
    console.print(f"results: {out_dir / 'table.md'}")
    return results


__all__ = [
    "RunResult",
    "build_train_config",
    "profile_variants",
    "read_val_curve",
    "run_suite",
    "train_run",
]
