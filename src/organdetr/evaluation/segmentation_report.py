"""Report writers of segmentation metrics: rich table, seg_metrics.json / .csv / .md, seg_cases.csv and a
PNG of the per-case Dice and HD95 of every organ. Every table states its protocol (:func:`describe_seg`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from organdetr.evaluation.report import _csv_value, markdown_rows, print_rows
from organdetr.evaluation.segmentation import SegmentationResult
from organdetr.runtime.atomic import write_figure, write_json, write_text

COLUMNS = [
    ("num_gt", "GT"), ("num_pred", "pred"), ("num_missed", "missed"), ("num_spurious", "spurious"),
    ("dice", "Dice"), ("nsd", "NSD"), ("hd95_mm", "HD95 mm"),
]  # fmt: skip


def describe_seg(result: SegmentationResult) -> str:
    """One line naming the protocol, e.g. ``Dice, NSD at 2.0 mm, HD95 (mm) ...``."""
    s = result.settings
    tol = s["nsd_tolerance_mm"]
    tol_text = f"{tol:g} mm" if isinstance(tol, int | float) else "per-organ tolerances"
    pct = f"{s['hd_percentile']:g}"
    return (
        f"Dice, NSD at {tol_text}, HD{pct} (mm; max of the two directed P{pct}, linear interpolation) on "
        "6-connected surface voxels; organ absent from both maps: not scored, from one: Dice 0 / NSD 0 / "
        f"HD = volume diagonal; means per organ over cases, then over organs; {s['num_cases']} cases"
    )


def rows(result: SegmentationResult) -> list[tuple[str, dict]]:
    """Per-organ rows then a ``mean`` row (summary values; counts summed)."""
    out = list(result.per_class.items())
    mean = dict(result.summary)
    for key, _ in COLUMNS:
        if key.startswith("num_"):
            mean[key] = sum(v[key] for v in result.per_class.values())
    out.append(("mean", mean))
    return out


def print_seg_table(result: SegmentationResult, console=None) -> None:
    """Print the per-organ table (rich) with the protocol in its title."""
    print_rows(describe_seg(result), COLUMNS, rows(result), console)


def to_markdown(result: SegmentationResult) -> str:
    """Markdown table of :func:`rows`, headed by :func:`describe_seg`."""
    return markdown_rows(describe_seg(result), COLUMNS, rows(result))


def to_csv(result: SegmentationResult) -> str:
    """Per-organ CSV (+ ``mean`` row); every row carries the NSD tolerance and HD percentile."""
    keys = [k for k, _ in COLUMNS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["organ", *keys, "nsd_tolerance_mm", "hd_percentile"])
    tol = result.settings["nsd_tolerance_mm"]
    pct = result.settings["hd_percentile"]
    for name, values in rows(result):
        organ_tol = tol.get(name, "") if isinstance(tol, dict) else tol
        writer.writerow([name, *(_csv_value(values.get(k)) for k in keys), organ_tol, pct])
    return buf.getvalue()


def cases_csv(result: SegmentationResult) -> str:
    """One row per case and organ scored in it: Dice, NSD, HD95 (mm)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "organ", "dice", "nsd", "hd95_mm"])
    for n, case_id in enumerate(result.case_ids):
        for c, name in enumerate(result.classes):
            if not np.isnan(result.scores[n, c, 0]):
                writer.writerow([case_id, name, *(f"{v:.6f}" for v in result.scores[n, c])])
    return buf.getvalue()


def plot_seg_scores(result: SegmentationResult, path: str | Path) -> Path:
    """PNG: per organ, the per-case Dice (left) and HD95 in mm (right) as box plots with the cases on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result.classes
    height = max(2.5, 0.32 * len(names) + 1.2)
    fig, axes = plt.subplots(1, 2, figsize=(10, height), sharey=True)
    positions = np.arange(len(names))[::-1]
    for ax, col, title in ((axes[0], 0, "Dice"), (axes[1], 2, "HD95 (mm)")):
        values = [result.scores[~np.isnan(result.scores[:, c, col]), c, col] for c in range(len(names))]
        shown = [(v, p) for v, p in zip(values, positions, strict=True) if v.size]
        if shown:
            ax.boxplot(
                [v for v, _ in shown],
                positions=[p for _, p in shown],
                orientation="horizontal",
                widths=0.6,
                showfliers=False,
            )
        rng = np.random.default_rng(0)
        for v, p in shown:
            ax.plot(v, p + rng.uniform(-0.2, 0.2, v.size), ".", color="tab:blue", alpha=0.5, markersize=3)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(-0.02, 1.02)
    axes[0].set_yticks(positions, names)
    fig.suptitle(describe_seg(result), fontsize=7, wrap=True)
    fig.tight_layout()
    return write_figure(fig, path, dpi=90, format="png")


def write_seg_report(
    result: SegmentationResult, out_dir: str | Path, extra: dict | None = None
) -> list[Path]:
    """Write ``seg_metrics.json`` (+ ``extra`` keys), ``seg_metrics.csv``, ``seg_metrics.md``,
    ``seg_cases.csv`` and ``seg_scores.png`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    payload = result.to_dict()
    payload["description"] = describe_seg(result)
    payload.update(extra or {})
    names = ("seg_metrics.json", "seg_metrics.csv", "seg_metrics.md", "seg_cases.csv", "seg_scores.png")
    paths = [out_dir / n for n in names]
    write_json(paths[0], payload)
    write_text(paths[1], to_csv(result))
    write_text(paths[2], to_markdown(result))
    write_text(paths[3], cases_csv(result))
    plot_seg_scores(result, paths[4])
    return paths


__all__ = [
    "cases_csv",
    "describe_seg",
    "plot_seg_scores",
    "print_seg_table",
    "to_csv",
    "to_markdown",
    "write_seg_report",
]
