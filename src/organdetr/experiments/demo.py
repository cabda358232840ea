"""`organdetr demo`: the whole pipeline on CPU in minutes, ending in a report folder.

Steps (each timed, each with a progress bar):

1. synthesise an abdomen-like phantom dataset (nnU-Net layout; ``organdetr synth``; varied field of view,
   so that organ positions differ from scan to scan);
2. preprocess the cases into a cache (``organdetr preprocess``);
3. train Organ-DETR (``demo`` preset) on CPU for a fixed number of optimizer steps (``organdetr train``);
4. train the ``seg2box`` baseline (a U-Net whose masks give the boxes) for the same steps on the same data;
5. predict the held-out cases from their raw NIfTI files (``organdetr predict``) and score both models and
   the two image-blind priors (mean training box per organ, :mod:`organdetr.models.baselines.prior`) against
   boxes from the
   label maps (``organdetr evaluate``: COCO-style 3D mAP in mm);
6. predict a real CT (``../shared/data`` when present): shows real geometry (RAS NIfTI, DICOM series)
   handled end to end. A model trained on phantoms does NOT find real organs well; the report says so;
7. write ``OUT/report/``: ``REPORT.md`` (the model beside the priors and seg2box), ``metrics.md`` /
   ``metrics.json``, ``pr_curves.png``, ``loss_curve.png``, ``overlays/`` and ``real_ct/``.

The budget is a step count, never wall-clock time: the result does not depend on the machine's load. The
expected time is measured (a few steps of each model) and printed before training starts.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError

SHARED_DATA_ENV = "ORGANDETR_SHARED_DATA"
ABDOMEN_WINDOW = (-200.0, 300.0)
"""HU window of the demo's cache: the abdominal organs' soft-tissue range (air, gas and bone clip to its
ends). Measured on the demo phantoms, Organ-DETR reached 3x the held-out mAP of the -1000..1000 window at the
same 600 steps (BENCHMARKS.md, "Demo design"); the nnU-Net-style labelled-foreground window that
``organdetr preprocess`` uses by default comes out at about -975..256 HU here, because the phantom's (and
TotalSegmentator's) stomach label includes its gas."""
REAL_CT_CANDIDATES = ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_ct_dicom")
REAL_CT_LABELS = {
    "totalsegmentator/example_ct.nii.gz": "totalsegmentator/example_seg_fast_force_split.nii.gz"
}


@dataclass
class DemoConfig:
    """Sizes and budget of a demo run. The budget is ``steps`` optimizer steps per model (batch
    ``batch_size``), the same for Organ-DETR and the seg2box baseline."""

    out_dir: Path = Path("organdetr_demo")
    cases: int = 200  # 160 train / 40 held out: 8 held-out scans cannot resolve a 15 % change (BENCHMARKS.md)
    test_fraction: float = 0.2
    steps: int = 1000
    preset: str = "demo"
    baseline_preset: str = "seg2box"
    baseline_overrides: tuple[str, ...] = ("seg2box.features=[8, 8, 16, 32, 64, 8]",)
    baselines: bool = True  # also train seg2box (the priors are always scored: they cost nothing)
    input_size: int = 64
    hu_window: tuple[float, float] = ABDOMEN_WINDOW
    batch_size: int = 2
    lr: float = 1e-3  # a few hundred CPU steps: 5x the presets' DETR-style rates (screened in BENCHMARKS.md)
    grad_clip: float = 1.0  # DETR's 0.1 slows such a short run
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 2
    num_workers: int = 0  # augmentation in the main process: on 2 cores a worker only competes with torch
    max_overlays: int = 4
    shared_data: Path | None = None
    progress: bool = True

    @classmethod
    def quick(cls, **changes) -> DemoConfig:
        """About a minute: tiny models on a 32^3 grid, a handful of cases (a smoke test, not a result)."""
        base = {
            "cases": 8,
            "test_fraction": 0.25,
            "steps": 60,
            "preset": "tiny",
            "baseline_overrides": ("seg2box.features=[4, 4, 8, 16, 32, 4]",),
            "input_size": 32,
            "batch_size": 2,
            "warmup_steps": 10,
            "max_overlays": 2,
        }
        base.update(changes)
        return cls(**base)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.baseline_overrides = tuple(self.baseline_overrides)
        if self.cases < 3:
            raise InputError(None, f"--cases must be >= 3 (train + held-out), got {self.cases}")
        if self.steps < 1:
            raise InputError(None, f"--steps must be >= 1, got {self.steps}")
        if self.threads < 1:
            raise InputError(None, f"--threads must be >= 1, got {self.threads}")


@dataclass
class DemoResult:
    """Where the demo put things, and the numbers it measured."""

    report: Path
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)
    train_steps: int = 0
    step_seconds: float = 0.0
    real_ct: list[str] = field(default_factory=list)
    comparison: dict[str, dict] = field(default_factory=dict)  # row name -> summary metrics


# ----------------------------------------------------------------------------- locating the real CT


def find_shared_data(explicit: Path | None = None) -> Path | None:
    """The real-data pack: ``explicit``, ``$ORGANDETR_SHARED_DATA``, ``./../shared/data``, ``./shared/data``,
    or ``shared/data`` beside the source checkout; ``None`` when none holds a real CT.

    An ``explicit`` folder is the only one looked at: InputError when it is missing or holds no real CT.
    """
    import organdetr

    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_dir():
            raise InputError(explicit, "--shared-data folder not found")
        if not any((explicit / rel).exists() for rel in REAL_CT_CANDIDATES):
            raise InputError(explicit, f"--shared-data folder holds none of {', '.join(REAL_CT_CANDIDATES)}")
        return explicit.resolve()
    candidates = []
    if os.environ.get(SHARED_DATA_ENV):
        candidates.append(Path(os.environ[SHARED_DATA_ENV]))
    cwd = Path.cwd()
    candidates += [cwd / ".." / "shared" / "data", cwd / "shared" / "data"]
    package = Path(organdetr.__file__).resolve()
    candidates += [parent / "shared" / "data" for parent in package.parents[2:4]]
    for folder in candidates:
        if any((folder / rel).exists() for rel in REAL_CT_CANDIDATES):
            return folder.resolve()
    return None


# ----------------------------------------------------------------------------- the run


class _Clock:
    """Step timer that prints one line per step."""

    def __init__(self, echo: Callable[[str], None]):
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.echo = echo

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(self, name: str, message: str):
        clock = self

        class _Step:
            def __enter__(self):
                clock.echo(f"\n[{clock.elapsed():5.0f}s] {message}")
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                clock.timings[name] = time.perf_counter() - self.t0
                return False

        return _Step()


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run every step of the demo into ``cfg.out_dir``; returns where the report is and the metrics."""
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(echo)
    n = 7 if cfg.baselines else 6
    step = iter(range(1, n + 1))

    with clock.step("synth", f"{next(step)}/{n} synthesising {cfg.cases} phantom CT scans with organ labels"):
        dataset_root = _synthesise(cfg, out / "data")
    with clock.step("preprocess", f"{next(step)}/{n} preprocessing onto a {cfg.input_size}^3 grid"):
        train_ids, test_ids, cache_dir, classes = _preprocess(cfg, dataset_root, out / "cache")
    echo(
        f"      {len(train_ids)} training cases, {len(test_ids)} held-out cases, {len(classes)} organ classes"
    )
    models = {"Organ-DETR": (cfg.preset, ()), **({"seg2box": (cfg.baseline_preset, cfg.baseline_overrides)}
                                                  if cfg.baselines else {})}  # fmt: skip
    configs = {name: _train_config(cfg, cache_dir, train_ids, preset, overrides)
               for name, (preset, overrides) in models.items()}  # fmt: skip
    step_seconds = {
        name: measure_step_seconds(c, cache_dir, train_ids, cfg.batch_size) for name, c in configs.items()
    }
    expected = sum(step_seconds.values()) * cfg.steps
    echo(
        f"      {cfg.steps} steps of batch {cfg.batch_size} per model; measured "
        + ", ".join(f"{name} {sec:.2f} s/step" for name, sec in step_seconds.items())
        + f" -> expect about {expected / 60:.0f} min of training on this machine"
    )
    runs: dict[str, Path] = {}
    for name, train_cfg in configs.items():
        key = "train" if name == "Organ-DETR" else "train_seg2box"
        with clock.step(
            key, f"{next(step)}/{n} training {name} ({models[name][0]} preset) for {cfg.steps} steps"
        ):
            runs[name] = _train(train_cfg, out / ("run" if name == "Organ-DETR" else "run_seg2box"))
    with clock.step(
        "evaluate", f"{next(step)}/{n} predicting and scoring the {len(test_ids)} held-out cases"
    ):
        evaluations, held_out = _evaluate_held_out(
            cfg, runs, dataset_root, cache_dir, train_ids, test_ids, classes, out
        )
    report = out / "report"
    with clock.step("real_ct", f"{next(step)}/{n} predicting a real CT"):
        real = _predict_real_ct(cfg, runs["Organ-DETR"], report / "real_ct", classes, echo)
    with clock.step("report", f"{next(step)}/{n} writing the report"):
        run = {
            "steps": cfg.steps,
            "step_seconds": step_seconds,
            "classes": classes,
            "held_out_cases": len(test_ids),
        }
        _write_report(cfg, report, runs, evaluations, held_out, real, clock.timings, run)
    result = DemoResult(
        report / "REPORT.md",
        dict(evaluations["Organ-DETR"].summary),
        dict(clock.timings),
        cfg.steps,
        step_seconds["Organ-DETR"],
        [r["name"] for r in real],
        {name: dict(e.summary) for name, e in evaluations.items()},
    )
    result.timings["total"] = clock.elapsed()
    return result


def _synthesise(cfg: DemoConfig, data_dir: Path) -> Path:
    from organdetr.datasets.synthetic.phantom import write_synthetic_dataset

    root = data_dir / "Dataset990_OrganPhantom"
    workers = max(1, cfg.threads)
    return Path(
        write_synthetic_dataset(root, cfg.cases, seed=cfg.seed, workers=workers, progress=cfg.progress)
    )


def _preprocess(cfg: DemoConfig, dataset_root: Path, cache_dir: Path):
    from organdetr.data.cache_dataset import class_map_from_plans
    from organdetr.datasets.nnunet import load_dataset
    from organdetr.preprocessing.cache import PreprocessConfig, list_cases, load_plans, preprocess_dataset

    dataset = load_dataset(dataset_root)
    case_ids = sorted(c.case_id for c in dataset.cases)
    n_test = max(1, round(cfg.test_fraction * len(case_ids)))
    order = np.random.default_rng(cfg.seed).permutation(len(case_ids))
    test_ids = sorted(case_ids[i] for i in order[:n_test])
    pre = PreprocessConfig(input_size=(cfg.input_size,) * 3, fit="resize", hu_window=cfg.hu_window)
    summary = preprocess_dataset(
        dataset_root, cache_dir, pre, workers=max(1, cfg.threads), progress=cfg.progress
    )
    if summary.failed:
        case_id, message = summary.failed[0]
        raise InputError(
            dataset_root, f"{len(summary.failed)} phantom case(s) failed to preprocess: {message}"
        )
    cached = set(list_cases(cache_dir))
    train_ids = [c for c in case_ids if c not in set(test_ids) and c in cached]
    classes = class_map_from_plans(load_plans(cache_dir), cache_dir / "plans.json")
    return train_ids, test_ids, cache_dir, classes


def measure_step_seconds(train_cfg, cache_dir: Path, case_ids: Sequence[str], batch_size: int) -> float:
    """Seconds per optimizer step on this machine, data loading and augmentation included.

    Runs 5 real steps (cached cases, the config's augmentation, a throw-away model) and returns the
    median of the last 3 (the first two pay one-off allocation and kernel-selection costs). Only used to
    print the expected time: the budget is a step count.
    """
    import torch

    from organdetr.data.cache_dataset import CacheDataset, collate
    from organdetr.models import detector_from_config

    torch.manual_seed(0)
    dataset = CacheDataset(cache_dir, list(case_ids), train_cfg.augment)
    detector = detector_from_config(train_cfg, dataset.num_classes, dataset.input_size)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-5)
    times = []
    for step in range(5):
        t0 = time.perf_counter()
        images, targets = collate(
            [dataset[((step * batch_size + b) % len(dataset), step)] for b in range(batch_size)]
        )
        loss = detector.loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def _train_config(
    cfg: DemoConfig, cache_dir: Path, train_ids: list[str], preset: str, overrides: Sequence[str] = ()
):
    """``preset`` (+ ``overrides``) with the demo's data split, step budget, optimiser and CPU settings."""
    from organdetr.training.config import load_config, replace_section

    train_cfg = load_config(preset, list(overrides))
    train_cfg = replace_section(
        train_cfg, "data", cache_dir=str(cache_dir), train_cases=list(train_ids), val_cases=[],
        batch_size=cfg.batch_size, num_workers=cfg.num_workers,
    )  # fmt: skip
    train_cfg = replace_section(
        train_cfg, "train", steps=cfg.steps, val_every=0, checkpoint_every=1000, device="cpu",
        seed=cfg.seed, log_every=max(1, min(10, cfg.steps // 50)), progress=cfg.progress,
    )  # fmt: skip
    warmup = min(cfg.warmup_steps, max(1, cfg.steps // 10))
    return replace_section(train_cfg, "optim", warmup_steps=warmup, lr=cfg.lr, grad_clip=cfg.grad_clip)


def _train(train_cfg, run_dir: Path) -> Path:
    """Train ``train_cfg`` into ``run_dir`` for its ``train.steps`` optimizer steps (the cosine schedule
    spans exactly them); an earlier demo's run there is replaced."""
    import shutil

    from organdetr.training.fit import fit

    if (run_dir / "config.yaml").is_file():  # an earlier demo's run: start afresh
        shutil.rmtree(run_dir)
    fit(train_cfg, run_dir)
    return run_dir


# ----------------------------------------------------------------------------- held-out evaluation


def _ground_truth_boxes(
    dataset_root: Path, case_ids: Sequence[str], classes: dict[int, str]
) -> dict[str, list[dict]]:
    """Per case: ``[{label, box_mm}]`` from its label map on the original scan."""
    from organdetr.core.boxes.labels import boxes_from_labels
    from organdetr.datasets.nnunet import label_path
    from organdetr.io.images import read_label_map

    boxes = {}
    for case_id in case_ids:
        path = label_path(dataset_root, case_id)
        labels = read_label_map(path)
        organ_boxes = boxes_from_labels(labels.array, labels.geometry, classes, path=path)
        boxes[case_id] = [{"label": b.name, "box_mm": [float(v) for v in b.box_mm]} for b in organ_boxes]
    return boxes


PRIOR_ROWS = {"prior (mean box, mm)": "mm", "prior (mean box, field of view)": "fov"}
"""Report row name -> :mod:`organdetr.models.baselines.prior` kind."""


def _evaluate_held_out(cfg, runs, dataset_root, cache_dir, train_ids, test_ids, classes, out):
    """Predict the held-out raw scans with every trained model and score them, and the priors, against
    the boxes of their label maps -> ``({row name: EvaluationResult}, held-out data of the detector)``."""
    from organdetr.datasets.nnunet import image_path
    from organdetr.evaluation import Detection, GroundTruth, evaluate_detections
    from organdetr.inference.predict import Predictor, ScanInput, predict_scans
    from organdetr.models.baselines.prior import fit_box_prior, prior_detections
    from organdetr.preprocessing.cache import load_case

    names = list(classes.values())
    truth = _ground_truth_boxes(dataset_root, test_ids, classes)
    ground_truth = [
        GroundTruth(c, g["label"], np.asarray(g["box_mm"], dtype=np.float64))
        for c in test_ids
        for g in truth[c]
    ]
    scans = [ScanInput(Path(image_path(dataset_root, c)), c) for c in test_ids]
    evaluations, predictions = {}, {}
    for name, run_dir in runs.items():
        pred_dir = out / ("predictions" if name == "Organ-DETR" else f"predictions_{name}")
        summary = predict_scans(Predictor.from_checkpoint(run_dir, "cpu"), scans, pred_dir, overlay=False,
                                progress=cfg.progress)  # fmt: skip
        if summary.failed:
            raise InputError(summary.failed[0][0], f"prediction failed: {summary.failed[0][1]}")
        predictions[name] = {
            c: json.loads((pred_dir / f"{c}.json").read_text(encoding="utf-8")) for c in test_ids
        }
        detections = [
            Detection(c, d["label"], float(d["score"]), np.asarray(d["box_mm"], dtype=np.float64))
            for c in test_ids
            for d in predictions[name][c]["detections"]
        ]
        evaluations[name] = evaluate_detections(
            detections, ground_truth, names, max_detections=1, mode="coco"
        )
    prior = fit_box_prior(load_case(cache_dir, c, mmap=True)[2] for c in train_ids)
    records = [load_case(cache_dir, c, mmap=True)[2] for c in test_ids]
    for row, kind in PRIOR_ROWS.items():
        evaluations[row] = evaluate_detections(
            prior_detections(prior, records, kind), ground_truth, names, max_detections=1, mode="coco"
        )
    held_out = {
        "predictions": predictions["Organ-DETR"],
        "truth": truth,
        "scans": {c: s.path for c, s in zip(test_ids, scans, strict=True)},
        "absent_scores": _absent_scores(predictions["Organ-DETR"], truth),
    }
    return evaluations, held_out


def _absent_scores(predictions: dict[str, dict], truth: dict[str, list[dict]]) -> dict[str, float]:
    """Mean and max score the model gives organs present in a held-out scan, and organs absent from it."""
    present, absent = [], []
    for case_id, prediction in predictions.items():
        here = {g["label"] for g in truth[case_id]}
        for d in prediction["detections"]:
            (present if d["label"] in here else absent).append(float(d["score"]))
    stats = {"present_mean": float(np.mean(present)) if present else float("nan"),
             "present_min": float(np.min(present)) if present else float("nan"),
             "absent_mean": float(np.mean(absent)) if absent else float("nan"),
             "absent_max": float(np.max(absent)) if absent else float("nan"),
             "absent_count": len(absent), "present_count": len(present)}  # fmt: skip
    if present and absent:  # how often a present organ outscores an absent one (AUC)
        p, a = np.asarray(present)[:, None], np.asarray(absent)[None, :]
        stats["auc"] = float(((p > a) + 0.5 * (p == a)).mean())
    return stats


def _plot_loss_curve(path: Path, run_dir: Path) -> bool:
    """Loss terms against the optimizer step from ``RUN/train_log.csv``; False when there is no log."""
    csv_path = run_dir / "train_log.csv"
    if not csv_path.is_file():
        return False
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "step" not in rows[0]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [float(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    # the total and the last decoder layer's terms (auxiliary-layer terms "loss_x_<n>" would crowd the plot)
    keys = [
        k for k in rows[0] if k == "loss" or (k.startswith("loss_") and not k.rsplit("_", 1)[-1].isdigit())
    ]
    for key in keys:
        values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
        ax.plot(steps, values, label=key, linewidth=2.2 if key == "loss" else 1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weighted loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=100, format="png")
    return True


# ----------------------------------------------------------------------------- real CT


def _predict_real_ct(
    cfg: DemoConfig, run_dir: Path, out_dir: Path, classes: dict[int, str], echo
) -> list[dict]:
    """Predict the real CT scans of the shared data pack (skipped with a message when absent)."""
    from organdetr.inference.overlay import render_overlay
    from organdetr.inference.predict import Predictor, ScanInput, case_id_of, predict_scans
    from organdetr.io.images import read_image

    shared = find_shared_data(cfg.shared_data)
    if shared is None:
        echo(
            "      skipped: no real CT found "
            f"(looked in ../shared/data, ./shared/data and ${SHARED_DATA_ENV})"
        )
        return []
    scans = [
        ScanInput(shared / rel, case_id_of(shared / rel))
        for rel in REAL_CT_CANDIDATES
        if (shared / rel).exists()
    ]
    predictor = Predictor.from_checkpoint(run_dir, "cpu")
    summary = predict_scans(predictor, scans, out_dir, overlay=False, progress=cfg.progress)
    results = []
    for scan in scans:
        if scan.case_id not in summary.done:
            continue
        prediction = json.loads((out_dir / f"{scan.case_id}.json").read_text(encoding="utf-8"))
        truth = _real_ct_truth(shared, scan, set(classes.values()))
        volume = read_image(scan.path)
        kind = "DICOM series" if scan.path.is_dir() else "NIfTI"
        title = f"real CT {scan.path.name} ({kind}): phantom-trained model"
        render_overlay(
            volume, prediction["detections"], out_dir / f"{scan.case_id}.png", ground_truth=truth, title=title
        )
        results.append(
            {
                "name": scan.case_id,
                "path": str(scan.path),
                "prediction": prediction,
                "truth": truth,
                "size": list(volume.geometry.size),
                "spacing": list(volume.geometry.spacing),
                "orientation": _orientation(volume.geometry),
                "versus_truth": _versus_truth(scan.case_id, prediction["detections"], truth),
            }
        )
    for path, reason in summary.failed:
        echo(f"      could not predict {path}: {reason}")
    return results


def _versus_truth(case_id: str, detections: list[dict], truth: list[dict]) -> str | None:
    """One honest sentence comparing the boxes with TotalSegmentator's, for the organs both have."""
    if not truth:
        return None
    from organdetr.evaluation import Detection, GroundTruth, evaluate_detections

    names = sorted({t["label"] for t in truth})
    dets = [Detection(case_id, d["label"], float(d["score"]), np.asarray(d["box_mm"])) for d in detections
            if d["label"] in names]  # fmt: skip
    gts = [GroundTruth(case_id, t["label"], np.asarray(t["box_mm"])) for t in truth]
    summary = evaluate_detections(dets, gts, names, max_detections=1).summary
    centre = summary.get("center_error_mm_median")
    centre_text = (
        f"{centre:.0f} mm"
        if isinstance(centre, float) and np.isfinite(centre)
        else "n/a (no box at IoU >= 0.1)"
    )
    ap10, ap50 = summary.get("AP10", float("nan")), summary.get("AP50", float("nan"))
    return (
        f"Against TotalSegmentator's boxes for {', '.join(names)}: AP10 {ap10:.2f}, AP50 {ap50:.2f}, "
        f"median centre error {centre_text} (one scan: a sanity check of the geometry, not an accuracy "
        "figure)."
    )


def _orientation(geometry) -> str:
    from organdetr.core.geometry import axis_codes

    return axis_codes(geometry)


def _real_ct_truth(shared: Path, scan, names: set[str]) -> list[dict]:
    """TotalSegmentator boxes of the organs the phantom also has (for the picture), or ``[]``."""
    rel = next((r for r in REAL_CT_LABELS if shared / r == scan.path), None)
    if rel is None or not (shared / REAL_CT_LABELS[rel]).is_file():
        return []
    try:
        from organdetr.core.boxes.labels import boxes_from_labels
        from organdetr.datasets.labels import load_class_map
        from organdetr.io.images import read_label_map

        labels = read_label_map(shared / REAL_CT_LABELS[rel])
        ts_classes = load_class_map("totalsegmentator")
        present = {i: n for i, n in ts_classes.items() if n in names}
        boxes = boxes_from_labels(
            np.where(np.isin(labels.array, list(present)), labels.array, 0), labels.geometry, present
        )
    except (InputError, ImportError, KeyError, ValueError):
        return []
    return [{"label": b.name, "box_mm": [float(v) for v in b.box_mm]} for b in boxes]


# ----------------------------------------------------------------------------- report


SUMMARY_KEYS = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50", "center_error_mm_median")


def summary_markdown(summary: dict) -> str:
    """The headline numbers as a one-row markdown table (NaN / missing -> "-")."""
    keys = [k for k in SUMMARY_KEYS if k in summary]
    cells = []
    for key in keys:
        value = summary[key]
        ok = isinstance(value, int | float) and np.isfinite(value)
        cells.append(
            ("%.1f" if key.endswith("_mm") or key.endswith("_median") else "%.3f") % value if ok else "-"
        )
    header = [k.replace("center_error_mm_median", "median centre error (mm)") for k in keys]
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---:|" * len(keys), "| " + " | ".join(cells) + " |"]
    )


def comparison_markdown(evaluations: dict) -> str:
    """One row per detector / baseline / prior: mAP, AP50, AP75, mAR, mAP.10:.50, median centre error."""
    keys = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50", "center_error_mm_median")
    header = ["mAP", "AP50", "AP75", "mAR", "mAP.10:.50", "median centre error (mm)"]
    lines = ["| | " + " | ".join(header) + " |", "|---|" + "---:|" * len(keys)]
    for name, evaluation in evaluations.items():
        cells = []
        for key in keys:
            value = evaluation.summary.get(key)
            ok = isinstance(value, int | float) and np.isfinite(value)
            cells.append(("%.1f" if key.endswith("_median") else "%.3f") % value if ok else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_report(
    cfg, report: Path, runs: dict, evaluations: dict, held_out, real, timings, run: dict
) -> None:
    """``report/``: metrics of the detector (json, csv, md, PR curves: the evaluation's writer) with the
    comparison rows, loss curves, overlays, REPORT.md."""
    from organdetr.evaluation import write_report
    from organdetr.evaluation.report import describe, to_markdown
    from organdetr.formats.html_viewer import write_viewer
    from organdetr.inference.overlay import render_overlay
    from organdetr.io.images import read_image

    report.mkdir(parents=True, exist_ok=True)
    evaluation = evaluations["Organ-DETR"]
    extra = {
        "held_out_cases": run["held_out_cases"],
        "train_steps": run["steps"],
        "preset": cfg.preset,
        "comparison": {name: _finite(e.summary) for name, e in evaluations.items()},
        "absent_organ_scores": held_out["absent_scores"],
    }
    write_report(evaluation, report, extra=extra)
    has_loss = _plot_loss_curve(report / "loss_curve.png", runs["Organ-DETR"])
    if "seg2box" in runs:
        _plot_loss_curve(report / "loss_curve_seg2box.png", runs["seg2box"])
    overlays = []
    for case_id in list(held_out["predictions"])[: cfg.max_overlays]:
        path = report / "overlays" / f"{case_id}.png"
        title = f"held-out phantom {case_id}: predictions (colour) vs ground truth (white dashed)"
        volume = read_image(held_out["scans"][case_id])
        detections = held_out["predictions"][case_id]["detections"]
        render_overlay(volume, detections, path, ground_truth=held_out["truth"][case_id], title=title)
        overlays.append(path)
    write_viewer(report / "viewer.html", held_out["scans"], held_out["predictions"], held_out["truth"])
    tables = {"summary": summary_markdown(evaluation.summary), "per_class": to_markdown(evaluation),
              "protocol": describe(evaluation), "comparison": comparison_markdown(evaluations),
              "absent": held_out["absent_scores"]}  # fmt: skip
    text = _report_text(cfg, report, runs, tables, overlays, real, timings, run, has_loss)
    atomic.write_text(report / "REPORT.md", text)


def _finite(summary: dict) -> dict:
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and np.isfinite(v)}


def _report_text(cfg, report, runs, tables, overlays, real, timings, run, has_loss) -> str:
    def rel(path: Path) -> str:
        return os.path.relpath(path, report)

    seconds = ", ".join(f"{name} {sec:.2f} s/step" for name, sec in run["step_seconds"].items())
    absent = tables["absent"]
    baseline = (
        " The **seg2box** baseline (MONAI BasicUNet trained with CE + Dice; box = largest connected "
        f"component per organ, score = its mean probability) was trained for the same {run['steps']} steps "
        "on the same cases."
        if "seg2box" in runs
        else " The seg2box baseline was not trained (`--no-baselines`)."
    )
    lines = [
        "# Organ-DETR demo report",
        "",
        f"Organ-DETR (`{cfg.preset}` preset: MSA encoder, two-stage deformable decoder with iterative box "
        "refinement, contrastive denoising, Dense Query Matching, multiscale segmentation loss) trained on "
        f"CPU for **{run['steps']} optimizer steps** of batch {cfg.batch_size} ({seconds} measured before "
        f"training) on synthetic abdomen phantoms ({cfg.cases} scans, {len(run['classes'])} organ classes, "
        f"model grid {cfg.input_size}^3), then evaluated on {run['held_out_cases']} held-out phantom scans "
        "it never saw, read from their raw NIfTI files exactly as `organdetr predict` reads a user's scan."
        + baseline,
        "",
        "The phantoms vary the field of view as real scans do (scan range from thorax-abdomen-pelvis down to "
        "an upper-abdomen slab, patient off-centre on the table, body size, the scanner's world origin), so "
        "organs are cut by the field's edge or absent from it and a position prior fails. These numbers "
        "measure a minutes-long CPU run on synthetic data: they show what the pipeline and the method do, "
        "they are **not** a statement about accuracy on real CT.",
        "",
        "## Held-out metrics, beside what a model must beat",
        "",
        "Boxes in LPS mm; " + tables["protocol"] + ". The priors never look at the image: the mean "
        "training box of each organ in scanner millimetres, or in normalised field-of-view coordinates "
        "(score = the organ's frequency in training).",
        "",
        tables["comparison"],
        "",
        f"Organ presence: the model scored the {absent['present_count']} organs present in the held-out "
        f"scans {absent['present_mean']:.2f} on average (lowest {absent['present_min']:.2f}) and the "
        f"{absent['absent_count']} organs absent from them {absent['absent_mean']:.2f} (highest "
        f"{absent['absent_max']:.2f}); a present organ outscores an absent one "
        f"{100 * absent.get('auc', float('nan')):.0f} % of the time.",
        "",
        "Organ-DETR per organ (`metrics.md`, `metrics.csv`, `metrics.json`; matched pairs with per-face "
        "errors in `matches.csv`):",
        "",
        tables["per_class"],
        "",
        "## Precision-recall",
        "",
        "![PR curves](pr_curves.png)",
        "",
    ]  # fmt: skip
    if has_loss:
        logs = f"Logs and checkpoints: `{runs['Organ-DETR']}` (`train_log.csv`, `tensorboard/`, `last/`)."
        lines += ["## Training loss", "", "![loss](loss_curve.png)", "", logs, ""]
        if "seg2box" in runs:
            lines += ["seg2box:", "", "![seg2box loss](loss_curve_seg2box.png)", ""]
    lines += ["## Held-out cases", "",
              "Three orthogonal views (soft-tissue window W400/L40) through the organs' centre: predicted "
              "boxes in colour (solid where the slice cuts the box, dotted where it does not), ground "
              "truth white dashed.", ""]  # fmt: skip
    lines += [f"![{p.stem}]({rel(p)})" for p in overlays] + [""]
    lines += ["## Real CT", ""] + _real_ct_lines(real)
    lines += ["## Time", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    lines += ["", f"Machine: {os.cpu_count()} CPU cores visible, torch threads {cfg.threads}.", ""]
    return "\n".join(lines)


def _real_ct_lines(real: list[dict]) -> list[str]:
    if not real:
        return [
            "Skipped: the real-data pack (`../shared/data` or `$ORGANDETR_SHARED_DATA`) was not found.",
            "",
        ]
    lines = [
        "The same model on real scans shows that real geometry (orientation, anisotropic spacing, DICOM "
        "series) is handled end to end: boxes come back in the scan's own voxel indices and in LPS mm. "
        "A model trained for minutes on phantoms **does not find real organs well**; the white dashed "
        "boxes are TotalSegmentator's labels of the organs the phantom also has, where the data pack "
        "has them.",
        "",
    ]  # fmt: skip
    for item in real:
        top = (
            ", ".join(f"{d['label']} {d['score']:.2f}" for d in item["prediction"]["detections"][:5])
            or "none"
        )
        spacing = ", ".join(f"{s:.3g}" for s in item["spacing"])
        lines += [f"### {item['name']}", "",
                  f"`{item['path']}`: {'x'.join(map(str, item['size']))} voxels, spacing {spacing} mm, "
                  f"orientation {item['orientation']}. Top scores: {top}.", ""]  # fmt: skip
        if item.get("versus_truth"):
            lines += [item["versus_truth"], ""]
        lines += [f"![{item['name']}](real_ct/{item['name']}.png)", ""]
    return lines


__all__ = [
    "PRIOR_ROWS",
    "DemoConfig",
    "DemoResult",
    "find_shared_data",
    "measure_step_seconds",
    "comparison_markdown",
    "run_demo",
    "summary_markdown",
]
