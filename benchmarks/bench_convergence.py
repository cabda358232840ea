"""Convergence: held-out mAP / AP75 against optimizer steps (and CPU-seconds) until each run stops improving.

The demo's data (``bench_training_budget.prepare``): 200 phantoms of data seed 0 on the 64^3 grid with the
abdomen HU window, split 160 / 40 by seed 0; plus an independent test set of 40 phantoms of data seed 7
(``prepare_test_set``: clean, zoomed x1.1 and shifted +10 %). Every run trains in chunks of ``--chunk``
optimizer steps (batch 2), is validated on the 40 held-out scans after each chunk (COCO-style in mm, one
detection per organ: what ``fit`` does with ``data.val_cases``) and stops when the held-out mAP has not
improved for ``--patience`` steps or at its step cap. Budgets are steps, never wall clock: CPU-seconds (this
process's ``time.process_time`` of training, validation excluded, summed across chunks and restarts) are
reported beside the steps as a second x axis. The lr schedule of a run spans its cap (``train.steps = cap``),
so a run that stops by patience stopped before its schedule ended.

Runs (``--runs``, comma-separated ``KIND[+BACKBONE[.SIZE]][:SEED][@CAP][|KEY=VALUE...]``; ``+BACKBONE``: the
recipe with ``model.backbone=BACKBONE`` and ``model.backbone_size=SIZE`` (default S), issue 25's comparison,
e.g. ``organdetr+mednext_v2:1``, ``seg2box+resenc.B``; ``|KEY=VALUE``: an override after the recipe's, e.g.
``organdetr+primus:0@960|optim.lr=3e-4``; neither for ``nnunet``):

- ``organdetr:SEED``: the ``demo`` preset (lr 1e-3, grad clip 1.0, 50 warm-up steps), ``train.seed=SEED``.
- ``seg2box``: the demo's baseline, preset ``seg2box`` with ``seg2box.features=[8, 8, 16, 32, 64, 8]`` on the
  2x average-pooled grid (``seg2box.input_stride=2``; any ``+BACKBONE`` U-Net too) and the demo's optimiser
  (lr 1e-3, grad clip 1.0, 50 warm-up steps), as ``organdetr demo`` trains it.
- ``retinanet``: ``arch=retinanet``, MONAI's ``RetinaNetDetector`` with the defaults of
  ``organdetr.models.baselines.retinanet.RetinaNetConfig`` (MONAI's 3D detection tutorial: three anchor
  shapes per level, ATSS matching with 4 candidates, hard-negative sampler of 64 anchors per image at 30 %
  positives, BCE + smooth-L1, NMS 0.22, top-1000 per level) on the demo preset's backbone with a MONAI FPN
  of ``d_model`` channels. organdetr's trainer has only AdamW: the tutorial's SGD (lr 1e-2, momentum 0.9)
  is not available, so it gets the demo preset's optimiser.
- ``nnunet``: nnU-Net v2 itself (the ``nnunetv2`` package in its own venv, ``--nnunet-python``): its own
  ``3d_fullres`` planning, preprocessing and ``nnUNetTrainer`` (SGD, poly schedule over the cap, its
  augmentation, deep supervision, ``--nnunet-iters`` iterations per epoch, 250 being its own), on the CPU
  with the augmentation in the training process (``nnUNet_n_proc_DA=0``, so all its CPU-seconds are
  counted) and one of its own validation batches per epoch. After each chunk it predicts the 40 held-out
  scans (no mirroring); boxes = the largest 6-connected component per organ of its label map on each
  scan's own grid, scored by the mean softmax probability of the organ inside it (as seg2box), in mm
  against the same cached boxes. The chunk and the cap must be multiples of ``--nnunet-iters``. The test
  scans are predicted at the end (best and last point), clean only: zoom / shift exist only as caches.

Default caps keep each run under ~90 minutes on 2 cores at one torch thread (CPU per step, BENCHMARKS.md):
``demo`` ~0.6 CPU-s/step -> 8000 steps (~80 min); ``seg2box`` (pooled grid) ~0.4 CPU-s/step -> 2400 steps;
RetinaNet on the demo backbone (no fine level, dense heads on strides 8 / 16 / 32) is not measured yet:
6000 steps, check the s/step printed at its start. nnU-Net plans ``3d_fullres`` on these scans (~96 x 73 x 96
voxels of ~4 mm) with a 96^3 patch (the whole scan) and batch 2: a 2-step smoke run measured ~50 CPU-s per
step (first steps, shared machine): only ~100 steps in 90 minutes. It cannot meet the 90-minute bound at a
useful budget: run it in resumable pieces over several sessions, with shorter epochs so that its poly
schedule spans the cap (``--nnunet-iters 25 --chunk 100 nnunet@1000``: ~14 h). Each organdetr run prints
its measured s/step (``measure_step_seconds``, 5 steps) and projected time first; ``KIND@CAP`` sets a cap.

Resumable: every run keeps ``OUT/runs/<name>/progress.json`` (the curve, CPU-seconds so far, settings),
written atomically after each chunk, beside ``curve.csv``; a killed or stopped command continues from the
last completed chunk (``fit`` resumes exactly from ``train/last``). A finished run (patience or cap) is
skipped; a larger ``--patience`` continues it; another ``--chunk`` or cap is refused (the schedule spans
the cap).

Commands for the full benchmark (``OUT`` on a disk with a few GB free; one run per line, one after another
on a 2-core machine; any line can be re-run to continue)::

    python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch==2.13.0 nnunetv2==2.8.1
    B=benchmarks/bench_convergence.py; PY=.venv/bin/python; NN=/tmp/nnunet-venv/bin/python
    $PY $B --out OUT --runs organdetr:0 --chunk 400 --patience 1600 --threads 1
    $PY $B --out OUT --runs organdetr:1 --chunk 400 --patience 1600 --threads 1
    $PY $B --out OUT --runs seg2box --chunk 400 --patience 1600 --threads 1
    $PY $B --out OUT --runs retinanet --chunk 400 --patience 1600 --threads 1
    $PY $B --out OUT --runs nnunet@1000 --chunk 100 --patience 400 --nnunet-iters 25 --threads 1 \\
        --nnunet-python $NN     # ~14 h in total: stop it (Ctrl-C) and re-run the line to continue
    $PY $B --out OUT --report     # redraw OUT/curves.png and print the Markdown table

nnU-Net's halves can also be run by hand (what ``--runs nnunet`` does per chunk and at the end)::

    $NN $B nnunet-train --out OUT --to-step 100 --cap 1000 --nnunet-iters 25  # train (resuming), predict
    $NN $B nnunet-predict --out OUT --step 100 --split test --nnunet-iters 25  # predict the test scans
    $PY $B nnunet-score --out OUT                               # score every held-out prediction

Outputs: ``OUT/priors.json`` (mean-box priors, held-out and test set), per run ``OUT/runs/<name>/curve.csv``
(step, cpu_s, mAP, AP50, AP75, mAR, mAP_10_50) and ``final.json`` (also printed as one JSON line: why it
stopped, the best and last points, the test-set scores of the weights at both), and ``OUT/curves.png`` (mAP
and AP75 against steps and against CPU-seconds, one line per run, the priors as horizontal lines).

This file's top level imports only the standard library: the nnU-Net sub-commands run in nnU-Net's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

METRICS = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50")
CONDITIONS = ("clean", "zoom+10%", "shift+10%")  # the test set's (experiments.ablation.PERTURBATIONS)
CURVE_COLUMNS = ("step", "cpu_s", *METRICS)
DEFAULT_CAPS = {"organdetr": 8000, "seg2box": 2400, "retinanet": 6000, "nnunet": 1000}
DEMO_OPTIM = ["optim.lr=1e-3", "optim.grad_clip=1.0", "optim.warmup_steps=50"]
RECIPES: dict[str, tuple[str, list[str]]] = {  # kind -> (preset, overrides)
    "organdetr": ("demo", DEMO_OPTIM),
    # organdetr.experiments.demo.DemoConfig.baseline_overrides: the U-Net on the 2x pooled grid (as strong
    # within the runs' spread as the full grid at 1000 steps, 2.5x cheaper per step; BENCHMARKS.md issue 20)
    "seg2box": ("seg2box", ["seg2box.features=[8, 8, 16, 32, 64, 8]", "seg2box.input_stride=2", *DEMO_OPTIM]),
    "retinanet": ("demo", ["arch=retinanet", *DEMO_OPTIM]),
}
SMOKE_RECIPES: dict[str, tuple[str, list[str]]] = {  # --smoke: tiny models, for a 32^3 check of the plumbing
    "organdetr": ("tiny", ["optim.warmup_steps=5"]),
    "seg2box": ("seg2box", ["seg2box.features=[4, 4, 8, 16, 32, 4]", "optim.warmup_steps=5"]),
    "retinanet": ("tiny", ["arch=retinanet", "optim.warmup_steps=5"]),
}
NNUNET_DATASET = "Dataset513_PhantomConvergence"


# ----------------------------------------------------------------------------------------------------
# runs, the stopping rule and the resumable chunk loop (pure bookkeeping: no organdetr, no torch)


@dataclass(frozen=True)
class RunSpec:
    """One run: ``kind`` (organdetr / seg2box / retinanet / nnunet), training ``seed``, step ``cap``,
    ``backbone`` (``""``: the recipe's; else ``NAME`` or ``NAME.SIZE`` of ``model.backbone``)."""

    kind: str
    seed: int
    cap: int
    backbone: str = ""
    overrides: tuple[str, ...] = ()  # ``|KEY=VALUE`` after the recipe's (e.g. another ``optim.lr``)

    @property
    def name(self) -> str:
        extra = "".join(f"_{o.replace(' ', '').replace('/', '-')}" for o in self.overrides)
        return f"{self.kind}{'+' + self.backbone if self.backbone else ''}{extra}_seed{self.seed}"


def recipe_of(spec: RunSpec, smoke: bool = False) -> tuple[str, list[str]]:
    """``(preset, overrides)`` of a run: its kind's recipe, plus its backbone's overrides."""
    preset, overrides = (SMOKE_RECIPES if smoke else RECIPES)[spec.kind]
    if not spec.backbone:
        return preset, [*overrides, *spec.overrides]
    name, _, size = spec.backbone.partition(".")
    backbone = [f"model.backbone={name}", f"model.backbone_size={size or 'S'}"]
    return preset, [*overrides, *backbone, *spec.overrides]


def parse_run(text: str, cap: int | None = None) -> RunSpec:
    """``KIND[+BACKBONE[.SIZE]][:SEED][@CAP][|KEY=VALUE...]`` -> :class:`RunSpec` (``cap``: the ``--cap``
    for all runs, else per kind; ``|KEY=VALUE``: config overrides after the recipe's, named in the run)."""
    text, *extra = text.strip().split("|")
    if extra and text.partition("@")[0].partition(":")[0].partition("+")[0] == "nnunet":
        raise ValueError(f"{text!r}: nnU-Net brings its own recipe (no |KEY=VALUE)")
    head, _, cap_text = text.strip().partition("@")
    kind, _, seed_text = head.partition(":")
    kind, _, backbone = kind.partition("+")
    if backbone and kind == "nnunet":
        raise ValueError(f"{text!r}: nnU-Net brings its own network (no +BACKBONE)")
    if kind not in DEFAULT_CAPS:
        raise ValueError(f"unknown run kind {kind!r} in {text!r}; choose from {sorted(DEFAULT_CAPS)}")
    run_cap = int(cap_text) if cap_text else (cap if cap is not None else DEFAULT_CAPS[kind])
    if run_cap < 1:
        raise ValueError(f"the step cap of {text!r} must be >= 1")
    return RunSpec(kind, int(seed_text) if seed_text else 0, run_cap, backbone, tuple(extra))


def stop_reason(curve: list[dict], patience: int, cap: int) -> str | None:
    """Why a run with this curve (rows with ``step`` and ``mAP``, in step order) stops, or ``None``.

    ``"cap"`` once the last point reaches ``cap``; ``"patience"`` once the last point is ``patience`` or more
    steps after the best mAP so far (the first point that reached it: a tie is no improvement).
    """
    if not curve:
        return None
    last = curve[-1]["step"]
    if last >= cap:
        return "cap"
    best = best_point(curve)
    if last - best["step"] >= patience:
        return "patience"
    return None


def best_point(curve: list[dict]) -> dict:
    """The first point with the highest mAP."""
    best = curve[0]
    for row in curve[1:]:
        if row["mAP"] > best["mAP"]:
            best = row
    return best


def read_progress(folder: Path) -> dict | None:
    path = folder / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (a kill never tears it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_curve_csv(path: Path, curve: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in curve:
        writer.writerow({k: row.get(k) for k in CURVE_COLUMNS})
    _atomic_write(path, buf.getvalue())


def read_curve_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)
        ]


TrainTo = Callable[[int], tuple[dict, float | None]]
"""``train_to(step)``: train (resuming) up to ``step``, validate; ``(metrics, training CPU-seconds spent or
None when the chunk had been trained before a restart and its cost is unknown)``."""


def converge(
    folder: Path,
    train_to: TrainTo,
    *,
    chunk: int,
    patience: int,
    cap: int,
    settings: dict | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train in chunks of ``chunk`` steps until :func:`stop_reason`; returns the progress record.

    ``folder/progress.json`` (``settings``, ``curve`` rows with ``step``, ``cpu_s`` (cumulative) and the
    metrics, ``stopped``) and ``folder/curve.csv`` are rewritten atomically after every chunk, so a killed
    call continues from the last completed chunk. A chunk whose cost is unknown (trained, then killed before
    it was recorded) is charged the mean CPU-seconds per step of the chunks before it (``cpu_estimated``).
    """
    settings = {**(settings or {}), "chunk": chunk, "cap": cap}
    progress = read_progress(folder) or {"settings": settings, "curve": []}
    for key in ("chunk", "cap"):
        if progress["settings"].get(key) != settings[key]:
            raise ValueError(
                f"{folder}: {key}={settings[key]} differs from the run's {progress['settings'].get(key)} "
                "(the lr schedule and the validation points follow them); use another --out or the same value"
            )
    progress["settings"].update({k: v for k, v in settings.items() if k not in ("chunk", "cap")})
    curve = progress["curve"]
    while (reason := stop_reason(curve, patience, cap)) is None:
        step = curve[-1]["step"] if curve else 0
        target = min(step + chunk, cap)
        metrics, spent = train_to(target)
        row = {"step": target}
        if spent is None:
            per_step = curve[-1]["cpu_s"] / step if step else 0.0
            spent, row["cpu_estimated"] = per_step * (target - step), True
        row["cpu_s"] = round((curve[-1]["cpu_s"] if curve else 0.0) + spent, 1)
        row.update({k: float(metrics[k]) for k in METRICS})  # unrounded: the best point is fit's best/
        curve.append(row)
        progress["stopped"] = None
        _atomic_write(folder / "progress.json", json.dumps(progress, indent=1))
        write_curve_csv(folder / "curve.csv", curve)
        echo(
            f"  step {target:6d}  cpu {row['cpu_s']:8.0f} s  mAP {row['mAP']:.3f}  AP75 {row['AP75']:.3f}"
            f"  (best {best_point(curve)['mAP']:.3f} at {best_point(curve)['step']})"
        )
    progress["stopped"] = reason
    _atomic_write(folder / "progress.json", json.dumps(progress, indent=1))
    write_curve_csv(folder / "curve.csv", curve)
    return progress


# ----------------------------------------------------------------------------------------------------
# the organdetr runs (fit in chunks)


@contextlib.contextmanager
def _validation_cpu(total: list[float]):
    """Add the CPU-seconds ``fit`` spends in validation to ``total[0]`` (they are not training cost)."""
    import organdetr.training.fit as fit_module

    original = fit_module.validate

    def timed(*args, **kwargs):
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            total[0] += time.process_time() - started

    fit_module.validate = timed
    try:
        yield
    finally:
        fit_module.validate = original


def _saved_step(train_dir: Path) -> int | None:
    """The step of ``train_dir/last`` (or the ``.last.old`` an interrupted save kept); ``None``: none."""
    for name in ("last", ".last.old"):
        state = train_dir / name / "state.json"
        if state.is_file():
            return int(json.loads(state.read_text())["step"])
    return None


def _val_row(train_dir: Path, step: int) -> dict | None:
    path = train_dir / "val_log.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) == step]
    return {k: float(rows[-1][k]) for k in METRICS} if rows else None


def organdetr_config(spec: RunSpec, cache: Path, train: list, val: list, chunk: int, smoke: bool = False):
    """The run's TrainConfig: its recipe, the demo data and batch, the schedule over the cap, validation every
    chunk (``chunk`` must be whole epochs), ``last/`` only at chunk ends."""
    from organdetr.training.config import load_config

    preset, overrides = recipe_of(spec, smoke)
    steps_per_epoch = math.ceil(len(train) / 2)
    if chunk % steps_per_epoch:
        raise ValueError(f"--chunk {chunk} must be a multiple of the {steps_per_epoch} steps of an epoch")
    cfg = load_config(
        preset,
        [
            f"data.cache_dir={cache}",
            "data.batch_size=2",
            "data.num_workers=0",
            f"train.steps={spec.cap}",
            "train.device=cpu",
            "train.progress=false",
            "train.log_every=20",
            f"train.val_every={chunk // steps_per_epoch}",
            f"train.checkpoint_every={10**6}",
            f"train.seed={spec.seed}",
            *overrides,
        ],
    )
    cfg.data.train_cases, cfg.data.val_cases = list(train), list(val)
    return cfg


class FitChunks:
    """``train_to`` of an organdetr run: ``fit(cfg, train_dir, resume=..., stop_at_step=step)``; the metrics
    are the row ``fit`` validated at that step (``val_log.csv``)."""

    def __init__(self, cfg, train_dir: Path):
        self.cfg, self.train_dir = cfg, train_dir

    def __call__(self, step: int) -> tuple[dict, float | None]:
        from organdetr.training.fit import fit

        saved = _saved_step(self.train_dir)
        if saved == step and (row := _val_row(self.train_dir, step)) is not None:
            return row, None  # trained before a restart, not recorded: its cost is unknown
        val_cpu = [0.0]
        started = time.process_time()
        with _validation_cpu(val_cpu):
            fit(self.cfg, self.train_dir, resume=saved is not None, stop_at_step=step)
        spent = time.process_time() - started - val_cpu[0]
        row = _val_row(self.train_dir, step)
        if row is None:
            raise RuntimeError(f"{self.train_dir}: fit did not validate at step {step} (val_log.csv)")
        return row, spent


def test_set_scores(weights: Path, test_set: dict[str, Path]) -> dict:
    """Robustness table (clean / zoom / shift) of the detector at ``weights`` (a checkpoint folder)."""
    import torch

    from organdetr.experiments.ablation.scoring import robustness_scores
    from organdetr.preprocessing.cache import list_cases
    from organdetr.training.checkpoint import load_detector

    detector, _, _ = load_detector(weights, torch.device("cpu"))
    ids = list_cases(test_set["clean"])
    return robustness_scores(detector, test_set, ids, torch.device("cpu"), METRICS)


def run_organdetr(spec: RunSpec, out: Path, data: dict, args) -> dict:
    from organdetr.experiments.demo.run import measure_step_seconds

    folder = out / "runs" / spec.name
    cfg = organdetr_config(spec, data["cache"], data["train"], data["val"], args.chunk, args.smoke)
    progress = read_progress(folder)
    if progress is None or "step_wall_s" not in progress["settings"]:
        seconds = measure_step_seconds(cfg, data["cache"], data["train"], 2)
        print(
            f"{spec.name}: {seconds:.2f} s/step measured (wall) -> cap {spec.cap} steps"
            f" ~ {seconds * spec.cap / 60:.0f} min",
            flush=True,
        )
    else:
        seconds = progress["settings"]["step_wall_s"]
    recipe = recipe_of(spec, args.smoke)
    settings = {"recipe": list(recipe), "seed": spec.seed, "step_wall_s": round(seconds, 3)}
    progress = converge(
        folder, FitChunks(cfg, folder / "train"), chunk=args.chunk, patience=args.patience, cap=spec.cap,
        settings=settings,
    )  # fmt: skip
    return finish(spec, folder, progress, lambda step: _organdetr_test(folder, step, data["test_set"]))


def _organdetr_test(folder: Path, step: int, test_set: dict[str, Path]) -> dict:
    train_dir = folder / "train"
    which = "last" if _saved_step(train_dir) == step else "best"
    state = json.loads((train_dir / which / "state.json").read_text())
    if int(state["step"]) != step:
        raise RuntimeError(f"{train_dir / which} holds step {state['step']}, not {step}")
    return test_set_scores(train_dir / which, test_set)


def finish(spec: RunSpec, folder: Path, progress: dict, score_test: Callable[[int], dict]) -> dict:
    """``final.json`` (computed once): why it stopped, the best and last points, the test-set scores of the
    weights at both (``score_test(step)``)."""
    path = folder / "final.json"
    if path.is_file():
        final = json.loads(path.read_text())
        if final["last"]["step"] == progress["curve"][-1]["step"]:
            return final
    curve = progress["curve"]
    best, last = best_point(curve), curve[-1]
    final = {
        "run": spec.name,
        "kind": spec.kind,
        "seed": spec.seed,
        "cap": spec.cap,
        "stopped": progress["stopped"],
        "best": best,
        "last": last,
        "settings": progress["settings"],
        "test_set": {"best": score_test(best["step"])},
    }
    final["test_set"]["last"] = final["test_set"]["best"] if last is best else score_test(last["step"])
    _atomic_write(path, json.dumps(final, indent=1))
    return final


# ----------------------------------------------------------------------------------------------------
# data and priors


def prepare_data(
    out: Path, size: int = 64, cases: int = 200, test_cases: int = 40, test_seed: int = 7
) -> dict:
    """The demo's phantoms and split, the test set, the split file nnU-Net reads, and the priors (once)."""
    from bench_training_budget import prepare, prepare_test_set, score_priors
    from organdetr.experiments.demo.run import ABDOMEN_WINDOW
    from organdetr.preprocessing.cache import list_cases

    hu = tuple(ABDOMEN_WINDOW)
    cache, train, val = prepare(out, cases, size, hu, 0)
    test_set = prepare_test_set(out, test_cases, size, hu, test_seed)
    split = {
        "train": train,
        "val": val,
        "test": sorted(list_cases(test_set["clean"])),
        "raw": str((out / "raw").resolve()),
        "test_raw": str((out / f"test_raw_seed{test_seed}").resolve()),
        "cache": str(cache.resolve()),
        "test_cache": str(test_set["clean"].resolve()),
    }
    if not (out / "split.json").is_file():
        _atomic_write(out / "split.json", json.dumps(split, indent=1))
    if not (out / "priors.json").is_file():
        _atomic_write(out / "priors.json", json.dumps(score_priors(cache, train, val, test_set), indent=1))
    return {"cache": cache, "train": train, "val": val, "test_set": test_set, "split": split}


# ----------------------------------------------------------------------------------------------------
# nnU-Net: the driver's side (organdetr venv) - call its venv per chunk, score its label maps


def nnunet_work(out: Path) -> Path:
    return out / "nnunet"


def score_label_maps(pred_dir: Path, cache: Path, case_ids: list[str]) -> dict[str, float]:
    """COCO-style metrics (mm, one detection per organ) of the label maps ``pred_dir/<case>.nii.gz`` (scans'
    own grids, dataset label ids) against the cached boxes of ``case_ids``: per organ the box of its largest
    6-connected component, scored by ``pred_dir/scores.json`` (mean probability inside it)."""
    import numpy as np
    from scipy import ndimage

    from organdetr.core.boxes.labels import largest_connected_component
    from organdetr.core.boxes.world import voxel_box_to_world
    from organdetr.evaluation import Detection, GroundTruth, evaluate_detections
    from organdetr.io.images import read_label_map
    from organdetr.preprocessing.cache import load_case
    from organdetr.preprocessing.plans import class_map_from_plans, load_plans

    classes = class_map_from_plans(load_plans(cache), cache / "plans.json")
    scores = json.loads((pred_dir / "scores.json").read_text())
    face = ndimage.generate_binary_structure(3, 1)
    detections, truth = [], []
    for case in case_ids:
        record = load_case(cache, case, mmap=True)[2]
        truth += [
            GroundTruth(case, b["name"], np.asarray(b["box_mm"], dtype=np.float64)) for b in record["boxes"]
        ]
        volume = read_label_map(pred_dir / f"{case}.nii.gz")
        labels = volume.array
        for label_id, region in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
            if region is None or label_id not in classes:
                continue
            _, inner, _ = largest_connected_component(labels[region] == label_id, face)
            lo = [r.start + i.start for r, i in zip(region, inner, strict=True)]
            hi = [r.start + i.stop for r, i in zip(region, inner, strict=True)]
            box_mm = voxel_box_to_world(np.asarray(lo + hi, dtype=np.float64), volume.geometry)
            score = float(scores[case].get(str(label_id), 0.0))
            detections.append(Detection(case, classes[label_id], score, box_mm))
    result = evaluate_detections(detections, truth, list(classes.values()), max_detections=1)
    return {k: float(v) for k, v in result.summary.items() if isinstance(v, int | float) and math.isfinite(v)}


class NnunetChunks:
    """``train_to`` of the nnU-Net run: ``PYTHON bench_convergence.py nnunet-train --to-step S`` (its venv),
    then the held-out predictions scored here."""

    def __init__(self, out: Path, data: dict, python: str, cap: int, args):
        self.out, self.data, self.python, self.cap, self.args = out, data, python, cap, args

    def child(self, *argv: str) -> dict:
        command = [self.python, str(Path(__file__).resolve()), *argv, "--out", str(self.out)]
        command += ["--threads", str(self.args.threads), "--nnunet-iters", str(self.args.nnunet_iters)]
        result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def __call__(self, step: int) -> tuple[dict, float | None]:
        report = self.child("nnunet-train", "--to-step", str(step), "--cap", str(self.cap))
        pred = nnunet_work(self.out) / "pred" / f"step{step}" / "val"
        return score_label_maps(pred, self.data["cache"], self.data["val"]), report["train_cpu_s"]

    def test(self, step: int) -> dict:
        self.child("nnunet-predict", "--step", str(step), "--split", "test")
        pred = nnunet_work(self.out) / "pred" / f"step{step}" / "test"
        clean = score_label_maps(pred, self.data["test_set"]["clean"], self.data["split"]["test"])
        return {"metrics": {"clean": {k: round(clean[k], 3) for k in METRICS}}, "mAP_change": None}


def run_nnunet(spec: RunSpec, out: Path, data: dict, args) -> dict:
    if not args.nnunet_python:
        raise SystemExit("--runs nnunet needs --nnunet-python (the python of a venv with nnunetv2)")
    if args.chunk % args.nnunet_iters or spec.cap % args.nnunet_iters:
        raise SystemExit(
            f"--chunk and the nnunet cap must be multiples of --nnunet-iters {args.nnunet_iters}"
        )
    folder = out / "runs" / spec.name
    chunks = NnunetChunks(out, data, args.nnunet_python, spec.cap, args)
    settings = {"iters_per_epoch": args.nnunet_iters, "configuration": "3d_fullres", "seed": spec.seed}
    progress = converge(
        folder, chunks, chunk=args.chunk, patience=args.patience, cap=spec.cap, settings=settings
    )
    return finish(spec, folder, progress, chunks.test)


def nnunet_score(out: Path) -> None:
    """Score every held-out prediction folder of the nnU-Net work folder; print and write the curve."""
    split = json.loads((out / "split.json").read_text())
    work = nnunet_work(out)
    cpu = json.loads((work / "chunks.json").read_text()) if (work / "chunks.json").is_file() else {}
    curve, total = [], 0.0
    for pred in sorted((work / "pred").glob("step*/val"), key=lambda p: int(p.parent.name[4:])):
        if not (pred / "scores.json").is_file():
            continue
        step = int(pred.parent.name[4:])
        metrics = score_label_maps(pred, Path(split["cache"]), split["val"])
        spent = cpu.get(str(step), {}).get("cpu_s")  # each chunk's own cost (None: unknown): summed
        total += math.nan if spent is None else spent
        row = {"step": step, "cpu_s": round(total, 1)}
        curve.append(row | {k: round(metrics[k], 4) for k in METRICS})
        print(json.dumps(curve[-1]), flush=True)
    write_curve_csv(work / "curve_scored.csv", curve)


# ----------------------------------------------------------------------------------------------------
# nnU-Net: its venv's side (stdlib, numpy, scipy, SimpleITK, torch, nnunetv2 only)


def _nnunet_env(work: Path) -> None:
    os.environ.setdefault("nnUNet_raw", str(work / "raw"))
    os.environ.setdefault("nnUNet_preprocessed", str(work / "preprocessed"))
    os.environ.setdefault("nnUNet_results", str(work / "results"))
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 - nnU-Net's name; augmentation in this process: its CPU-seconds are counted


def _nnunet_dataset(work: Path, split: dict) -> Path:
    """``work/raw/<dataset>``: the 160 training scans (images linked, labels renumbered 0..C-1)."""
    from bench_nnunet import relabel

    target = work / "raw" / NNUNET_DATASET
    raw = Path(split["raw"])
    dataset = json.loads((raw / "dataset.json").read_text())
    ids = sorted(int(v) for v in dataset["labels"].values())
    if (target / "dataset.json").is_file():
        return target
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for case in split["train"]:
        image = target / "imagesTr" / f"{case}_0000.nii.gz"
        if not image.exists():
            image.symlink_to((raw / "imagesTr" / f"{case}_0000.nii.gz").resolve())
        relabel(raw / "labelsTr" / f"{case}.nii.gz", target / "labelsTr" / f"{case}.nii.gz",
                {old: new for new, old in enumerate(ids)})  # fmt: skip
    dataset = {k: v for k, v in dataset.items() if k not in ("dataset", "numTest")}
    dataset["labels"] = {name: ids.index(int(v)) for name, v in dataset["labels"].items()}
    dataset["organdetr_label_ids"] = ids
    dataset["numTraining"] = len(split["train"])
    _atomic_write(target / "dataset.json", json.dumps(dataset, indent=2))
    return target


def _nnunet_trainer(work: Path, cap: int, iters: int):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerConvergence(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        """nnU-Net's trainer with ``cap / iters`` epochs of ``iters`` iterations (its poly schedule over the
        cap), one validation batch per epoch, and ``train_until(epoch)``: stop there and save the state."""

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = iters
            self.num_epochs = cap // iters
            self.num_val_iterations_per_epoch = 1
            self.save_every = 10**9  # checkpoint_latest is written by train_until

        def train_until(self, epoch: int) -> None:
            """nnU-Net's ``run_training`` loop from ``current_epoch`` to ``epoch``, then save
            ``checkpoint_latest`` (no ``on_train_end``: the run goes on in the next chunk)."""
            self.on_train_start()
            for _ in range(self.current_epoch, epoch):
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = [
                    self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)
                ]
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [
                        self.validation_step(next(self.dataloader_val))
                        for _ in range(self.num_val_iterations_per_epoch)
                    ]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
            self.save_checkpoint(str(Path(self.output_folder) / "checkpoint_latest.pth"))

    preprocessed = work / "preprocessed" / NNUNET_DATASET
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    trainer = nnUNetTrainerConvergence(plans, "3d_fullres", "all", dataset_json, device=torch.device("cpu"))
    trainer.output_folder = trainer.output_folder_base = str(work / "train")
    return trainer, dataset_json


def _predict(trainer, dataset_json: dict, weights: Path, images: list[tuple[str, Path]], dest: Path) -> None:
    """Label maps (dataset ids, each scan's grid) and ``scores.json`` (per case and organ id: the mean softmax
    probability inside the organ's largest 6-connected component) of ``images`` into ``dest``."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from scipy import ndimage

    if (dest / "scores.json").is_file():
        return
    dest.mkdir(parents=True, exist_ok=True)
    if not trainer.was_initialized:
        trainer.initialize()
    trainer.network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)  # fmt: skip
    predictor.manual_initialization(
        trainer.network, trainer.plans_manager, trainer.configuration_manager, [trainer.network.state_dict()],
        dataset_json,
        type(trainer).__name__, None,
    )  # fmt: skip
    ids = np.asarray(dataset_json["organdetr_label_ids"])
    face = ndimage.generate_binary_structure(3, 1)
    scores = {}
    for case, path in images:
        array, props = SimpleITKIO().read_images([str(path)])
        seg, probs = predictor.predict_single_npy_array(array, props, None, None, True)
        scores[case] = {}
        for c in range(1, len(ids)):
            components, n = ndimage.label(seg == c, structure=face)
            if n == 0:
                continue
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            scores[case][str(int(ids[c]))] = float(probs[c][components == int(np.argmax(sizes))].mean())
        source = sitk.ReadImage(str(path))
        out = sitk.GetImageFromArray(ids[seg].astype(np.uint16 if ids.max() > 255 else np.uint8))
        out.CopyInformation(source)
        sitk.WriteImage(out, str(dest / f"{case}.nii.gz"), useCompression=True)
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    _atomic_write(dest / "scores.json", json.dumps(scores))


def _split_images(split: dict, which: str) -> list[tuple[str, Path]]:
    root = Path(split["raw"] if which == "val" else split["test_raw"]) / "imagesTr"
    return [(case, root / f"{case}_0000.nii.gz") for case in split[which]]


def nnunet_train(out: Path, to_step: int, cap: int, iters: int, threads: int, seed: int = 0) -> dict:
    """Train nnU-Net (resuming from ``checkpoint_latest``) to ``to_step``, keep its weights, predict the
    held-out scans."""
    import random

    import numpy as np
    import torch

    work = nnunet_work(out).resolve()
    _nnunet_env(work)
    torch.set_num_threads(threads)
    split = json.loads((out / "split.json").read_text())
    _nnunet_dataset(work, split)
    if not (work / "preprocessed" / NNUNET_DATASET / "nnUNetPlans.json").is_file():
        bindir = Path(sys.executable).parent
        command = [str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "513", "-c", "3d_fullres", "-np", "1"]
        env = {**os.environ, "nnUNet_n_proc_DA": "1"}  # its planner sets torch's threads to this: not 0
        subprocess.run(command, check=True, stdout=sys.stderr, env=env)
    if to_step % iters or cap % iters:
        raise SystemExit(f"--to-step and --cap must be multiples of --nnunet-iters {iters}")
    ledger_path = work / "chunks.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    weights = work / "train" / f"weights_step{to_step}.pth"
    trainer, dataset_json = _nnunet_trainer(work, cap, iters)
    if str(to_step) not in ledger or not weights.is_file():
        latest = work / "train" / "checkpoint_latest.pth"
        if latest.is_file():
            trainer.load_checkpoint(str(latest))
        done = trainer.current_epoch * iters
        if done > to_step:
            raise SystemExit(f"nnU-Net is at step {done}, past --to-step {to_step}: cannot go back")
        random.seed(seed + done)
        np.random.seed(seed + done)
        torch.manual_seed(seed + done)
        started = time.process_time()
        trainer.train_until(to_step // iters)
        spent = round(time.process_time() - started, 1)
        if done == to_step:  # trained before a kill, not recorded: its cost is unknown
            spent = None
        torch.save(trainer.network.state_dict(), weights)
        ledger[str(to_step)] = {"cpu_s": spent, "from_step": done}
        _atomic_write(ledger_path, json.dumps(ledger, indent=1))
    _predict(
        trainer, dataset_json, weights, _split_images(split, "val"), work / "pred" / f"step{to_step}" / "val"
    )
    return {
        "step": to_step,
        "train_cpu_s": ledger[str(to_step)]["cpu_s"],
        "patch_size": list(trainer.configuration_manager.patch_size),
        "batch_size": trainer.configuration_manager.batch_size,
    }


def nnunet_predict(out: Path, step: int, which: str, iters: int, threads: int) -> dict:
    import torch

    work = nnunet_work(out).resolve()
    _nnunet_env(work)
    torch.set_num_threads(threads)
    split = json.loads((out / "split.json").read_text())
    trainer, dataset_json = _nnunet_trainer(work, iters, iters)  # the schedule is not used
    dest = work / "pred" / f"step{step}" / which
    _predict(
        trainer, dataset_json, work / "train" / f"weights_step{step}.pth", _split_images(split, which), dest
    )
    return {"step": step, "split": which, "predictions": str(dest)}


# ----------------------------------------------------------------------------------------------------
# the report


def load_runs(out: Path) -> dict[str, dict]:
    """``{name: {"curve": rows, "final": final.json or None}}`` of every run folder with a curve."""
    runs = {}
    for folder in sorted((out / "runs").glob("*")):
        if (folder / "curve.csv").is_file():
            final = (
                json.loads((folder / "final.json").read_text()) if (folder / "final.json").is_file() else None
            )
            progress = read_progress(folder) or {}
            runs[folder.name] = {"curve": read_curve_csv(folder / "curve.csv"), "final": final,
                                 "stopped": progress.get("stopped")}  # fmt: skip
    return runs


def draw(out: Path, runs: dict[str, dict], priors: dict | None) -> Path:
    """``OUT/curves.png``: mAP and AP75 (rows) against steps and CPU-seconds (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from organdetr.runtime.atomic import write_figure

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    for r, metric in enumerate(("mAP", "AP75")):
        for c, x in enumerate(("step", "cpu_s")):
            ax = axes[r, c]
            for name, run in runs.items():
                ax.plot(
                    [p[x] for p in run["curve"]], [p[metric] for p in run["curve"]], marker=".", label=name
                )
            for kind, style in (("mm", ":"), ("fov", "--")):
                if priors and kind in priors:
                    ax.axhline(priors[kind][metric], color="grey", linestyle=style, label=f"prior ({kind})")
            ax.set_xlabel("optimizer steps" if x == "step" else "training CPU-seconds")
            ax.set_ylabel(f"held-out {metric}")
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.suptitle("held-out (40 scans) box metrics, COCO-style in mm, 1 detection per organ")
    fig.tight_layout()
    return write_figure(fig, out / "curves.png", dpi=100)


def markdown_table(runs: dict[str, dict], priors: dict | None) -> str:
    lines = [
        "| run | stopped | steps | best step | CPU-s to best | val mAP | val AP75 | test mAP clean | zoom |"
        " shift |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        best, last = best_point(run["curve"]), run["curve"][-1]
        test = ((run["final"] or {}).get("test_set") or {}).get("best", {}).get("metrics", {})
        cells = [f"{test[k]['mAP']:.3f}" if k in test else "-" for k in CONDITIONS]
        lines.append(
            f"| {name} | {run['stopped'] or 'running'} | {last['step']} | {best['step']} |"
            f" {best['cpu_s']:.0f} | "
            f"{best['mAP']:.3f} | {best['AP75']:.3f} | " + " | ".join(cells) + " |"
        )
    for kind in ("mm", "fov"):
        if priors and kind in priors:
            test = [priors.get(f"{kind} test:{k}", {}).get("mAP") for k in CONDITIONS]
            cells = [f"{v:.3f}" if v is not None else "-" for v in test]
            lines.append(f"| prior ({kind}) | - | 0 | - | 0 | {priors[kind]['mAP']:.3f} | "
                         f"{priors[kind]['AP75']:.3f} | " + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def report(out: Path) -> None:
    runs = load_runs(out)
    priors = json.loads((out / "priors.json").read_text()) if (out / "priors.json").is_file() else None
    if runs:
        draw(out, runs, priors)
    print(markdown_table(runs, priors))


# ----------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv.pop(0) if argv and argv[0] in ("nnunet-train", "nnunet-predict", "nnunet-score") else None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", default="organdetr:0,organdetr:1,seg2box,retinanet",
                        help="comma-separated KIND[+BACKBONE[.SIZE]][:SEED][@CAP]; kinds: "
                        + ", ".join(DEFAULT_CAPS))  # fmt: skip
    parser.add_argument("--chunk", type=int, default=400, help="steps between validations (whole epochs)")
    parser.add_argument(
        "--patience", type=int, default=1600, help="stop after this many steps without a new best"
    )
    parser.add_argument("--cap", type=int, default=None, help="step cap of every run (default: per kind)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only redraw curves.png and print the table")
    parser.add_argument("--nnunet-python", default=None, help="python of the venv with nnunetv2")
    parser.add_argument("--nnunet-iters", type=int, default=250, help="nnU-Net iterations per epoch")
    parser.add_argument("--to-step", type=int, help="nnunet-train: train up to this step")
    parser.add_argument("--step", type=int, help="nnunet-predict: the weights of this step")
    parser.add_argument(
        "--split", choices=("val", "test"), default="test", help="nnunet-predict: which scans"
    )
    parser.add_argument(
        "--size", type=int, default=64, help="grid (64: the demo's; smaller only for smoke tests)"
    )
    parser.add_argument("--cases", type=int, default=200, help="phantoms (200: the demo's 160 / 40)")
    parser.add_argument("--test-cases", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="tiny models (--size 32 --cases 6): a check")
    args = parser.parse_args(argv)
    out = args.out
    if sub == "nnunet-train":
        cap = args.cap or DEFAULT_CAPS["nnunet"]
        print(json.dumps(nnunet_train(out, args.to_step, cap, args.nnunet_iters,
                                      args.threads)), flush=True)  # fmt: skip
        return
    if sub == "nnunet-predict":
        print(
            json.dumps(nnunet_predict(out, args.step, args.split, args.nnunet_iters, args.threads)),
            flush=True,
        )
        return
    if sub == "nnunet-score":
        nnunet_score(out)
        return
    if args.report:
        report(out)
        return
    import torch

    torch.set_num_threads(args.threads)
    specs = [parse_run(text, args.cap) for text in args.runs.split(",") if text.strip()]
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args.size, args.cases, args.test_cases)
    for spec in specs:
        print(f"== {spec.name} (cap {spec.cap}, chunk {args.chunk}, patience {args.patience})", flush=True)
        run = run_nnunet if spec.kind == "nnunet" else run_organdetr
        print(json.dumps(run(spec, out, data, args)), flush=True)
    report(out)


if __name__ == "__main__":
    main()
