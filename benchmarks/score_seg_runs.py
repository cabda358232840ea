"""Score the segmenting runs of an ``organdetr benchmark`` folder on the original scans (the user path).

    .venv/bin/python benchmarks/score_seg_runs.py RUN_DIR [--nnunet /tmp/nnunet] [--nsd-tolerance MM]

For every trained run of ``RUN_DIR/runs`` whose detector segments (MaskMed, its point-wise U-Net, seg2box):
``organdetr predict`` (the ``Predictor``: resample onto the model grid, segment, map the label map back onto
each test scan's own grid) on the suite's test scans, then the segmentation metrics
(``organdetr.evaluation.segmentation``: Dice, NSD, HD95 in mm) against the scans' label maps - what
``organdetr evaluate --seg`` computes. ``--nnunet WORK`` adds the nnU-Net v2 predictions made by
``benchmarks/bench_nnunet.py`` (``WORK/pred_seed*``) on the same scans. Prints a markdown table, mean ± std
over seeds, and writes ``RUN_DIR/raw_seg.json``. The NSD tolerance defaults to the suite's (``results.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np
import torch

from organdetr.evaluation.segmentation import evaluate_segmentation
from organdetr.evaluation.segmentation_io import LabelMapSet, pair_predictions, read_pairs


def truth_of(run_dir: Path, results: dict) -> LabelMapSet:
    raw = run_dir / "data" / "raw"
    dataset = json.loads((raw / "dataset.json").read_text())
    classes = {int(v): k for k, v in dataset["labels"].items() if int(v) > 0}
    cases = [(c, raw / "labelsTr" / f"{c}.nii.gz") for c in results["split_cases"]["test"]]
    return LabelMapSet(cases, classes, f"test cases of {raw}")


def score(pred_dir: Path, truth: LabelMapSet, tolerance: float) -> dict[str, float]:
    paired = pair_predictions(pred_dir, truth)
    triples = list(read_pairs(paired))
    result = evaluate_segmentation(
        [p for p, _, _ in triples],
        [g for _, g, _ in triples],
        truth.classes,
        [s for _, _, s in triples],
        tolerance,
    )
    return dict(result.summary)


def predict_run(run: Path, truth: LabelMapSet, out: Path) -> Path:
    from organdetr.inference.predict import predict_scans
    from organdetr.inference.predictor import Predictor

    if not any(out.glob("*_seg.nii.gz")):
        predictor = Predictor.from_checkpoint(run / "last", device="cpu")
        images = [
            truth_path.parents[1] / "imagesTr" / f"{case}_0000.nii.gz" for case, truth_path in truth.cases
        ]
        summary = predict_scans(predictor, images, out, overlay=False, progress=False, score_threshold=0.0)
        if summary.failed:
            raise RuntimeError(f"predict failed: {summary.failed}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--nnunet", type=Path, default=None, help="bench_nnunet.py work folder")
    parser.add_argument("--nsd-tolerance", type=float, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads((args.run_dir / "results.json").read_text())
    truth = truth_of(args.run_dir, results)
    tolerance = args.nsd_tolerance
    if tolerance is None:
        tolerance = next(
            v["test"]["clean"]["nsd_tolerance_mm"]
            for v in results["variants"].values()
            if "nsd_tolerance_mm" in v["test"]["clean"]
        )
    per_variant: dict[str, list[dict]] = {}
    for run in sorted((args.run_dir / "runs").iterdir()):
        name = re.sub(r"-seed\d+$", "", run.name)
        if "dice" not in results["variants"].get(name, {}).get("test", {}).get("clean", {}):
            continue  # not a segmenting variant
        pred = predict_run(run, truth, args.run_dir / "raw_eval" / run.name)
        per_variant.setdefault(name, []).append(score(pred, truth, tolerance))
    if args.nnunet:
        for pred in sorted(args.nnunet.glob("pred_seed*")):
            per_variant.setdefault("nnU-Net v2 3d_fullres", []).append(score(pred, truth, tolerance))
    table = {}
    print(f"test scans on their own grids, NSD at {tolerance:g} mm, mean ± std over seeds")
    print("| variant | seeds | Dice | NSD | HD95 (mm) |\n|---|---|---|---|---|")
    for name, scores in per_variant.items():
        row = {}
        for key in ("dice", "nsd", "hd95_mm"):
            values = [s[key] for s in scores if np.isfinite(s[key])]
            row[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        table[name] = {"seeds": len(scores), **{k: list(v) for k, v in row.items()}}
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ("dice", "nsd")]
        cells.append(f"{row['hd95_mm'][0]:.1f} ± {row['hd95_mm'][1]:.1f}")
        print(f"| {name} | {len(scores)} | " + " | ".join(cells) + " |")
    (args.run_dir / "raw_seg.json").write_text(
        json.dumps({"nsd_tolerance_mm": tolerance, "variants": table}, indent=2)
    )


if __name__ == "__main__":
    main()
