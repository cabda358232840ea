"""`organdetr evaluate PRED_DIR GT`: COCO-style 3D detection metrics per organ, tables and curves."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class EvalMode(StrEnum):
    coco = "coco"
    monai = "monai"


class GroundTruthSplit(StrEnum):
    all = "all"
    tr = "tr"
    ts = "ts"


def evaluate(
    pred_dir: Path = typer.Argument(..., help="Folder of <case>.json predictions (organdetr predict)."),
    gt: Path = typer.Argument(..., help="Ground truth: a preprocessed cache or an nnU-Net dataset folder."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Report folder (default: PRED_DIR/evaluation)."
    ),
    max_detections: int = typer.Option(
        1,
        "--max-detections",
        min=1,
        help="Detections kept per organ per scan: 1 = Organ-DETR protocol (default), 100 = COCO/MONAI.",
    ),
    mode: EvalMode = typer.Option(
        EvalMode.coco, "--mode", help="coco (exact COCO convention) | monai (MONAI COCOMetric numbers)."
    ),
    split: GroundTruthSplit = typer.Option(
        GroundTruthSplit.all, "--split", help="nnU-Net dataset only: labelsTr (tr), labelsTs (ts) or all."
    ),
    seg: bool = typer.Option(
        False,
        "--seg",
        help="Score label maps instead of boxes: PRED_DIR/<case>_seg.nii.gz (or <case>.nii.gz) against the "
        "ground-truth label maps: Dice, NSD, HD95 (mm) per organ.",
    ),
    nsd_tolerance: float = typer.Option(
        2.0, "--nsd-tolerance", min=0.0, help="--seg: NSD tolerance in mm (surface voxels within it count)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="--seg: processes scoring cases in parallel."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the metrics JSON on stdout instead of the table (messages go to stderr)."
    ),
) -> None:
    """Score predictions against ground-truth organ boxes (LPS mm): mAP@.50:.95, AP50, AP75, mAR, per organ,
    nnDetection mAP@.10:.50, centre and face errors in mm; with --seg, label maps against label maps. With
    case-level labels in the ground truth (case_labels.json / the cache) and in the predictions: accuracy,
    sensitivity, specificity, balanced accuracy and AUC per class (classification.json, .md, .png).

    Writes OUT/metrics.json, metrics.csv, metrics.md, matches.csv and pr_curves.png. Cases without a
    prediction file count as no detections (listed). With --seg: OUT/seg_metrics.json, seg_metrics.csv,
    seg_metrics.md, seg_cases.csv and seg_scores.png (a missing label map scores as empty). Examples:
    organdetr evaluate runs/pred Dataset001_Organs --max-detections 1 --mode coco;
    organdetr evaluate runs/pred Dataset001_Organs --seg --nsd-tolerance 2
    """
    from rich.console import Console

    console = Console(stderr=json_out)
    if seg:
        paths = _evaluate_label_maps(
            pred_dir, gt, output, split.value, nsd_tolerance, workers, console, json_out
        )
        if json_out:
            typer.echo(paths[0].read_text(encoding="utf-8"), nl=False)
        return

    from organdetr.evaluation import evaluate_detections
    from organdetr.evaluation.io import load_ground_truth, load_predictions
    from organdetr.evaluation.report import print_table, write_report
    from organdetr.runtime.atomic import remove_dead_temps, staged_writes
    from organdetr.runtime.outputs import check_output_folder

    out_dir = check_output_folder(output or pred_dir / "evaluation", "report folder")
    truth = load_ground_truth(gt, split=split.value)
    preds = load_predictions(pred_dir, truth.classes, truth.class_ids)
    known = set(truth.case_ids)
    missing = [c for c in truth.case_ids if c not in preds.files]
    extra = [c for c in preds.case_ids if c not in known]
    detections = [d for d in preds.detections if d.case_id in known]
    for path in preds.skipped:
        console.print(f"[yellow]warning[/]: {path} is not a prediction JSON (no 'detections'); skipped")
    _warn(console, extra, f"{len(extra)} prediction file(s) for cases not in the ground truth, ignored")
    _warn(
        console,
        missing,
        f"{len(missing)} of {len(truth.case_ids)} cases have no prediction file and count as no detections",
    )
    if len(missing) == len(truth.case_ids):
        from organdetr.runtime.errors import InputError

        raise InputError(pred_dir, f"no prediction file matches a ground-truth case of {gt}")
    result = evaluate_detections(
        detections,
        truth.boxes,
        truth.classes,
        max_detections=max_detections,
        mode=mode.value,
        case_ids=truth.case_ids,
    )
    if not json_out:
        print_table(result, console)
    remove_dead_temps(out_dir)  # what a killed evaluate left
    with staged_writes():  # the whole report or none of it (a full disk)
        paths = write_report(result, out_dir, extra=_sources(pred_dir, truth.source, missing, extra))
        if truth.case_classes:
            paths += _classification_report(truth, preds, out_dir, console, pred_dir)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {out_dir}")
    if json_out:
        typer.echo(paths[0].read_text(encoding="utf-8"), nl=False)  # metrics.json


def _sources(pred_dir: Path, ground_truth: str, missing: list, ignored: list) -> dict:
    """What a report says it scored: the prediction folder, the ground truth, the cases without a prediction
    and the predictions of no ground-truth case."""
    return {
        "predictions": str(pred_dir),
        "ground_truth": ground_truth,
        "missing_predictions": missing,
        "ignored_predictions": ignored,
    }


def _classification_report(truth, preds, out_dir: Path, console, pred_dir: Path) -> list[Path]:
    """Case-level classification metrics when the ground truth has case labels (else nothing)."""
    from organdetr.evaluation.classification import (
        classification_markdown,
        evaluate_classification,
        plot_classification,
    )
    from organdetr.runtime.atomic import write_json, write_text
    from organdetr.runtime.errors import InputError

    if not preds.case_probabilities:
        console.print(
            "[yellow]warning[/]: the ground truth has case labels but no prediction has 'case_label'"
        )
        return []
    truth_labels = {c: truth.case_labels.get(c) for c in truth.case_ids}
    try:
        result = evaluate_classification(truth_labels, preds.case_probabilities, truth.case_classes)
    except ValueError as err:
        raise InputError(pred_dir, str(err)) from None
    markdown = classification_markdown(result)
    console.print(markdown)
    paths = [out_dir / "classification.json", out_dir / "classification.md", out_dir / "classification.png"]
    write_json(paths[0], result.to_dict())
    write_text(paths[1], markdown)
    plot_classification(result, paths[2])
    return paths


def _warn(console, items: list[str], message: str) -> None:
    """One warning line, ``message: item, item, ...`` (nothing when ``items`` is empty)."""
    if items:
        console.print(f"[yellow]warning[/]: {message}: {_short(items)}")


def _short(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")


def _evaluate_label_maps(
    pred_dir: Path,
    gt: Path,
    output: Path | None,
    split: str,
    tolerance: float,
    workers: int,
    console,
    json_out: bool = False,
) -> list[Path]:
    """``evaluate --seg``: Dice / NSD / HD95 of label maps, table and report files."""
    import itertools

    from organdetr.evaluation.segmentation import evaluate_segmentation
    from organdetr.evaluation.segmentation_io import load_label_map_truth, pair_predictions, read_pairs
    from organdetr.evaluation.segmentation_report import print_seg_table, write_seg_report
    from organdetr.runtime.atomic import remove_dead_temps, staged_writes
    from organdetr.runtime.outputs import check_output_folder

    out_dir = check_output_folder(output or pred_dir / "evaluation", "report folder")
    truth = load_label_map_truth(gt, split=split)
    paired = pair_predictions(pred_dir, truth)
    _warn(
        console,
        paired.extra,
        f"{len(paired.extra)} label map(s) in {pred_dir} match no ground-truth case, ignored",
    )
    _warn(
        console,
        paired.missing,
        f"{len(paired.missing)} of {len(truth.cases)} cases have no label map and score as empty predictions",
    )
    preds, gts, spacings = itertools.tee(read_pairs(paired), 3)
    result = evaluate_segmentation(
        (p for p, _, _ in preds),
        (g for _, g, _ in gts),
        truth.classes,
        (s for _, _, s in spacings),
        tolerance,
        case_ids=[c for c, _ in truth.cases],
        workers=workers,
        progress=True,
    )
    if not json_out:
        print_seg_table(result, console)
    remove_dead_temps(out_dir)  # what a killed evaluate left
    with staged_writes():  # the whole report or none of it (a full disk)
        paths = write_seg_report(
            result, out_dir, extra=_sources(pred_dir, truth.source, paired.missing, paired.extra)
        )
    console.print(f"wrote {', '.join(p.name for p in paths)} to {out_dir}")
    return paths
