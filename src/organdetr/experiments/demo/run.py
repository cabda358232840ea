"""The demo's pipeline: its config and result, the timed steps from phantoms to the report, and the
measured time of one optimizer step.

The budget is a step count, never wall-clock time: the result does not depend on the machine's load. The
expected time is measured (a few steps of each model) and printed before training starts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from organdetr.datasets.nnunet import load_dataset
from organdetr.datasets.synthetic.appearance import AppearanceConfig
from organdetr.datasets.synthetic.from_labels import FromLabelsConfig
from organdetr.datasets.synthetic.from_labels_dataset import write_from_labels_dataset
from organdetr.datasets.synthetic.label_sources import phantom_label_source, read_label_source
from organdetr.datasets.synthetic.phantom import write_synthetic_dataset
from organdetr.datasets.synthetic.writing import case_seeds
from organdetr.experiments.demo.evaluate import evaluate_held_out
from organdetr.experiments.demo.real_ct import find_shared_data, predict_real_ct
from organdetr.experiments.demo.report import write_demo_report
from organdetr.experiments.demo.training import (
    measure_step_seconds,
    thread_split,
    threads_text,
    torch_threads,
    train_config,
    train_models,
)
from organdetr.preprocessing.cache import list_cases
from organdetr.preprocessing.fingerprint import fingerprint_dataset
from organdetr.preprocessing.planning import choose_spacing, intensity_plan
from organdetr.preprocessing.plans import PreprocessConfig, class_map_from_plans, load_plans
from organdetr.preprocessing.run import preprocess_dataset
from organdetr.runtime.errors import InputError

ABDOMEN_WINDOW = (-200.0, 300.0)
"""HU window of the demo's cache: the abdominal organs' soft-tissue range (air, gas and bone clip to its
ends). Measured on the demo phantoms, Organ-DETR reached 3x the held-out mAP of the -1000..1000 window at the
same 600 steps (BENCHMARKS.md, "Demo design"); the nnU-Net-style labelled-foreground window that
``organdetr preprocess`` uses by default comes out at about -975..256 HU here, because the phantom's (and
TotalSegmentator's) stomach label includes its gas."""

DATA_KINDS = ("phantom", "from-labels")
FROM_LABELS_PLAN = ((5.8, 5.8, 6.8), (-133.0, 367.0))
"""Spacing (mm, for a 64^3 grid; scaled for others) and HU window of ``data="from-labels"``: what the plan
chooses for the phantoms (BENCHMARKS.md issue 23). The plan's own rules would read the synthetic scans'
random intensities and spacings, which say nothing about the scans the model will see."""
TS_A_LABEL_MAP = "totalsegmentator/example_seg_fast_force_split.nii.gz"


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
    # the U-Net on the 2x average-pooled grid, its logits upsampled back (seg2box.input_stride): measured on
    # the demo's data at 1000 steps (BENCHMARKS.md "Issue 20"), held-out mAP 0.068 / 0.077 (seeds 0 / 1)
    # against the full grid's 0.032 and 0.054 (seed 0, two runs) / 0.089 (seed 1): as strong within the runs'
    # spread (mean 0.073 vs 0.058), for 2.5x fewer CPU-seconds per step
    baseline_overrides: tuple[str, ...] = ("seg2box.features=[8, 8, 16, 32, 64, 8]", "seg2box.input_stride=2")
    baselines: bool = True  # also train seg2box (the priors are always scored: they cost nothing)
    input_size: int = 64
    # plan=True: the voxel spacing (fit="pad") and the HU window come from the training phantoms'
    # fingerprint by `organdetr plan`'s rules (preprocessing/planning.py), replacing target_spacing /
    # hu_window below. Measured (BENCHMARKS.md "Issue 20" / "Issue 23"): a fixed spacing beat each whole scan
    # resized onto the grid (+10 % test mAP, 3 seeds: the phantoms' scan ranges vary 87-605 mm in k, so a
    # resized k voxel was 1.4-9.4 mm), and the plan's 5.9 x 5.9 x 6.7 mm with HU -149..352 beat the hand-set
    # 6.5 x 6.5 x 6.0 mm, -200..300 (+11 % mAP, +22 % AP75, 2 seeds). plan=False: target_spacing (None:
    # resize) and hu_window as given.
    plan: bool = True
    target_spacing: tuple[float, float, float] | None = (6.5, 6.5, 6.0)
    hu_window: tuple[float, float] = ABDOMEN_WINDOW
    batch_size: int = 2
    lr: float = 1e-3  # a few hundred CPU steps: 5x the presets' DETR-style rates (screened in BENCHMARKS.md)
    grad_clip: float = 1.0  # DETR's 0.1 slows such a short run
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 2
    # concurrent=True (and threads >= 2): seg2box trains in a second process beside Organ-DETR, the threads
    # split between them (training.thread_split), instead of after it: measured on 2 cores, the same two
    # 1000-step trainings in 466 s instead of 708 s, the demo in 8.9 min instead of 13.3 (BENCHMARKS.md
    # "Issue 20"); the step budgets are unchanged
    concurrent: bool = True
    num_workers: int = 0  # augmentation in the main process: on 2 cores a worker only competes with torch
    max_overlays: int = 4
    # data="from-labels": train on scans synthesised from label maps (issue 24): TotalSegmentator's map of
    # the pack's TS-A (its labels only; its image stays a test scan) and `phantom_sources` phantoms' maps
    data: str = "phantom"
    phantom_sources: int = 20
    # the share of the cases drawn from TS-A's map, the rest from the phantoms': uniform draws over the 21
    # maps gave the real anatomy ~5 % and the model learned the phantoms' (TS-A AP50 0.20 at 1000 steps;
    # 0.50 at a share of 0.5; BENCHMARKS.md "Issue 24")
    real_share: float = 0.5
    # CT-like intensities for every case (the demo scores CT only): fully random contrasts for half the cases
    # are what finds organs in MR, and cost CT at this budget (TS-A AP50 0.60 -> 1.00, TS-B 0.00 -> 0.33 with
    # CT-like intensities only; 2000 steps, one seed; BENCHMARKS.md "Issue 24")
    ct_prior: float = 1.0
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
            "target_spacing": (13.0, 13.0, 12.0),  # the same field of view on the 32^3 grid (plan=False)
            "batch_size": 2,
            "warmup_steps": 10,
            "max_overlays": 2,
        }
        base.update(changes)
        return cls(**base)

    def grid_text(self) -> str:
        """``64^3 grid at 6.5 x 6.5 x 6 mm`` or ``64^3 grid (whole scan resized)``, for console and report."""
        if self.plan and not self._planned:
            source = (
                "the training phantoms" if self.data == "phantom" else "the phantoms' plan (FROM_LABELS_PLAN)"
            )
            return f"{self.input_size}^3 grid, spacing and HU window planned from {source}"
        if self.target_spacing is None:
            return f"{self.input_size}^3 grid (whole scan resized)"
        return f"{self.input_size}^3 grid at " + " x ".join(f"{s:g}" for s in self.target_spacing) + " mm"

    def apply_plan(self, dataset_root: Path, train_ids: Sequence[str]) -> None:
        """Take the spacing and HU window that `organdetr plan` chooses for ``train_ids`` of the dataset
        (the held-out cases are not looked at)."""
        fingerprint = fingerprint_dataset(dataset_root, case_ids=train_ids)
        data, _ = choose_spacing(fingerprint, (self.input_size,) * 3)
        intensity, _ = intensity_plan(fingerprint)
        self.target_spacing = tuple(float(v) for v in data["target_spacing"])
        self.hu_window = tuple(float(v) for v in intensity["hu_window"])
        self._planned = True

    def __post_init__(self) -> None:
        self._planned = False
        self.out_dir = Path(self.out_dir)
        self.baseline_overrides = tuple(self.baseline_overrides)
        if self.cases < 3:
            raise InputError(None, f"--cases must be >= 3 (train + held-out), got {self.cases}")
        if self.steps < 1:
            raise InputError(None, f"--steps must be >= 1, got {self.steps}")
        if self.threads < 1:
            raise InputError(None, f"--threads must be >= 1, got {self.threads}")
        if not (0.0 <= self.real_share <= 1.0 and 0.0 <= self.ct_prior <= 1.0):
            raise InputError(
                None, f"real_share and ct_prior must be in [0, 1], got {self.real_share}, {self.ct_prior}"
            )
        if self.data not in DATA_KINDS:
            raise InputError(None, f"--data must be one of {', '.join(DATA_KINDS)}, got {self.data!r}")

    def data_text(self) -> str:
        """What the model trains on, for console and report."""
        if self.data == "phantom":
            return "synthetic abdomen phantoms"
        return (
            "scans synthesised from label maps (TotalSegmentator's map of the pack's TS-A, where found, for "
            f"{self.real_share:.0%} of the cases, and {self.phantom_sources} phantoms' maps: random "
            f"deformation, field of view and appearance, {self.ct_prior:.0%} of it CT-like)"
        )


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
    torch.set_num_threads(max(1, cfg.threads))
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(echo)
    split = thread_split(cfg.threads, cfg.concurrent) if cfg.baselines else None
    n = 6 if split or not cfg.baselines else 7  # side by side, the two trainings are one step
    step = iter(range(1, n + 1))

    with clock.step(
        "synth", f"{next(step)}/{n} synthesising {cfg.cases} {cfg.data_text()} with organ labels"
    ):
        dataset_root = _synthesise(cfg, out / "data", echo)
    with clock.step("preprocess", f"{next(step)}/{n} preprocessing onto a {cfg.grid_text()}"):
        train_ids, test_ids, cache_dir, classes = _preprocess(cfg, dataset_root, out / "cache")
    if cfg.plan:
        echo(f"      planned: {cfg.grid_text()}, HU {cfg.hu_window[0]:g}..{cfg.hu_window[1]:g}")
    echo(
        f"      {len(train_ids)} training cases, {len(test_ids)} held-out cases, {len(classes)} organ classes"
    )
    runs, step_seconds, train_seconds = _train_models(
        cfg, cache_dir, train_ids, split, lambda key, text: clock.step(key, f"{next(step)}/{n} {text}"), echo
    )
    if split:  # "train" timed both side by side: each one's own time within it
        clock.timings.update({f"train_{name}": sec for name, sec in train_seconds.items()})
    with clock.step(
        "evaluate", f"{next(step)}/{n} predicting and scoring the {len(test_ids)} held-out cases"
    ):
        evaluations, held_out = evaluate_held_out(
            cfg, runs, dataset_root, cache_dir, train_ids, test_ids, classes, out
        )
    report = out / "report"
    with clock.step("real_ct", f"{next(step)}/{n} predicting a real CT"):
        real = predict_real_ct(cfg, runs["Organ-DETR"], report / "real_ct", classes, echo)
    with clock.step("report", f"{next(step)}/{n} writing the report"):
        run = {
            "steps": cfg.steps,
            "step_seconds": step_seconds,
            "classes": classes,
            "held_out_cases": len(test_ids),
        }
        write_demo_report(cfg, report, runs, evaluations, held_out, real, clock.timings, run)
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


def _train_models(cfg: DemoConfig, cache_dir: Path, train_ids: list[str], split, step, echo):
    """Organ-DETR and (``cfg.baselines``) seg2box: their step time measured at the threads each will use,
    the expected time printed, then trained (beside each other when ``split``; :mod:`.training`).
    Returns ``(runs, step_seconds, train_seconds)``: name -> run folder, measured seconds per step, wall
    seconds of its training."""
    models = {"Organ-DETR": (cfg.preset, (), "run"),
              **({"seg2box": (cfg.baseline_preset, cfg.baseline_overrides, "run_seg2box")} if cfg.baselines
                 else {})}  # fmt: skip
    configs = {name: train_config(cfg, cache_dir, train_ids, preset, overrides)
               for name, (preset, overrides, _) in models.items()}  # fmt: skip
    threads = dict(zip(configs, split or (cfg.threads,) * len(configs), strict=False))
    step_seconds = {}
    for name, train_cfg in configs.items():
        with torch_threads(threads[name]):
            step_seconds[name] = measure_step_seconds(train_cfg, cache_dir, train_ids, cfg.batch_size)
    totals = [seconds * cfg.steps for seconds in step_seconds.values()]
    expected = max(totals) if split else sum(totals)
    measured = [f"{name} {s:.2f} s/step on {threads_text(threads[name])}" for name, s in step_seconds.items()]
    echo(
        f"      {cfg.steps} steps of batch {cfg.batch_size} per model; measured "
        + ", ".join(measured)
        + f" -> expect about {expected / 60:.0f} min of training on this machine"
        + (" (the two side by side)" if split else "")
    )
    jobs = {name: (configs[name], cfg.out_dir / folder, f"{name} ({preset} preset)")
            for name, (preset, _, folder) in models.items()}  # fmt: skip
    seconds = train_models(jobs, split, step, echo)
    return {name: run_dir for name, (_, run_dir, _) in jobs.items()}, step_seconds, seconds


def _synthesise(cfg: DemoConfig, data_dir: Path, echo: Callable[[str], None]) -> Path:
    workers = max(1, cfg.threads)
    if cfg.data == "phantom":
        root = data_dir / "Dataset990_OrganPhantom"
        return Path(
            write_synthetic_dataset(root, cfg.cases, seed=cfg.seed, workers=workers, progress=cfg.progress)
        )
    root = data_dir / "Dataset991_FromLabels"
    if '"from-labels"' in _text_or_empty(root / "dataset.json"):  # an earlier demo's data: write afresh
        shutil.rmtree(root)
    shared = find_shared_data(cfg.shared_data)
    sources = (
        [read_label_source(shared / TS_A_LABEL_MAP)] if shared and (shared / TS_A_LABEL_MAP).is_file() else []
    )
    if not sources:
        echo("      no TotalSegmentator label map found: synthesising from the phantoms' label maps only")
    sources += [
        phantom_label_source(s) for s in case_seeds(cfg.seed + 1, max(cfg.phantom_sources, 1 - len(sources)))
    ]
    return write_from_labels_dataset(
        root, sources, cfg.cases, seed=cfg.seed, workers=workers, progress=cfg.progress,
        real_share=cfg.real_share, cfg=FromLabelsConfig(appearance=AppearanceConfig(p_ct_prior=cfg.ct_prior)),
    )  # fmt: skip


def _text_or_empty(path: Path) -> str:
    return path.read_text("utf-8", errors="replace") if path.is_file() else ""


def _fit(cfg: DemoConfig) -> dict:
    """PreprocessConfig's fit keys: a fixed spacing (pad / crop) or the whole scan resized onto the grid."""
    if cfg.target_spacing is None:
        return {"fit": "resize"}
    return {"fit": "pad", "target_spacing": tuple(cfg.target_spacing)}


def _preprocess(cfg: DemoConfig, dataset_root: Path, cache_dir: Path):
    dataset = load_dataset(dataset_root)
    case_ids = sorted(c.case_id for c in dataset.cases)
    n_test = max(1, round(cfg.test_fraction * len(case_ids)))
    order = np.random.default_rng(cfg.seed).permutation(len(case_ids))
    test_ids = sorted(case_ids[i] for i in order[:n_test])
    if cfg.plan and cfg.data == "from-labels":
        spacing, cfg.hu_window = FROM_LABELS_PLAN
        cfg.target_spacing = tuple(s * 64 / cfg.input_size for s in spacing)
        cfg._planned = True
    elif cfg.plan:
        cfg.apply_plan(dataset_root, sorted(set(case_ids) - set(test_ids)))
    pre = PreprocessConfig(input_size=(cfg.input_size,) * 3, hu_window=cfg.hu_window, **_fit(cfg))
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


__all__ = ["ABDOMEN_WINDOW", "DemoConfig", "DemoResult", "run_demo"]
