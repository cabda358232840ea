"""Real-CT evaluation of a model trained on synthetic scans only (issue 24): from-label synthesis vs phantoms.

Trains the ``--preset`` (demo) for exactly ``--steps`` optimizer steps on ``--cases`` synthetic scans and
predicts the real scans of the shared data pack (``../shared/data``), scoring each against TotalSegmentator's
boxes (pseudo ground truth: TotalSegmentator's own output, not a manual annotation) over the ten organs that
scan contains: AP10, AP50 and the centre error per organ (mm, pairs at IoU >= 0.1).

``--data from-labels`` (default): scans synthesised from the label maps ``--label-map`` (default TS-A's,
``example_seg_fast_force_split.nii.gz``) plus ``--phantom-sources`` procedural phantoms' label maps
(``organdetr.datasets.synthetic.from_labels``). ``--data phantom``: the demo's phantoms (today's baseline,
same steps). Leave-one-subject-out: TS-A's *labels* may be a source, its *pixels* are never seen (its real
image is scored); TS-B (the upper-abdomen DICOM slab) and the MR (a contrast test) are subjects whose labels
are never used. ``--test-set N`` also scores N phantoms of data seed 7 (the phantom test set, clean and
perturbed).

``--resynthesis`` adds the on-the-fly appearance synthesis (``data.synthesis: appearance``: every step paints
new intensities onto the cached labels; with ``--data phantom`` it is the phantom with random appearance).
Ablation switches (one line each in BENCHMARKS.md): ``--no-deform`` (no affine / elastic motion), ``--ct-prior
1`` (CT-like intensities only, no fully random contrasts), ``--phantom-sources 0`` or ``--no-label-maps``
(real vs procedural maps), ``--phantom-sources N`` (number of source maps), ``--real-share S`` (the fraction
of cases drawn from the ``--label-map`` files; default uniform over every map, i.e. 1 / 21 for one map and 20
phantoms), ``--fov-k LOW HIGH`` (the scan range as a fraction of the anatomy's cranio-caudal extent; default
0.1 1, which shows thin slabs such as TS-B's 38 mm; the lines before 2026-12-04 07:00 UTC ran with 0.35 1).

Usage::

    .venv/bin/python benchmarks/bench_real_ct.py --out /tmp/realct --steps 300 --cases 60 --threads 1 \\
        --phantom-sources 20 --tag synth
    .venv/bin/python benchmarks/bench_real_ct.py --out /tmp/realct --steps 300 --cases 60 --threads 1 \\
        --data phantom --tag phantom

``--real-points K`` scores the real scans at K evenly spaced steps of the one run (the schedule spans
``--steps``; training continues exactly from each point): ``real_curve`` in the result, one JSON line per
point, pictures of the intermediate points in ``OUT/<tag>/real/step<N>/``. Prints one JSON line (also
``OUT/<tag>/result.json``); pictures of the predictions beside TotalSegmentator's
boxes are in ``OUT/<tag>/real/<scan>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_training_budget import prepare_test_set, run_dir_for, train_run
from organdetr.datasets.synthetic.appearance import AppearanceConfig
from organdetr.datasets.synthetic.from_labels import FromLabelsConfig
from organdetr.datasets.synthetic.from_labels_dataset import write_from_labels_dataset
from organdetr.datasets.synthetic.label_sources import phantom_label_source, read_label_source
from organdetr.datasets.synthetic.phantom import write_synthetic_dataset
from organdetr.datasets.synthetic.writing import case_seeds
from organdetr.experiments.demo.real_ct import find_shared_data, real_scan_truth, score_versus_truth
from organdetr.inference.overlay import render_overlay
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput, case_id_of
from organdetr.io.images import read_image
from organdetr.preprocessing.cache import list_cases
from organdetr.preprocessing.plans import PreprocessConfig, class_map_from_plans, load_plans
from organdetr.preprocessing.run import preprocess_dataset
from organdetr.runtime.json_files import read_json

TS_A_LABELS = "totalsegmentator/example_seg_fast_force_split.nii.gz"
REAL_SCANS = {
    "totalsegmentator/example_ct.nii.gz": "TS-A CT (labels may be a source; pixels never seen)",
    "totalsegmentator/example_ct_dicom": "TS-B CT DICOM slab (labels never used)",
    "totalsegmentator/example_mr_sm.nii.gz": "TS-D MR (contrast test; labels never used)",
}


def require_shared_data(explicit: Path | None) -> Path:
    """The real-data pack (``explicit``, ``../shared/data`` or ``$ORGANDETR_SHARED_DATA``); else exit."""
    shared = find_shared_data(explicit)
    if shared is None:
        raise SystemExit("no real-data pack found (../shared/data or $ORGANDETR_SHARED_DATA)")
    return shared


def training_data(args, shared: Path, raw: Path) -> Path:
    """The synthetic training dataset of ``args`` in ``raw`` (reused when complete)."""
    if (raw / "dataset.json").is_file():
        return raw
    if args.data == "phantom":
        return write_synthetic_dataset(raw, args.cases, seed=args.seed, workers=1)
    maps = [shared / TS_A_LABELS] if args.label_map is None else [Path(p) for p in args.label_map]
    maps = [] if args.no_label_maps else maps
    sources = [read_label_source(path) for path in maps]
    sources += [phantom_label_source(s) for s in case_seeds(args.seed + 1, args.phantom_sources)]
    appearance = replace(AppearanceConfig(), p_ct_prior=args.ct_prior)
    cfg = FromLabelsConfig(deform=not args.no_deform, appearance=appearance, fov_k=tuple(args.fov_k))
    return write_from_labels_dataset(
        raw, sources, args.cases, seed=args.seed, cfg=cfg, workers=1, real_share=args.real_share
    )


def cache_and_split(args, raw: Path, cache: Path) -> tuple[list[str], list[str]]:
    """Preprocess ``raw`` onto the fixed grid (the demo's planned spacing and HU window by default) and split
    it 90 / 10 (training / synthetic validation) by the data seed."""
    if len(list_cases(cache)) < args.cases:
        pre = PreprocessConfig(
            input_size=(args.size,) * 3,
            hu_window=tuple(args.hu),
            fit="pad",
            target_spacing=tuple(args.spacing),
        )
        preprocess_dataset(raw, cache, pre, workers=1, progress=False)
    ids = sorted(list_cases(cache))
    order = np.random.default_rng(args.seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[: max(1, round(0.1 * len(ids)))])
    return [c for c in ids if c not in val], val


def score_real_scans(run_dir: Path, shared: Path, out: Path, classes: set[str]) -> dict:
    """Predict the pack's real scans with ``run_dir``'s last weights; AP10 / AP50 / centre error per organ."""
    scans = [
        ScanInput(shared / rel, case_id_of(shared / rel)) for rel in REAL_SCANS if (shared / rel).exists()
    ]
    predictor = Predictor.from_checkpoint(run_dir / "last", "cpu")
    summary = predict_scans(predictor, scans, out, overlay=False, progress=False, score_threshold=0.0)
    results = {}
    for scan in scans:
        if scan.case_id not in summary.done:
            results[scan.case_id] = {"failed": True}
            continue
        detections = read_json(out / f"{scan.case_id}.json")["detections"]
        truth = real_scan_truth(shared, scan.path, classes)
        what = REAL_SCANS[str(scan.path.relative_to(shared))]
        render_overlay(
            read_image(scan.path), detections, out / f"{scan.case_id}.png", ground_truth=truth,
            title=f"{what}: prediction (boxes) vs TotalSegmentator (truth)",
        )  # fmt: skip
        if not truth:
            results[scan.case_id] = {"scan": what, "organs": 0}
            continue
        evaluation = score_versus_truth(scan.case_id, detections, truth)
        per_organ = {
            name: {k: _round(row.get(k)) for k in ("AP50", "AP_10_50", "center_error_mm")}
            for name, row in evaluation.per_class.items()
        }
        results[scan.case_id] = {
            "scan": what,
            "organs": len(per_organ),
            **{
                k: _round(evaluation.summary.get(k))
                for k in ("AP10", "AP50", "mAP", "center_error_mm_median")
            },
            "per_organ": per_organ,
        }
    return results


def _headline(result: dict) -> dict:
    """AP10 / AP50 / median centre error of one scan's :func:`score_real_scans` entry."""
    return {k: result.get(k) for k in ("AP10", "AP50", "center_error_mm_median")}


def _round(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--tag", default=None, help="sub-folder of this configuration (default: from options)"
    )
    parser.add_argument("--data", choices=("from-labels", "phantom"), default="from-labels")
    parser.add_argument("--label-map", action="append", default=None, help="source label map (repeatable)")
    parser.add_argument("--no-label-maps", action="store_true", help="procedural phantoms' label maps only")
    parser.add_argument("--phantom-sources", type=int, default=20)
    parser.add_argument(
        "--real-share", type=float, default=None,
        help="fraction of the cases drawn from the --label-map files (default: uniform over all sources)",
    )  # fmt: skip
    parser.add_argument("--ct-prior", type=float, default=0.5)
    parser.add_argument("--no-deform", action="store_true")
    parser.add_argument(
        "--fov-k", type=float, nargs=2, default=FromLabelsConfig().fov_k,
        help="scan range drawn as this fraction (low, high) of the moved anatomy's cranio-caudal extent",
    )  # fmt: skip
    parser.add_argument(
        "--resynthesis",
        action="store_true",
        help="also a new appearance per step (data.synthesis=appearance)",
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--spacing", type=float, nargs=3, default=(5.8, 5.8, 6.8))
    parser.add_argument("--hu", type=float, nargs=2, default=(-133.0, 367.0))
    parser.add_argument("--seed", type=int, default=0, help="data and split seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--val-points", type=int, default=2)
    parser.add_argument(
        "--real-points", type=int, default=1,
        help="score the real scans at K evenly spaced steps of the one run (a budget curve on real CT)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-set", type=int, default=0, help="phantom test set size (0: none)")
    parser.add_argument("--shared-data", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = require_shared_data(args.shared_data)
    tag = args.tag or f"{args.data}_n{args.cases}_s{args.steps}_seed{args.seed}"
    out = args.out / tag
    start = time.perf_counter()
    raw = training_data(args, shared, out / "raw")
    train, val = cache_and_split(args, raw, out / "cache")
    data_s = time.perf_counter() - start
    test_set = None
    if args.test_set:
        test_set = prepare_test_set(
            args.out, args.test_set, args.size, tuple(args.hu), 7, tuple(args.spacing)
        )
    spec = args.preset + ("|data.synthesis=appearance" if args.resynthesis else "")
    classes = set(class_map_from_plans(load_plans(out / "cache"), out / "cache" / "plans.json").values())
    curve, cpu, wall = [], 0, 0
    for point in range(1, args.real_points + 1):  # chunks of one run: the schedule spans --steps
        step = round(args.steps * point / args.real_points)
        last = point == args.real_points
        chunk = train_run(spec, out, out / "cache", train, val, args, test_set if last else None,
                          stop_at_step=None if args.real_points == 1 else step, resume=point > 1)  # fmt: skip
        cpu, wall = cpu + chunk["cpu_s"], wall + chunk["wall_s"]
        run = {**chunk, "cpu_s": cpu, "wall_s": wall}  # the whole run's time so far
        where = out / "real" if last else out / "real" / f"step{step}"
        real = score_real_scans(run_dir_for(spec, out, args.train_seed), shared, where, classes)
        curve.append({"step": step, "cpu_s": cpu, **{scan: _headline(r) for scan, r in real.items()}})
        print(json.dumps(curve[-1]), flush=True)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"tag": tag, "options": options, "data_s": round(data_s), "train": run, "real": real,
              "real_curve": curve}  # fmt: skip
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
