"""A 5-fold cross-validation ensemble and test-time mirroring against the single model, on the independent
test set of bench_training_budget.py (issue 23).

Data as bench_training_budget.py: ``--cases`` demo phantoms of data seed ``--seed`` preprocessed onto a
``--size``^3 grid (HU window ``--hu``), and an independent test set of ``--test-set`` phantoms of data seed
``--test-seed`` (default 7) on the same grid. The training cache is split into ``--folds`` folds with
``organdetr split``'s draw (nnU-Net v2's, seed 12345, ``CACHE/splits_final.json``); one ``--preset`` run per
fold is trained for exactly ``--steps`` optimizer steps (``data.fold=k``, the budget bench's optimiser), and
every fold's ``last`` weights are scored on the test set:

* ``single``: the fold-0 model (nnU-Net's "one fold"); ``fold mean``: the mean (and sd) over the folds;
* ``ensemble``: all folds, boxes fused per organ (score-weighted box fusion, ``EnsemblePredictor``);
* ``single+tta <axes>`` / ``ensemble+tta <axes>``: mirrored views (``--tta-axes``, e.g. ``i`` and ``ijk``).

Scores: COCO-style in mm against the test scans' ground truth (1 detection per organ: mAP, AP50, AP75, mAR,
nnDetection mAP@.10:.50); cost: forward passes per scan and measured CPU seconds per scan of the detection
(``--threads``). Runs are reused when their ``last`` checkpoint exists (``OUT/runs/fold_k``).

Usage (the full benchmark: 5 x 1000 demo-preset steps, about 70 CPU-minutes at one thread, then 70 forward
passes per test scan)::

    .venv/bin/python benchmarks/bench_ensemble_tta.py --out /tmp/ens_tta --steps 1000 --threads 1

Smoke test (minutes): ``--cases 10 --test-set 4 --size 32 --steps 2 --preset tiny``.
Prints one JSON line per model / combination and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench_training_budget import METRICS, prepare, prepare_test_set
from organdetr.core.boxes.world import grid_box_to_original
from organdetr.data.splits import crossval_splits, write_splits
from organdetr.evaluation import Detection, GroundTruth, evaluate_detections
from organdetr.inference.ensemble import EnsemblePredictor, flip_views
from organdetr.inference.predictor import Predictor
from organdetr.preprocessing.cache import list_cases, load_case
from organdetr.training.config import load_config
from organdetr.training.fit import fit


def train_folds(cache: Path, out: Path, args) -> list[Path]:
    """One run per fold of ``CACHE/splits_final.json`` (written here), ``args.steps`` steps each."""
    write_splits(cache, crossval_splits(list_cases(cache), args.folds), overwrite=True)
    runs = []
    for k in range(args.folds):
        run_dir = out / "runs" / f"fold_{k}"
        if not (run_dir / "last" / "model.safetensors").is_file():
            cfg = load_config(
                args.preset,
                [
                    f"data.cache_dir={cache}",
                    f"data.fold={k}",
                    f"data.batch_size={args.batch}",
                    "data.num_workers=0",
                    f"train.steps={args.steps}",
                    "train.device=cpu",
                    "train.progress=false",
                    f"train.checkpoint_every={10**6}",
                    f"train.seed={args.train_seed}",
                    "optim.lr=1e-3",
                    "optim.grad_clip=1.0",
                    f"optim.warmup_steps={min(50, max(1, args.steps // 4))}",
                    *args.override,
                ],
            )
            fit(cfg, run_dir)
        runs.append(run_dir / "last")
    return runs


def score(predictor: Predictor, test_cache: Path, case_ids: list[str]) -> dict:
    """COCO-style metrics in mm (1 detection per organ) of ``predictor`` on the cached test grids, and the
    CPU seconds per scan of its detection."""
    names = [predictor.classes[i] for i in predictor.label_ids]
    detections, truth, cpu = [], [], 0.0
    for case_id in case_ids:
        grid, _, record = load_case(test_cache, case_id, mmap=False)
        start = time.process_time()
        result = predictor.detect_grids([grid])[0]
        cpu += time.process_time() - start
        boxes_mm = grid_box_to_original(np.asarray(result["boxes"], np.float64).reshape(-1, 6), record)[1]
        for label, s, box in zip(result["labels"], result["scores"], boxes_mm, strict=True):
            detections.append(Detection(case_id, names[int(label)], float(s), np.asarray(box)))
        truth += [GroundTruth(case_id, b["name"], np.asarray(b["box_mm"], float)) for b in record["boxes"]]
    summary = evaluate_detections(detections, truth, names, max_detections=1).summary
    metrics = {k: round(float(summary[k]), 4) for k in METRICS}
    return {**metrics, "cpu_s_per_scan": round(cpu / max(1, len(case_ids)), 3)}


def combinations(members: list[Predictor], args) -> list[tuple[str, EnsemblePredictor]]:
    """(name, predictor) of every model and combination the table compares."""
    out = [(f"fold {k}", EnsemblePredictor([m])) for k, m in enumerate(members)]
    out.append((f"ensemble {len(members)}", EnsemblePredictor(members)))
    for axes in args.tta_axes:
        out.append((f"single+tta {axes}", EnsemblePredictor(members[:1], flip_views(axes))))
        out.append((f"ensemble+tta {axes}", EnsemblePredictor(members, flip_views(axes))))
    return out


def table(rows: dict[str, dict]) -> str:
    """Markdown table: AP75, mAP, AP50, mAR, forward passes, CPU s per scan."""
    lines = ["| model | AP75 | mAP | AP50 | mAR | forward passes / scan | CPU s / scan |", "|---" * 7 + "|"]
    for name, r in rows.items():
        ap75 = f"{r['AP75']:.3f}" + (f" ± {r['AP75_sd']:.3f}" if "AP75_sd" in r else "")
        cost = f"{r['passes']} | {r['cpu_s_per_scan']:.2f}"
        lines.append(f"| {name} | {ap75} | {r['mAP']:.3f} | {r['AP50']:.3f} | {r['mAR']:.3f} | {cost} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE for every fold's run")
    parser.add_argument("--steps", type=int, default=1000, help="per fold (issue 10's test-set rows: 1000)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--hu", type=float, nargs=2, default=(-200.0, 300.0))
    parser.add_argument("--seed", type=int, default=0, help="training phantoms' data seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--test-set", type=int, default=40)
    parser.add_argument("--test-seed", type=int, default=7)
    parser.add_argument("--tta-axes", nargs="+", default=["i", "ijk"], help="mirror sets (ijk letters)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hu = tuple(args.hu)
    cache, _, _ = prepare(args.out, args.cases, args.size, hu, args.seed)
    test_cache = prepare_test_set(args.out, args.test_set, args.size, hu, args.test_seed)["clean"]
    test_ids = list_cases(test_cache)
    runs = train_folds(cache, args.out, args)
    members = [Predictor.from_checkpoint(run, "cpu", "off") for run in runs]
    rows: dict[str, dict] = {}
    for name, predictor in combinations(members, args):
        rows[name] = {**score(predictor, test_cache, test_ids), "passes": predictor.forward_passes}
        print(json.dumps({"model": name, "steps": args.steps, "test_cases": len(test_ids), **rows[name]}))
    folds = [rows[f"fold {k}"] for k in range(len(members))]
    mean = {k: float(np.mean([f[k] for f in folds])) for k in (*METRICS, "cpu_s_per_scan")}
    rows = {
        "single (fold 0)": rows["fold 0"],
        "fold mean": {**mean, "AP75_sd": float(np.std([f["AP75"] for f in folds])), "passes": 1},
        **{k: v for k, v in rows.items() if not k.startswith("fold ")},
    }
    print(table(rows), flush=True)


if __name__ == "__main__":
    main()
