"""Segmentation-metric speed: organdetr.evaluation.segmentation vs MONAI, same process, same label maps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_seg_metrics.py   # 200 cases, 15 organs, 128^3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_seg_metrics.py --cases 20 --monai-cases 5

Data: per case 15 random ellipsoid organs (radii 5-22 voxels) in a 128^3 grid of 0.8 x 0.8 x 1.5 mm voxels;
the prediction is the ground truth shifted by up to 2 voxels per axis, with its boundaries eroded or dilated
by one voxel per organ at random, and 3% of the organs missing. Both sides compute Dice, NSD at 2 mm and
HD95 per case and organ; MONAI = ``DiceMetric`` + ``SurfaceDiceMetric`` + ``HausdorffDistanceMetric(
percentile=95)`` on one-hot uint8 tensors (its documented input), timed from the label maps (one-hot
conversion included). The script prints a markdown row and the largest difference between the two where
both are finite (MONAI's empty-mask conventions differ: docs/metrics.md).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
from scipy import ndimage

from organdetr.evaluation.segmentation import evaluate_segmentation

SPACING = (0.8, 0.8, 1.5)


def make_case(rng: np.random.Generator, size: int, organs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` uint8 label maps ``[size]*3`` (see the module docstring)."""
    gt = np.zeros((size,) * 3, dtype=np.uint8)
    pred = np.zeros_like(gt)
    for label in range(1, organs + 1):
        radii = rng.uniform(5, 22, 3)
        centre = rng.uniform(radii + 1, size - radii - 1)
        lo = np.floor(centre - radii).astype(int)
        hi = np.ceil(centre + radii).astype(int) + 1
        axes = _axes(lo, hi)
        inside = sum(((axes[d] - centre[d]) / radii[d]) ** 2 for d in range(3)) <= 1
        region = tuple(slice(lo[d], hi[d]) for d in range(3))
        gt[region][inside] = label
        if rng.random() < 0.03:
            continue  # a missed organ
        shifted = ndimage.shift(inside, rng.integers(-2, 3, 3), order=0)
        op = rng.choice(3)
        if op == 1:
            shifted = ndimage.binary_erosion(shifted)
        elif op == 2:
            shifted = ndimage.binary_dilation(shifted)
        pred[region][shifted] = label
    return pred, gt


def _axes(lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    return [
        np.arange(lo[d], hi[d], dtype=np.float32).reshape([-1 if e == d else 1 for e in range(3)])
        for d in range(3)
    ]


def run_monai(cases: list[tuple[np.ndarray, np.ndarray]], organs: int, tolerance: float) -> np.ndarray:
    """MONAI's three metrics per case -> ``[N, C, 3]`` (dice, nsd, hd95)."""
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric

    dice = DiceMetric(include_background=False, reduction="none")
    nsd = SurfaceDiceMetric([tolerance] * organs, include_background=False, reduction="none")
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    out = []
    spacing = [float(s) for s in SPACING]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pred, gt in cases:
            p = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), organs + 1)
            g = torch.nn.functional.one_hot(torch.from_numpy(gt.astype(np.int64)), organs + 1)
            p = p.permute(3, 0, 1, 2)[None].to(torch.uint8)
            g = g.permute(3, 0, 1, 2)[None].to(torch.uint8)
            values = [dice(p, g)[0], nsd(p, g, spacing=spacing)[0], hd(p, g, spacing=spacing)[0]]
            out.append(np.stack([v.numpy() for v in values], axis=1))
    return np.stack(out).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--organs", type=int, default=15)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--monai-cases", type=int, default=None, help="MONAI on the first N cases (default all)"
    )
    parser.add_argument("--workers", default="1,2", help="organdetr process counts to time, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    cases = [make_case(rng, args.size, args.organs) for _ in range(args.cases)]
    print(
        f"data: {args.cases} cases x {args.organs} organs at {args.size}^3, {time.perf_counter() - t0:.0f} s"
    )
    classes = {i: f"organ_{i}" for i in range(1, args.organs + 1)}
    timings, cpu = {}, {}  # wall s; CPU s of this process and its finished workers (fair on a shared box)
    result = None
    for workers in (int(w) for w in args.workers.split(",")):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        result = evaluate_segmentation(
            (p for p, _ in cases), (g for _, g in cases), classes, SPACING, 2.0, workers=workers
        )
        timings[workers], cpu[workers] = time.perf_counter() - t0, _cpu_seconds() - c0
        print(
            f"organdetr, {workers} process(es): {timings[workers]:.2f} s wall, {cpu[workers]:.2f} s CPU, "
            f"Dice {result.summary['dice']:.4f}"
        )
    n_monai = args.cases if args.monai_cases is None else min(args.monai_cases, args.cases)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    reference = run_monai(cases[:n_monai], args.organs, 2.0)
    t_monai, cpu_monai = time.perf_counter() - t0, _cpu_seconds() - c0
    ours = result.scores[:n_monai]
    both = np.isfinite(ours) & np.isfinite(reference)
    gt_present = np.stack([[(g == c).any() for c in classes] for _, g in cases[:n_monai]])
    pred_present = np.stack([[(p == c).any() for c in classes] for p, _ in cases[:n_monai]])
    scored = gt_present & pred_present
    diff = np.abs(ours - reference)
    rel_hd = (diff[..., 2] / np.maximum(reference[..., 2], 1e-9))[scored & both[..., 2]]
    print(
        f"MONAI on {n_monai} cases: {t_monai:.2f} s wall ({t_monai / n_monai * args.cases:.1f} s per "
        f"{args.cases}), {cpu_monai:.2f} s CPU ({cpu_monai / n_monai * args.cases:.1f} s per {args.cases})"
    )
    print(
        f"max |diff| where both organs present: Dice {diff[..., 0][scored].max():.2e}, "
        f"NSD {diff[..., 1][scored].max():.2e}, HD95 relative {rel_hd.max():.2e}"
    )
    per_case = ", ".join(f"{w} proc {t / args.cases * 1e3:.0f} ms" for w, t in timings.items())
    monai_total = t_monai / n_monai * args.cases
    subset = "" if n_monai == args.cases else f" (from {n_monai} cases)"
    print(
        f"| {args.cases} cases x {args.organs} organs, {args.size}^3 | "
        + " | ".join(f"{t:.1f} s" for t in timings.values())
        + f" | {monai_total:.0f} s{subset} | {monai_total / timings[min(timings)]:.0f}x | {per_case} |"
    )
    monai_cpu_total = cpu_monai / n_monai * args.cases
    print(
        f"CPU seconds: organdetr {cpu[min(cpu)]:.1f} s, MONAI {monai_cpu_total:.0f} s{subset}, "
        f"{monai_cpu_total / cpu[min(cpu)]:.0f}x"
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
