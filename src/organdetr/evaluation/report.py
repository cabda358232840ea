"""Report writers: rich table, metrics.json, CSV, markdown and a PNG of precision-recall curves.

Every table states the mode (coco / monai) and the max-detections setting it was computed with.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from rich.console import Console

from organdetr.evaluation.coco import EvaluationResult
from organdetr.runtime.atomic import write_figure, write_json, write_text
from organdetr.runtime.tables import Column, fitted_table

COLUMNS = [
    ("num_gt", "GT"), ("num_det", "det"), ("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AR", "AR"),
    ("AP_10_50", "AP.10:.50"), ("center_error_mm", "centre err mm"), ("face_error_mm", "face err mm"),
]  # fmt: skip
SUMMARY_FOR = {
    "AP": "mAP",
    "AP50": "AP50",
    "AP75": "AP75",
    "AR": "mAR",
    "AP_10_50": "mAP_10_50",
    "center_error_mm": "center_error_mm",
    "face_error_mm": "face_error_mm",
}


def describe(result: EvaluationResult) -> str:
    """One line naming the protocol, e.g. ``COCO mode, max 1 detection per organ per scan, ...``."""
    s = result.settings
    n = s["max_detections"]
    return (
        f"{s['mode'].upper()} mode, max {n} detection{'s' if n != 1 else ''} per organ per scan, "
        f"AP/AR over IoU {s['iou_thresholds']}, AP.10:.50 over {s['nndetection_iou_thresholds']}, "
        f"{s['recall_points']} recall points, errors at IoU >= {s['center_error_iou']:.2f}, "
        f"{s['num_cases']} cases"
    )


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.startswith("num_"):
        return str(int(value))
    if key.endswith("_mm"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def rows(result: EvaluationResult) -> list[tuple[str, dict]]:
    """Per-organ rows then a ``mean`` row (summary values; counts summed)."""
    out = list(result.per_class.items())
    mean = {key: result.summary.get(SUMMARY_FOR.get(key, ""), math.nan) for key, _ in COLUMNS}
    for key in ("num_gt", "num_det"):
        mean[key] = sum(v[key] for v in result.per_class.values())
    out.append(("mean", mean))
    return out


def print_table(result: EvaluationResult, console=None) -> None:
    """Print the per-organ table (rich) with the protocol in its title."""
    print_rows(describe(result), COLUMNS, rows(result), console)


def to_markdown(result: EvaluationResult) -> str:
    """Markdown table of :func:`rows`, headed by :func:`describe`."""
    return markdown_rows(describe(result), COLUMNS, rows(result))


def print_rows(
    title: str, columns: list[tuple[str, str]], body: list[tuple[str, dict]], console=None
) -> None:
    """Print ``body`` (``[(organ, {key: value})]``, a ``mean`` row last) as a rich table titled ``title``;
    ``columns``: ``[(key, header)]``, values formatted by key (``num_*`` ints, ``*_mm`` 0.1)."""
    console = console or Console()
    table_columns = [Column("organ"), *(Column(header, "right") for _, header in columns)]
    cells = [[name, *(_fmt(k, values.get(k)) for k, _ in columns)] for name, values in body]
    console.print(
        fitted_table(
            title,
            table_columns,
            cells,
            console.width,
            elsewhere="a wider terminal, --json or the report files have them",
            end_sections=[len(body) - 2],
        )
    )


def markdown_rows(title: str, columns: list[tuple[str, str]], body: list[tuple[str, dict]]) -> str:
    """The markdown version of :func:`print_rows` (the ``mean`` row in bold)."""
    lines = [
        f"**{title}**",
        "",
        "| organ | " + " | ".join(t for _, t in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in body:
        cells = [_fmt(k, values.get(k)) for k, _ in columns]
        if name == "mean":
            name, cells = "**mean**", [f"**{c}**" for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(result: EvaluationResult) -> str:
    """Per-organ CSV (+ ``mean`` row); every row carries ``mode`` and ``max_detections``."""
    keys = [
        "num_gt",
        "num_det",
        "num_matched",
        "AP",
        "AP50",
        "AP75",
        "AR",
        "AP_10_50",
        "AR_10_50",
        "center_error_mm",
        "face_error_mm",
    ]
    summary_keys = dict(SUMMARY_FOR, AR_10_50="mAR_10_50")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["organ", *keys, "mode", "max_detections"])
    mode, max_det = result.settings["mode"], result.settings["max_detections"]
    for name, values in result.per_class.items():
        writer.writerow([name, *(_csv_value(values.get(k)) for k in keys), mode, max_det])
    mean = [_csv_value(result.summary.get(summary_keys.get(k, ""))) for k in keys]
    for i, k in enumerate(keys[:3]):
        mean[i] = sum(v[k] for v in result.per_class.values())
    writer.writerow(["mean", *mean, mode, max_det])
    return buf.getvalue()


def matches_csv(result: EvaluationResult) -> str:
    """One row per matched organ: centre error and signed per-face errors (pred - gt), LPS mm."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    faces = ["x0", "y0", "z0", "x1", "y1", "z1"]
    writer.writerow(
        ["case_id", "organ", "score", "iou", "center_error_mm", *(f"{f}_error_mm" for f in faces)]
    )
    for m in result.matches:
        writer.writerow(
            [
                m.case_id,
                m.label,
                f"{m.score:.6g}",
                f"{m.iou:.4f}",
                f"{m.center_error_mm:.3f}",
                *(f"{v:.3f}" for v in m.face_error_mm),
            ]
        )
    return buf.getvalue()


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if isinstance(value, int) else f"{value:.6f}"


def plot_pr_curves(result: EvaluationResult, path: str | Path) -> Path:
    """PNG: one panel per organ, interpolated precision vs recall at IoU 0.10, 0.50 and 0.75."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.per_class)
    ncols = min(5, max(1, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.6 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    for c, (name, ax) in enumerate(zip(names, axes.ravel(), strict=False)):
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        if result.per_class[name]["num_gt"] == 0:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=8)
            continue
        for iou, style in ((0.10, ":"), (0.50, "-"), (0.75, "--")):
            t = int(np.argmin(np.abs(result.thresholds - iou)))
            ax.plot(result.recall_points, result.precision[t, :, c], style, label=f"IoU {iou:.2f}")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(describe(result), fontsize=8)
    fig.supxlabel("recall", fontsize=8)
    fig.supylabel("precision", fontsize=8)
    fig.tight_layout()
    return write_figure(fig, path, dpi=90, format="png")


def write_report(result: EvaluationResult, out_dir: str | Path, extra: dict | None = None) -> list[Path]:
    """Write ``metrics.json`` (+ ``extra`` keys), ``metrics.csv``, ``metrics.md``, ``matches.csv`` and
    ``pr_curves.png`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    payload = result.to_dict()
    payload["description"] = describe(result)
    payload.update(extra or {})
    paths = [
        out_dir / n for n in ("metrics.json", "metrics.csv", "metrics.md", "matches.csv", "pr_curves.png")
    ]
    write_json(paths[0], payload)
    write_text(paths[1], to_csv(result))
    write_text(paths[2], to_markdown(result))
    write_text(paths[3], matches_csv(result))
    plot_pr_curves(result, paths[4])
    return paths
