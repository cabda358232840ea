"""``organdetr plan DATASET``: fingerprint a raw dataset and write the plan ``preprocess`` and ``train`` use.

The data half (spacing, fit, intensity window) comes from :mod:`organdetr.preprocessing.planning`; this module
adds what needs the models: the grid under a budget, the preset, the query count and the proposal anchors.

* On the CPU (no ``gpu_memory_gb``): the ``demo`` preset on a 64^3 grid, the measured CPU default
  (BENCHMARKS.md, issue 20), with the seconds per training step measured here (a warm-up step and two timed
  steps of the preset on a synthetic batch) so the user sees what a step budget costs.
* With ``gpu_memory_gb``: the ``demo`` preset on the smallest grid of :data:`GPU_GRIDS` whose estimated
  training memory fits :data:`MEMORY_SHARE` of it and on which the smallest organ spans at least
  :data:`~organdetr.preprocessing.planning.MIN_ORGAN_VOXELS` voxels (else the largest grid that fits). The
  estimate is measured, not guessed: the bytes autograd saves for backward in one forward at 64^3 (batch 1,
  fp32), scaled by voxels and batch, plus 16 bytes per parameter (weights, gradients, AdamW's two moments),
  times :data:`ALLOCATOR_SLACK`; bf16 autocast on the GPU needs less.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from organdetr.core.boxes.labels import boxes_from_seg
from organdetr.models import detector_from_config
from organdetr.models.organdetr.proposals import anchor_sizes_from_boxes
from organdetr.preprocessing.fingerprint import fingerprint_dataset
from organdetr.preprocessing.planning import (
    MIN_ORGAN_VOXELS,
    PLAN_FILE,
    PLAN_VERSION,
    choose_spacing,
    intensity_plan,
    organs_in_voxels,
)
from organdetr.runtime import atomic
from organdetr.training.config import TrainConfig, load_config

PRESET = "demo"
CPU_GRID = 64
GPU_GRIDS = (64, 96, 128, 160)
MEMORY_SHARE = 0.8
ALLOCATOR_SLACK = 1.3
MEASURE_GRID = 64
GPU_MIN_ORGAN_VOXELS = 8.0
"""On a GPU the grid should give the smallest organ this many voxels on its thinnest axis: two tokens of
the stride-4 level (at 64^3 the ~4-voxel gallbladder is below what it resolves: BENCHMARKS.md, issue 10)."""


@dataclass(frozen=True)
class PlanOptions:
    """``gpu_memory_gb``: the GPU's memory (``None``: plan for this CPU); ``measure``: time CPU steps here;
    ``max_cases``: cases the fingerprint reads (evenly spaced)."""

    gpu_memory_gb: float | None = None
    measure: bool = True
    max_cases: int = 50


def synthetic_batch(
    num_classes: int, grid: int, batch: int, seed: int = 0
) -> tuple[torch.Tensor, list[dict]]:
    """``(images [B, 1, G, G, G], targets)``: one random cuboid organ per class per scan (seg, labels,
    boxes as the cache dataset gives them), for timing and memory measurements."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = torch.randn(batch, 1, grid, grid, grid, generator=gen), []
    for _ in range(batch):
        seg = torch.zeros((grid,) * 3, dtype=torch.int64)
        for c in range(num_classes):
            size = torch.randint(max(2, grid // 16), max(3, grid // 4), (3,), generator=gen)
            lo = [int(torch.randint(0, grid - int(s), (1,), generator=gen)) for s in size]
            seg[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = c + 1
        labels, boxes = boxes_from_seg(seg, num_classes)
        targets.append({"labels": labels, "boxes": boxes, "seg": seg})
    return images, targets


def measure_step_seconds(cfg: TrainConfig, num_classes: int, grid: int, batch: int, steps: int = 2) -> float:
    """Median seconds of ``steps`` fp32 AdamW training steps on this CPU (after one warm-up step)."""
    with torch.random.fork_rng(devices=[]):
        detector = detector_from_config(cfg, num_classes, (grid,) * 3).train()
        optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-5)
        images, targets = synthetic_batch(num_classes, grid, batch)
        times = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            detector.loss(images, targets)["loss"].backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def estimate_train_memory_gb(cfg: TrainConfig, num_classes: int, grids: tuple[int, ...], batch: int) -> dict:
    """``{grid: GB}``: the module doc's training-memory estimate for each cubic grid."""
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.random.fork_rng(devices=[]):
        detector = detector_from_config(cfg, num_classes, (MEASURE_GRID,) * 3).train()
        images, targets = synthetic_batch(num_classes, MEASURE_GRID, 1)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            detector.loss(images, targets)["loss"]
    weights = {p.untyped_storage().data_ptr() for p in detector.parameters()}
    activations = sum(n for ptr, n in saved.items() if ptr not in weights)  # parameters are counted below
    params = sum(p.numel() for p in detector.parameters())
    return {
        g: round(ALLOCATOR_SLACK * (activations * batch * (g / MEASURE_GRID) ** 3 + 16 * params) / 1e9, 2)
        for g in grids
    }


def _smallest_organ_voxels(fingerprint: dict, grid: int) -> np.ndarray:
    """The smallest organ's median extent (i, j, k) in voxels of the planned ``grid``^3."""
    data, _ = choose_spacing(fingerprint, (grid,) * 3)
    voxels = organs_in_voxels(fingerprint, data["target_spacing"], (grid,) * 3, data["fit"])
    return np.asarray(voxels[fingerprint["smallest_organ"]["name"]], dtype=np.float64)


def _resolves(fingerprint: dict, grid: int) -> bool:
    """Whether ``grid`` gives the smallest organ :data:`GPU_MIN_ORGAN_VOXELS` a side, or as many as its
    native voxels allow (no grid resolves more than the thick slices hold)."""
    organ = fingerprint["organs"][fingerprint["smallest_organ"]["name"]]
    native = np.asarray(organ["size_mm_median"]) / np.asarray(fingerprint["spacing_mm"]["median"])
    wanted = np.minimum(GPU_MIN_ORGAN_VOXELS, native) - 0.05
    return bool(np.all(_smallest_organ_voxels(fingerprint, grid) >= wanted))


def choose_grid(cfg: TrainConfig, fingerprint: dict, options: PlanOptions) -> tuple[int, dict, str]:
    """``(grid, budget, reason)``: the cubic grid under the CPU default or the GPU's memory."""
    k, batch = len(fingerprint["classes"]), cfg.data.batch_size
    smallest = fingerprint["smallest_organ"]["name"]
    if options.gpu_memory_gb is None:
        budget: dict = {"device": "cpu", "batch_size": batch}
        reason = f"CPU: the {PRESET} preset's measured default grid (BENCHMARKS.md, issue 20)"
        if options.measure:
            seconds = measure_step_seconds(cfg, k, CPU_GRID, batch)
            budget["seconds_per_step"] = round(seconds, 3)
            reason += f"; {seconds:.2f} s per step measured here (1000 steps ~ {seconds * 1000 / 60:.0f} min)"
        voxels = float(_smallest_organ_voxels(fingerprint, CPU_GRID).min())
        if voxels < MIN_ORGAN_VOXELS:
            reason += f"; the smallest organ ({smallest}) spans only {voxels:.1f} voxels on its thinnest axis"
        return CPU_GRID, budget, reason
    memory = estimate_train_memory_gb(cfg, k, GPU_GRIDS, batch)
    limit = MEMORY_SHARE * options.gpu_memory_gb
    fitting = [g for g in GPU_GRIDS if memory[g] <= limit]
    budget = {"device": "gpu", "gpu_memory_gb": options.gpu_memory_gb, "batch_size": batch,
              "estimated_memory_gb": {str(g): gb for g, gb in memory.items()}}  # fmt: skip
    if not fitting:
        return GPU_GRIDS[0], budget, (
            f"no grid fits {limit:.1f} GB ({MEMORY_SHARE:.0%} of {options.gpu_memory_gb:g}); "
            f"{GPU_GRIDS[0]}^3 needs ~{memory[GPU_GRIDS[0]]} GB: lower data.batch_size"
        )
    resolving = [g for g in fitting if _resolves(fingerprint, g)]
    grid = resolving[0] if resolving else fitting[-1]
    need = f"{GPU_MIN_ORGAN_VOXELS:g} voxels a side (two stride-4 tokens; or all its native voxels)"
    if resolving:
        why = f"the smallest that gives the smallest organ ({smallest}) {need}"
    else:
        why = f"the largest that fits; {smallest} still spans under {need}"
    reason = (
        f"{grid}^3 (~{memory[grid]} GB estimated for batch {batch}, of {limit:.1f} GB usable): {why}; "
        f"grids that fit: {', '.join(f'{g}^3' for g in fitting)}"
    )
    return grid, budget, reason


def model_choices(cfg: TrainConfig, fingerprint: dict, voxels: dict, grid: int) -> tuple[dict, dict]:
    """``(config overrides, reasons)``: the query count and the proposal anchors of the preset."""
    k, per_class = len(fingerprint["classes"]), cfg.model.queries_per_class
    sizes = torch.tensor([voxels[name] for name in voxels], dtype=torch.float64) / grid
    anchors = anchor_sizes_from_boxes(sizes, cfg.model.memory_levels)
    overrides = {
        "model.num_queries": per_class * k,
        "model.queries_per_class": per_class,
        "model.anchors": "data",
        "model.anchor_sizes": list(anchors),
    }
    reasons = {
        "queries": f"{per_class} per organ x {k} organs = {per_class * k} decoder queries (the {PRESET} "
        "preset's queries per class: the one-to-many DQM matcher's repeats)",
        "anchors": f"{cfg.model.memory_levels} levels of (i, j, k) anchor sizes, a fraction of the grid: the "
        "organs' median extents on the planned grid ranked by volume and cut into one group per level, "
        "the geometric mean of each (finest level: smallest organs)",
    }
    return overrides, reasons


def make_plan(dataset: str | Path, options: PlanOptions) -> dict:
    """The plan of the raw dataset at ``dataset`` (plain data; see the module doc and
    :mod:`organdetr.preprocessing.planning`). :class:`InputError` for an unreadable or empty dataset."""
    fingerprint = fingerprint_dataset(dataset, max_cases=options.max_cases)
    cfg = load_config(PRESET)
    grid, budget, grid_reason = choose_grid(cfg, fingerprint, options)
    data, data_reasons = choose_spacing(fingerprint, (grid,) * 3)
    intensity, hu_reason = intensity_plan(fingerprint)
    voxels = organs_in_voxels(fingerprint, data["target_spacing"], (grid,) * 3, data["fit"])
    overrides, model_reasons = model_choices(cfg, fingerprint, voxels, grid)
    device = "this CPU" if options.gpu_memory_gb is None else f"a {options.gpu_memory_gb:g} GB GPU"
    return {
        "version": PLAN_VERSION,
        "dataset": str(Path(dataset)),
        "preprocess": {"input_size": [grid] * 3, **data, **intensity},
        "train": {"preset": PRESET, "overrides": overrides},
        "budget": budget,
        "organs_in_voxels": voxels,
        "reasons": {
            "input_size": grid_reason, **data_reasons, "hu_window": hu_reason,
            "preset": f"{PRESET}: the preset tuned on the phantoms at 64^3 (BENCHMARKS.md), for {device}",
            **model_reasons,
        },  # fmt: skip
        "fingerprint": fingerprint,
    }


def write_plan(plan: dict, path: str | Path) -> Path:
    """Write ``plan`` atomically to ``path`` (a folder gets ``organdetr_plan.json`` inside)."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    atomic.write_json(path, plan)
    return path


def plan_table(plan: dict) -> Table:
    """The plan's choices with their reasons, and the fingerprint's key numbers (a rich table)."""
    fp, pre = plan["fingerprint"], plan["preprocess"]
    reasons = plan["reasons"]
    table = Table(title=f"plan for {plan['dataset']} ({fp['cases_read']} of {fp['num_cases']} cases read)")
    for column in ("setting", "choice", "reason"):
        table.add_column(column, overflow="fold")
    overrides = plan["train"]["overrides"]
    rows = [
        ("grid", " x ".join(str(s) for s in pre["input_size"]), reasons["input_size"]),
        ("fit", pre["fit"], reasons["fit"]),
        ("spacing (mm)", " x ".join(f"{s:g}" for s in pre["target_spacing"]), reasons["target_spacing"]),
        ("HU window", f"{pre['hu_window'][0]} .. {pre['hu_window'][1]}", reasons["hu_window"]),
        ("preset", plan["train"]["preset"], reasons["preset"]),
        ("queries", str(overrides["model.num_queries"]), reasons["queries"]),
        ("anchors", ", ".join(f"{a:.3f}" for a in overrides["model.anchor_sizes"]), reasons["anchors"]),
    ]
    for row in rows:
        table.add_row(*row)
    smallest = fp["smallest_organ"]["name"]
    table.caption = (
        f"spacing median {_triple(fp['spacing_mm']['median'])} mm, size median "
        f"{_triple(fp['size_voxels']['median'])}, orientations {fp['orientations']}; smallest organ "
        f"{smallest} {_triple(fp['smallest_organ']['size_mm_median'])} mm = "
        f"{_triple(plan['organs_in_voxels'][smallest])} voxels on the grid"
    )
    return table


def _triple(values: list[float]) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


__all__ = [
    "PlanOptions",
    "choose_grid",
    "estimate_train_memory_gb",
    "make_plan",
    "measure_step_seconds",
    "model_choices",
    "plan_table",
    "synthetic_batch",
    "write_plan",
]
