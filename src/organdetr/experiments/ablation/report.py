"""The reports of a suite run: ``table.md`` (main, robustness and segmentation tables), ``results.json``,
``convergence.png``, and the one-line description of the machine the numbers come from."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from organdetr.experiments.ablation.suite import METRICS
from organdetr.runtime import atomic


def machine_description(threads: int) -> str:
    """One line naming the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({os.cpu_count()} logical CPUs, torch threads {threads}){gpu}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def _fmt(stat: dict, digits: int = 3) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std and std > 0 else f"{mean:.{digits}f}"


def _count_seeds(results: dict, name: str) -> int:
    return sum(1 for r in results["runs"] if r["variant"] == name)


def render_table(results: dict) -> str:
    """``table.md``: the main table, the robustness table and how the numbers were made."""
    kinds = [k for k in next(iter(results["variants"].values()))["test"] if k != "clean"]
    lines = _protocol_lines(results) + _main_table(results)
    lines += _robustness_table(results, kinds)
    lines += _segmentation_table(results, kinds)
    lines += _variant_lines(results)
    return "\n".join(lines)


def _protocol_lines(results: dict) -> list[str]:
    """Title, description and how the numbers were made (command, machine, data, budget, metrics, cost)."""
    b = results["budget"]
    return [
        f"# Benchmark suite `{results['suite']}`",
        "",
        results["description"] or "",
        "",
        f"- command: `{results['command']}`" if results["command"] else "- command: (python API)",
        f"- machine: {results['machine']}",
        f"- data: {b['cases']} synthetic phantom cases (seed {b['data_seed']}) at {b['size']}^3; "
        "split train/val/test = {train}/{val}/{test}".format(**results["split"]),
        f"- budget: {b['iterations']} optimizer steps, batch {b['batch_size']}, seeds {b['seeds']} "
        "(mean ± std over seeds where more than one)",
        "- metrics: test cases, final weights, COCO-style in mm, max 1 detection per class; "
        "mAP = AP@.50:.05:.95, mAP_10_50 = nnDetection AP@.10:.05:.50",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one inference (`detect`, batch 1), "
        "2 FLOPs per multiply-add; counts matmul / conv / SDPA only (skips element-wise ops, norms, "
        "softmax outside SDPA, pooling, interpolation, NMS and other non-torch work)",
        "- latency: median of "
        f"{b['latency_repeats']} interleaved runs of `detect` on one scan in one process ({b['device']}); "
        "compare as ratios (x first row) - absolute times depend on machine load",
        "- peak memory (MiB): one inference; CUDA: allocator peak; CPU: peak of live tensors the forward "
        "creates (kernel scratch buffers not seen)",
        "",
    ]


def _main_table(results: dict) -> list[str]:
    """Clean test metrics and the cost (params, FLOPs, latency, peak memory) of every variant."""
    lines = [
        "| variant | mAP | AP50 | AP75 | mAR | mAP_10_50 | params (M) | FLOPs (G) | latency (ms) | "
        "latency (x) | peak mem (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in results["variants"].items():
        clean, cost = v["test"]["clean"], v["cost"]
        if cost is None:  # an image-blind prior: nothing to run
            lines.append(
                f"| {name} | " + " | ".join(_fmt(clean[m]) for m in METRICS) + " | - | - | - | - | - |"
            )
            continue
        mem = cost.get("peak_memory_bytes")
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(clean[m]) for m in METRICS)
            + f" | {cost['params'] / 1e6:.3f} | {cost['flops'] / 1e9:.2f} | "
            f"{cost['latency']['median_s'] * 1e3:.1f} | {cost['latency']['ratio_to_first']:.2f} | "
            + (f"{mem / 2**20:.1f}" if mem is not None else "n/a")
            + " |"
        )
    return lines


def _robustness_table(results: dict, kinds: list[str]) -> list[str]:
    """mAP and AP50 of every variant on the clean and on each perturbed test set."""
    lines = [
        "",
        "## Robustness (test scans transformed, boxes re-derived from the transformed labels)",
        "",
        "| variant | mAP clean | "
        + " | ".join(f"mAP {k}" for k in kinds)
        + " | "
        + " | ".join(f"AP50 {k}" for k in ["clean", *kinds])
        + " |",
        "|---|" + "---|" * (1 + 2 * len(kinds) + 1),
    ]
    for name, v in results["variants"].items():
        t = v["test"]
        lines.append(
            f"| {name} | {_fmt(t['clean']['mAP'])} | "
            + " | ".join(_fmt(t[k]["mAP"]) for k in kinds)
            + " | "
            + " | ".join(_fmt(t[k]["AP50"]) for k in ["clean", *kinds])
            + " |"
        )
    return lines


def _segmentation_table(results: dict, kinds: list[str]) -> list[str]:
    """Dice / NSD / HD95 of the variants that segment (none: no table)."""
    segmenting = {n: v for n, v in results["variants"].items() if "dice" in v["test"]["clean"]}
    if not segmenting:
        return []
    tolerance = next(iter(segmenting.values()))["test"]["clean"].get("nsd_tolerance_mm")
    lines = [
        "",
        "## Segmentation (segmenting variants: test label maps vs the cached labels, cache grid)",
        "",
        f"Dice, NSD at {tolerance:g} mm, HD95 in mm per organ (evaluation.segmentation: an organ missed or "
        "spurious scores Dice 0 / HD95 = volume diagonal), mean over organs; mean ± std over seeds.",
        "",
        "| variant | Dice | NSD | HD95 (mm) | " + " | ".join(f"Dice {k}" for k in kinds) + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for name, v in segmenting.items():
        t = v["test"]
        lines.append(
            f"| {name} | {_fmt(t['clean']['dice'])} | {_fmt(t['clean']['nsd'])} | "
            f"{_fmt(t['clean']['hd95_mm'], 1)} | " + " | ".join(_fmt(t[k]["dice"]) for k in kinds) + " |"
        )
    return lines


def _variant_lines(results: dict) -> list[str]:
    """What makes each variant: its overrides (and seed count), or the prior it is."""
    lines = ["", "Variants:", ""]
    for name, v in results["variants"].items():
        if v.get("prior"):
            kind = v["prior"]
            lines.append(
                f"- **{name}**: image-blind prior `{kind}` "
                "(mean training box per organ, `organdetr.models.baselines.prior`)"
            )
            continue
        sets = ", ".join(f"`{s}`" for s in v["overrides"]) or "(base config)"
        lines.append(f"- **{name}** ({_count_seeds(results, name)} seed(s)): {sets}")
    lines.append("")
    return lines


def plot_convergence(results: dict, path: Path) -> Path | None:
    """``convergence.png``: validation mAP (and mAP_10_50) against the optimizer step, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for name, variant in results["variants"].items():
        if variant.get("prior"):  # what a model must beat: a dashed level
            for ax, metric in zip(axes, ("mAP", "mAP_10_50"), strict=True):
                level = variant["test"]["clean"][metric]["mean"]
                if level is not None and math.isfinite(level):
                    ax.axhline(level, ls="--", lw=1, color="grey")
                    ax.annotate(name, (0, level), fontsize=7, color="grey", va="bottom")
            continue
        curves = [r["curve"] for r in results["runs"] if r["variant"] == name and r["curve"]]
        if not curves:
            continue
        steps = sorted({row["step"] for c in curves for row in c})
        for ax, metric in zip(axes, ("mAP", "mAP_10_50"), strict=True):
            per_step = [
                [row.get(metric, math.nan) for c in curves for row in c if row["step"] == s] for s in steps
            ]
            mean = [np.nanmean(v) if v else math.nan for v in per_step]
            line = ax.plot(steps, mean, marker="o", ms=3, label=name)[0]
            if len(curves) > 1:
                lo = [np.nanmin(v) for v in per_step]
                hi = [np.nanmax(v) for v in per_step]
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, metric in zip(axes, ("mAP (.50:.95)", "mAP_10_50 (nnDetection)"), strict=True):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"suite {results['suite']}: validation mAP vs iteration (mean over seeds, band = min-max)")
    fig.tight_layout()
    return atomic.write_figure(fig, path, dpi=110)


def write_reports(results: dict, out_dir: Path) -> None:
    """``table.md``, ``results.json`` and ``convergence.png`` in ``out_dir`` (atomic writes)."""
    atomic.write_json(out_dir / "results.json", _json_ready(results))
    atomic.write_text(out_dir / "table.md", render_table(results))
    plot_convergence(results, out_dir / "convergence.png")


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = ["machine_description", "plot_convergence", "render_table", "write_reports"]
