"""MTMed3D on the brain-tumour phantom: one multi-task model vs the three single-task models, and the three
task-balancing schemes, at the same step budget.

Usage (the BENCHMARKS.md section; CPU, one torch thread)::

    .venv/bin/python benchmarks/bench_mtmed3d.py --out runs/bench_mtmed3d --cases 24 --steps 300 \\
        --seeds 0 1 2 --threads 1

Finished runs are reused, so the runs can be made in several invocations (``--variants`` / ``--seeds``
subsets, e.g. in parallel) and scored together with ``--score-only`` (trains nothing, skips unfinished runs).

Data: ``--cases`` brain phantom cases (``organdetr synth --kind brain-tumour``: 64^3 at 3 mm, four MR
channels, seed ``--data-seed``), preprocessed to a 32^3 grid (z-score per channel); a fixed random third of
each grade are test cases, the rest train (no validation: the final weights are scored).

Runs: the ``mtmed3d_small`` preset, variants ``multi-fixed`` / ``multi-uncertainty`` / ``multi-gradnorm``
(``tasks: [det, seg, cls]``) and ``det-only`` / ``seg-only`` / ``cls-only``, each trained ``--steps``
optimizer steps (batch 2) by ``engine.fit`` per seed. Finished runs are reused.

Metrics on the test cases, final weights:

* detection: organdetr's evaluation in MONAI ``COCOMetric`` mode (``mode="monai"``, max 10 detections per
  class and case; the model keeps one per class): ``AP10`` (AP at IoU 0.1, the paper's metric) and ``mAP``
  (COCO 0.50:0.95), boxes in LPS mm; ``seg-only`` reads its boxes off its masks (largest component);
* segmentation: region Dice and HD95 (WT / TC / ET) with MONAI ``DiceMetric`` (``ignore_empty=False``: an
  empty region predicted empty scores 1, the BraTS convention) and ``HausdorffDistanceMetric(percentile=95)``
  on the 32^3 grid in mm (the grid spacing); HD95 is averaged over the cases where both masks are non-empty;
* classification (grade LGG / HGG): accuracy, balanced accuracy, AUC, HGG sensitivity / specificity
  (``organdetr.evaluation.classification``).

Cost (seed-0 weights, one 4 x 32^3 scan, every head's output): parameters, FLOPs (``FlopCounterMode``, see
``organdetr.experiments.profiling``), peak memory of live tensors, CPU latency (median of interleaved runs in
this
process). "3 x single" adds the three single-task models up (run one after the other: latency and FLOPs add,
peak memory is the largest single one, weights add). Balancing: the task weights at the last logged step.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

VARIANTS: dict[str, list[str]] = {
    "multi-fixed": [],
    "multi-uncertainty": ["mtmed3d.balancing=uncertainty"],
    "multi-gradnorm": ["mtmed3d.balancing=gradnorm"],
    "det-only": ["mtmed3d.tasks=[det]"],
    "seg-only": ["mtmed3d.tasks=[seg]"],
    "cls-only": ["mtmed3d.tasks=[cls]"],
}
SINGLES = ("det-only", "seg-only", "cls-only")
GRID = 32


def prepare_data(out: Path, cases: int, data_seed: int) -> tuple[Path, dict[str, list[str]]]:
    """The phantom dataset and its 32^3 cache (reused when complete) and the fixed train / test split."""
    from organdetr.datasets.synthetic.brain import write_brain_dataset
    from organdetr.preprocessing.cache import list_cases
    from organdetr.preprocessing.plans import PreprocessConfig
    from organdetr.preprocessing.run import preprocess_dataset

    raw, cache = out / "data" / "raw", out / "data" / "cache"
    if len(list_cases(cache)) != cases:
        if not (raw / "dataset.json").is_file():
            write_brain_dataset(raw, cases, seed=data_seed)
        summary = preprocess_dataset(raw, cache, PreprocessConfig(input_size=(GRID,) * 3), progress=False)
        if summary.failed:
            raise SystemExit(f"preprocessing failed: {summary.failed[:2]}")
    ids = list_cases(cache)
    grades = json.loads((raw / "case_labels.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(data_seed)
    test = []
    for grade in ("LGG", "HGG"):  # stratified: a third of each grade is held out
        mine = [c for c in ids if grades[c] == grade]
        test += [mine[i] for i in rng.permutation(len(mine))[: max(1, round(len(mine) / 3))]]
    test = sorted(test)
    return cache, {"train": [c for c in ids if c not in test], "test": test}


def train(variant: str, seed: int, cache: Path, split: dict, steps: int, out: Path) -> tuple[Path, float]:
    """Train (or reuse) one run; returns its ``last`` checkpoint and the training seconds (0 if reused)."""
    from organdetr.training.checkpoint import read_state
    from organdetr.training.config import load_config
    from organdetr.training.fit import fit

    run = out / "runs" / f"{variant}-seed{seed}"
    if (run / "last").is_dir() and int(read_state(run / "last").get("step", 0)) >= steps:
        return run / "last", float(json.loads((run / "seconds.json").read_text())["seconds"])
    overrides = [
        *VARIANTS[variant],
        f"data.cache_dir={cache}",
        f"data.train_cases={json.dumps(split['train'])}",
        "data.val_cases=[]",
        "data.num_workers=0",
        f"train.steps={steps}",
        f"train.seed={seed}",
        "train.val_every=0",
        "train.device=cpu",
        "train.progress=false",
        "train.log_every=10",
    ]
    cfg = load_config("mtmed3d_small", overrides)
    started = time.perf_counter()
    fit(cfg, run, resume=(run / "last").is_dir())
    seconds = time.perf_counter() - started
    (run / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return run / "last", seconds


def finished(variant: str, seed: int, steps: int, out: Path) -> bool:
    """Whether the run of ``variant`` / ``seed`` has reached ``steps``."""
    from organdetr.training.checkpoint import read_state

    last = out / "runs" / f"{variant}-seed{seed}" / "last"
    return last.is_dir() and int(read_state(last).get("step", 0)) >= steps


def step_cpu_seconds(cache: Path, split: dict, variants: list[str], repeats: int = 3) -> dict[str, float]:
    """CPU seconds (process time, this process's threads) per training step of each variant, batch 2.

    Unlike the runs' wall time this is not inflated by other processes on a shared machine.
    """
    from organdetr.data.cache_dataset import CacheDataset, collate
    from organdetr.data.properties import DataProperties
    from organdetr.models import detector_from_config
    from organdetr.training.config import load_config

    dataset = CacheDataset(cache, split["train"][:2])
    images, targets = collate([dataset[0], dataset[1]])
    result = {}
    for variant in variants:
        torch.manual_seed(0)
        cfg = load_config("mtmed3d_small", VARIANTS[variant])
        model = detector_from_config(
            cfg, dataset.num_classes, dataset.input_size, DataProperties.from_plans(dataset.plans)
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        for _ in range(repeats + 1):  # the first step warms up
            started = time.process_time()
            loss = model.loss(images, targets)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.process_time() - started)
        result[variant] = statistics.fmean(times[1:])
    return result


def final_weights(run: Path) -> dict[str, float]:
    """Task weights (``weight_<task>``) at the last logged step of a run."""
    if not (run / "train_log.csv").is_file():
        return {}
    with open(run / "train_log.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k[len("weight_") :]: float(v) for k, v in rows[-1].items() if k.startswith("weight_") and v}


@torch.no_grad()
def score(detector, cache: Path, case_ids: list[str]) -> dict[str, float]:
    """Detection (MONAI COCOMetric mode), region Dice / HD95 and grade metrics of a model on ``case_ids``."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    from organdetr.data.cache_dataset import CacheDataset, collate, region_table
    from organdetr.evaluation.classification import evaluate_classification
    from organdetr.training.validation import evaluate

    dataset = CacheDataset(cache, case_ids)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate)
    device = torch.device("cpu")
    metrics: dict[str, float] = {}
    if "det" in detector.tasks or "seg" in detector.tasks:
        det = evaluate(detector, loader, dataset, device, max_detections=10, mode="monai")
        metrics.update({"AP10": det.get("AP10", math.nan), "mAP": det.get("mAP", math.nan)})
    table = torch.from_numpy(region_table(dataset.classes, dataset.regions)).float()
    names = list(dataset.regions)
    dice_fn = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    hd_fn = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    dice, hd95 = {n: [] for n in names}, {n: [] for n in names}
    truth, probs = {}, {}
    detector.eval()
    for images, targets in loader:
        out = detector.infer(images)
        target = targets[0]
        if "seg" in out:
            pred = table[out["seg"][0]].permute(3, 0, 1, 2)[None]  # [1, R, I, J, K]
            gt = table[target["seg"]].permute(3, 0, 1, 2)[None]
            spacing = dataset.record(target["index"])["grid"]["spacing"]
            d = dice_fn(pred, gt)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI warns for empty masks (NaN / inf distances)
                h = hd_fn(pred, gt, spacing=spacing)[0]
            for r, name in enumerate(names):
                dice[name].append(float(d[r]))
                if pred[0, r].any() and gt[0, r].any():
                    hd95[name].append(float(h[r]))
        if "case_probs" in out:
            truth[target["case_id"]] = dataset.case_classes[int(target["case_label"])]
            probs[target["case_id"]] = dict(
                zip(dataset.case_classes, out["case_probs"][0].tolist(), strict=True)
            )
    for name in names:
        if dice[name]:
            metrics[f"Dice_{name}"] = statistics.fmean(dice[name])
            metrics[f"HD95_{name}"] = statistics.fmean(hd95[name]) if hd95[name] else math.nan
    if dice[names[0]]:
        metrics["Dice_mean"] = statistics.fmean(metrics[f"Dice_{n}"] for n in names)
    if truth:
        result = evaluate_classification(truth, probs, dataset.case_classes)
        hgg = {k: math.nan if v is None else v for k, v in result.per_class["HGG"].items()}
        metrics.update(
            {
                "accuracy": result.accuracy,
                "balanced_accuracy": result.balanced_accuracy,
                "AUC": hgg["auc"],
                "HGG_sensitivity": hgg["sensitivity"],
                "HGG_specificity": hgg["specificity"],
            }
        )
    return metrics


def profile(final: dict[str, Path], repeats: int) -> dict[str, dict]:
    """Params, FLOPs, peak memory and interleaved CPU latency of each variant (one 4 x 32^3 scan)."""
    from organdetr.experiments.profiling import measure_latency, profile_detector
    from organdetr.training.checkpoint import load_detector

    detectors = {name: load_detector(path, "cpu")[0] for name, path in final.items()}
    cost = {
        name: profile_detector(d, (GRID,) * 3, "cpu", in_channels=4).to_dict()
        for name, d in detectors.items()
    }
    images = torch.randn(1, 4, GRID, GRID, GRID, generator=torch.Generator().manual_seed(0))
    latency = measure_latency(
        {name: (lambda d=d: d.infer(images)) for name, d in detectors.items()}, repeats=repeats, warmup=1
    )
    for name, stats in latency.items():
        cost[name]["latency_s"] = stats.median_s
    return cost


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def render(results: dict) -> str:
    runs, cost = results["runs"], results["cost"]
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    quality = [
        ("AP10", "AP@0.1"), ("mAP", "mAP"), ("Dice_WT", "Dice WT"), ("Dice_TC", "Dice TC"),
        ("Dice_ET", "Dice ET"), ("HD95_WT", "HD95 WT (mm)"), ("HD95_TC", "HD95 TC (mm)"),
        ("HD95_ET", "HD95 ET (mm)"), ("accuracy", "grade acc."), ("AUC", "grade AUC"),
    ]  # fmt: skip
    lines = [
        "| variant | " + " | ".join(label for _, label in quality) + " |",
        "|---|" + "---|" * len(quality),
    ]
    for variant, mine in by.items():
        cells = []
        for key, _ in quality:
            values = [r["metrics"].get(key) for r in mine]
            digits = 1 if key.startswith("HD95") else 3
            cells.append(fmt(values, digits) if any(v is not None for v in values) else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | params (M) | FLOPs (G) | CPU latency (ms) | peak memory (MiB) | train CPU s / step "
        "| train wall s / step (shared) |",
        "|---|---|---|---|---|---|---|",
    ]
    step_seconds = {
        v: statistics.fmean(r["train_seconds"] / results["budget"]["steps"] for r in mine)
        for v, mine in by.items()
        if mine
    }
    for name, c in cost.items():
        lines.append(
            f"| {name} | {c['params'] / 1e6:.3f} | {c['flops'] / 1e9:.2f} | {c['latency_s'] * 1e3:.0f} | "
            f"{c['peak_memory_bytes'] / 2**20:.1f} | {c.get('cpu_s_per_step', math.nan):.2f} | "
            f"{step_seconds.get(name, math.nan):.2f} |"
        )
    singles = [cost[s] for s in SINGLES if s in cost]
    if len(singles) == 3:
        latency = sum(c["latency_s"] for c in singles)
        lines.append(
            f"| 3 x single (det + seg + cls) | {sum(c['params'] for c in singles) / 1e6:.3f} | "
            f"{sum(c['flops'] for c in singles) / 1e9:.2f} | {latency * 1e3:.0f} | "
            f"{max(c['peak_memory_bytes'] for c in singles) / 2**20:.1f} (largest) | "
            f"{sum(c.get('cpu_s_per_step', math.nan) for c in singles):.2f} | "
            f"{sum(step_seconds[s] for s in SINGLES):.2f} |"
        )
    lines += ["", "| balancing | final task weights det / seg / cls (mean over seeds) |", "|---|---|"]
    for variant in ("multi-fixed", "multi-uncertainty", "multi-gradnorm"):
        weights = [r["weights"] for r in by[variant] if r["weights"]]
        if weights:
            shown = " / ".join(
                f"{statistics.fmean(w[t] for w in weights):.2f}" for t in ("det", "seg", "cls")
            )
            lines.append(f"| {variant.removeprefix('multi-')} | {shown} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mtmed3d"))
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-repeats", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--score-only", action="store_true", help="train nothing: score the finished runs among --seeds"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache, split = prepare_data(args.out, args.cases, args.data_seed)
    runs, final = [], {}
    for variant in args.variants:
        for seed in args.seeds:
            if args.score_only and not finished(variant, seed, args.steps, args.out):
                continue
            last, seconds = train(variant, seed, cache, split, args.steps, args.out)
            from organdetr.training.checkpoint import load_detector

            detector = load_detector(last, "cpu")[0]
            metrics = score(detector, cache, split["test"])
            runs.append(
                {"variant": variant, "seed": seed, "metrics": metrics, "train_seconds": seconds,
                 "weights": final_weights(last.parent)}
            )  # fmt: skip
            final.setdefault(variant, last)
            print(variant, seed, f"{seconds:.0f}s", {k: round(v, 3) for k, v in metrics.items()}, flush=True)
    cost = profile(final, args.latency_repeats)
    for variant, seconds in step_cpu_seconds(cache, split, list(final)).items():
        cost[variant]["cpu_s_per_step"] = seconds
    from organdetr.experiments.ablation.report import machine_description

    results = {
        "command": " ".join(sys.argv),
        "machine": machine_description(args.threads),
        "budget": {"steps": args.steps, "batch": 2, "cases": args.cases, "seeds": args.seeds, "grid": GRID},
        "split": {k: len(v) for k, v in split.items()},
        "runs": runs,
        "cost": cost,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = render(results)
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
