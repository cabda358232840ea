"""The demo's report folder: the evaluation's metric files, the comparison and headline tables, loss curves,
held-out overlays, the HTML viewer and ``REPORT.md``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from organdetr.evaluation import write_report
from organdetr.evaluation.report import describe, to_markdown
from organdetr.experiments.demo.evaluate import plot_loss_curve
from organdetr.experiments.demo.training import thread_split, threads_text
from organdetr.formats.html_viewer import write_viewer
from organdetr.inference.overlay import render_overlay
from organdetr.io.images import read_image
from organdetr.runtime import atomic
from organdetr.training.config import load_config

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


def write_demo_report(
    cfg, report: Path, runs: dict, evaluations: dict, held_out, real, timings, run: dict
) -> None:
    """``report/``: metrics of the detector (json, csv, md, PR curves: the evaluation's writer) with the
    comparison rows, loss curves, overlays, REPORT.md."""
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
    has_loss = plot_loss_curve(report / "loss_curve.png", runs["Organ-DETR"])
    if "seg2box" in runs:
        plot_loss_curve(report / "loss_curve_seg2box.png", runs["seg2box"])
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


def _stride_text(cfg) -> str:
    """The baseline's coarse grid in words, when its preset + overrides set ``seg2box.input_stride`` > 1."""
    stride = load_config(cfg.baseline_preset, list(cfg.baseline_overrides)).seg2box.input_stride
    if stride == 1:
        return ""
    return f"; its U-Net sees the grid average-pooled {stride}x and its logits are upsampled back"


def _report_text(cfg, report, runs, tables, overlays, real, timings, run, has_loss) -> str:
    def rel(path: Path) -> str:
        return os.path.relpath(path, report)

    seconds = ", ".join(f"{name} {sec:.2f} s/step" for name, sec in run["step_seconds"].items())
    absent = tables["absent"]
    baseline = (
        " The **seg2box** baseline (MONAI BasicUNet trained with CE + Dice; box = largest connected "
        f"component per organ, score = its mean probability{_stride_text(cfg)}) was trained for the same "
        f"{run['steps']} steps on the same cases."
        if "seg2box" in runs
        else " The seg2box baseline was not trained (`--no-baselines`)."
    )
    lines = [
        "# Organ-DETR demo report",
        "",
        f"Organ-DETR (`{cfg.preset}` preset: MSA encoder, two-stage deformable decoder with iterative box "
        "refinement, contrastive denoising, Dense Query Matching, multiscale segmentation loss) trained on "
        f"CPU for **{run['steps']} optimizer steps** of batch {cfg.batch_size} ({seconds} measured before "
        f"training) on {cfg.data_text()} ({cfg.cases} scans, {len(run['classes'])} organ classes, "
        f"model {cfg.grid_text()}), then evaluated on {run['held_out_cases']} held-out phantom scans "
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
    lines += ["## Real CT", ""] + _real_ct_lines(real, cfg.data)
    lines += ["## Time", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    lines += ["", f"Machine: {os.cpu_count()} CPU cores visible, torch threads {cfg.threads}."]
    split = thread_split(cfg.threads, cfg.concurrent) if "seg2box" in runs else None
    if split:
        pair = f"Organ-DETR ({threads_text(split[0])}) and seg2box ({threads_text(split[1])})"
        lines += [f"{pair} trained side by side in two processes: `train` is the two together, "
                  "`train_Organ-DETR` / `train_seg2box` each one's own time within it."]  # fmt: skip
    lines += [""]
    return "\n".join(lines)


def _real_ct_lines(real: list[dict], data: str = "phantom") -> list[str]:
    if not real:
        return [
            "Skipped: the real-data pack (`../shared/data` or `$ORGANDETR_SHARED_DATA`) was not found.",
            "",
        ]
    lines = [
        "The same model on real scans shows that real geometry (orientation, anisotropic spacing, DICOM "
        "series) is handled end to end: boxes come back in the scan's own voxel indices and in LPS mm. "
        + (
            "A model trained for minutes on phantoms **does not find real organs well**; "
            if data == "phantom"
            else "The model trained on scans synthesised from label maps only (never on these pixels); "
        )
        + "the white dashed boxes are TotalSegmentator's labels (pseudo ground truth) of the model's organs, "
        "where the data pack has them.",
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


__all__ = ["SUMMARY_KEYS", "comparison_markdown", "summary_markdown", "write_demo_report"]
