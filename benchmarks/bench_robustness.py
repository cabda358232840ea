"""Held-out accuracy of trained runs on clean, zoomed (x1.1) and shifted (+10 % of the grid) test scans.

The ablation harness's perturbations (``organdetr.experiments.ablation.PERTURBATIONS``) applied to any
trained run, e.g.
the demo's Organ-DETR and seg2box::

    .venv/bin/python benchmarks/bench_robustness.py organdetr_demo/cache organdetr_demo/run \\
        organdetr_demo/run_seg2box --out /tmp/robust --threads 1

Test cases = the cache's cases that the first run did not train on (its ``data.train_cases``), or ``--cases``,
or every case of ``--test-cache`` (another cache with the same plans, e.g. phantoms of another seed made
with ``organdetr synth`` + ``organdetr preprocess``: the demo holds out only 8 scans, too few to measure a
15 % change - see BENCHMARKS.md).
Ground-truth boxes of the perturbed scans are the organs' exact boxes moved by the same transform
(``write_perturbed_cache``). Metrics: the engine's
``evaluate`` on the cache grid (COCO-style in mm, max 1 detection per organ), so clean numbers can differ
slightly from ``organdetr evaluate`` on the raw scans. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from organdetr.experiments.ablation import robustness_scores, write_perturbed_caches
from organdetr.preprocessing.cache import list_cases
from organdetr.preprocessing.plans import load_plans
from organdetr.training.checkpoint import load_detector

KEYS = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (their last/ checkpoint is used)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the perturbed test caches")
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--test-cache", type=Path, default=None, help="score all cases of this cache instead")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.test_cache is not None:
        _check_same_classes(args.cache, args.test_cache)
        args.cache = args.test_cache
        test = list_cases(args.cache)
    elif args.cases:
        test = sorted(args.cases)
    else:
        config = yaml.safe_load((args.runs[0] / "config.yaml").read_text(encoding="utf-8"))
        trained = set(config["data"]["train_cases"] or [])
        test = [c for c in list_cases(args.cache) if c not in trained]
    folders = write_perturbed_caches(args.cache, args.out, test)
    device = torch.device("cpu")
    for run in args.runs:
        detector, _, _ = load_detector(run / "last", device)
        scores = robustness_scores(detector, folders, test, device, KEYS)
        result = {"run": str(run), "cases": len(test), **scores}
        print(json.dumps(result), flush=True)


def _check_same_classes(cache: Path, other: Path) -> None:
    """Refuse a test cache whose class map or intensity normalisation differs from the training cache's."""
    a, b = load_plans(cache), load_plans(other)
    for key in ("classes", "normalization", "input_size"):
        if a.get(key) != b.get(key):
            raise SystemExit(f"{other}: plans.json {key!r} differs from {cache}'s; preprocess it alike")


if __name__ == "__main__":
    main()
