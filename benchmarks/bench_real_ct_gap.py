"""Where a synthesis-trained model loses a real scan: appearance or anatomy (issue 24, a diagnostic).

A model trained on from-label synthesis (``bench_real_ct.py``) is scored on TS-A's real CT and on images made
from TS-A's own TotalSegmentator label map on TS-A's own grid, each against TotalSegmentator's boxes (pseudo
ground truth: its output, not a manual annotation):

- ``real``: the real image (its pixels never trained on);
- ``real_organs_flat``: the real image with the ten organs set to their median HU (organ texture removed);
- ``real_background_flat``: the real image with the unlabelled body (label 0, >= -500 HU) set to its median;
- ``piecewise_real_medians`` (``_noise20``): every TotalSegmentator structure at its real median HU, air and
  the unlabelled body split at -500 HU (with Gaussian noise of 20 HU): the real appearance, no texture;
- ``generator_real_medians``: the generator's own identity synthesis (no motion, the source grid) painted with
  those medians (its drawn body outline instead of the real one);
- ``generator_random_N``: the identity synthesis with the training distribution's random appearance.

If the model fails the piecewise-constant images as it fails the real one, the gap is not appearance (texture,
noise, intensities) but the anatomy the model learned. Prints one JSON line per image and writes
``OUT/rows.json`` and a picture per image (``OUT/<image>.png``).

Usage::

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/bench_real_ct_gap.py RUN_DIR/last --out OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench_real_ct import require_shared_data
from organdetr.datasets.synthetic.appearance import BODY, OUTSIDE, AppearanceConfig
from organdetr.datasets.synthetic.from_labels import FromLabelsConfig, structure_map, synthesize
from organdetr.datasets.synthetic.label_sources import read_label_source
from organdetr.experiments.demo.real_ct import real_scan_truth, score_versus_truth
from organdetr.inference.overlay import render_overlay
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput
from organdetr.io.images import read_image, read_label_map, read_label_table, write_image
from organdetr.preprocessing.plans import class_map_from_plans, load_plans

CT = "totalsegmentator/example_ct.nii.gz"
LABELS = "totalsegmentator/example_seg_fast_force_split.nii.gz"
AIR_BELOW_HU = -500.0


def medians(image: np.ndarray, labels: np.ndarray, table: dict[int, str]) -> dict[str, float]:
    """Median HU per structure name, label 0 split into ``outside_body`` / ``body_unlabelled`` at -500 HU."""
    out = {table[v]: float(np.median(image[labels == v])) for v in np.unique(labels) if v in table}
    background = labels == 0
    out[OUTSIDE] = float(np.median(image[background & (image < AIR_BELOW_HU)]))
    out[BODY] = float(np.median(image[background & (image >= AIR_BELOW_HU)]))
    return out


def real_grid_images(image: np.ndarray, labels: np.ndarray, table: dict[int, str], organs: set[str]) -> dict:
    """The real image and its flattened variants, all on the real scan's grid (HU ``[I, J, K]``)."""
    med = medians(image, labels, table)
    background = labels == 0
    air = background & (image < AIR_BELOW_HU)
    piecewise = np.where(air, med[OUTSIDE], med[BODY]).astype(np.float32)
    organs_flat, background_flat = image.copy(), image.copy()
    for value, name in table.items():
        inside = labels == value
        if inside.any():
            piecewise[inside] = med[name]
            if name in organs:
                organs_flat[inside] = med[name]
    background_flat[background & ~air] = med[BODY]
    noise = np.random.default_rng(0).normal(0.0, 20.0, image.shape).astype(np.float32)
    return {
        "real": image,
        "real_organs_flat": organs_flat,
        "real_background_flat": background_flat,
        "piecewise_real_medians": piecewise,
        "piecewise_real_medians_noise20": piecewise + noise,
    }


def generator_images(labels_path: Path, med: dict[str, float], random_draws: int) -> dict:
    """The generator's identity synthesis of the map: ``{name: (image, geometry)}``."""
    source = read_label_source(labels_path)
    _, names = structure_map(source, np.random.default_rng(0), (20.0, 20.0))
    fixed = {name: med.get(name, 0.0) for name in names}
    case = synthesize(source, 0, FromLabelsConfig.identity(AppearanceConfig(fixed_hu=fixed)))
    out = {"generator_real_medians": (case.image, case.geometry)}
    for draw in range(random_draws):
        case = synthesize(source, 100 + draw, FromLabelsConfig.identity())
        out[f"generator_random_{draw}"] = (case.image, case.geometry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a run's checkpoint folder (RUN_DIR/last)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--random-draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shared-data", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = require_shared_data(args.shared_data)
    run_dir = args.checkpoint.parent
    organs = set(class_map_from_plans(load_plans(run_dir), run_dir / "plans.json").values())
    truth = real_scan_truth(shared, shared / CT, organs)
    real, labels = read_image(shared / CT), read_label_map(shared / LABELS)
    table = read_label_table(shared / LABELS) or {}
    image = real.array.astype(np.float32)
    on_real_grid = real_grid_images(image, labels.array, table, organs)
    images = {name: (array, real.geometry) for name, array in on_real_grid.items()}
    images |= generator_images(shared / LABELS, medians(image, labels.array, table), args.random_draws)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (array, geometry) in images.items():
        write_image(args.out / f"{name}.nii.gz", array, geometry)
    scans = [ScanInput(args.out / f"{name}.nii.gz", name) for name in images]
    predictions = args.out / "predictions"
    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu")
    predict_scans(predictor, scans, predictions, overlay=False, progress=False, score_threshold=0.0)
    rows = {}
    for scan in scans:
        detections = json.loads((predictions / f"{scan.case_id}.json").read_text())["detections"]
        evaluation = score_versus_truth(scan.case_id, detections, truth)
        keys = ("AP10", "AP50", "mAP", "center_error_mm_median")
        row = {k: round(float(evaluation.summary[k]), 3) for k in keys}
        row["found_at_50"] = sorted(n for n, r in evaluation.per_class.items() if (r.get("AP50") or 0) > 0)
        rows[scan.case_id] = row
        title = f"{scan.case_id}: prediction (boxes) vs TotalSegmentator (dashed)"
        picture = args.out / f"{scan.case_id}.png"
        render_overlay(read_image(scan.path), detections, picture, ground_truth=truth, title=title)
        print(json.dumps({"image": scan.case_id, **row}), flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
