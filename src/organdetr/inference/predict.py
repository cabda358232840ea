"""Prediction on new scans, the batch run: files, folders of files or DICOM series -> JSON boxes, pictures,
box masks.

Each scan goes through the :class:`~organdetr.inference.predictor.Predictor` (read, preprocess onto the model
grid as the training cache was made, detect in batches, boxes back on the original scan); this module finds
the scans (:mod:`organdetr.io.discovery`), runs them in batches and writes their outputs.

Outputs in ``OUT/`` (schema in docs/conventions.md, "Predictions")::

    <case>.json            detections: organ, label id, score, box_voxel (original scan), box_mm (LPS),
                           center_mm, size_mm
    <case>.png             three orthogonal views, W400/L40, coloured boxes + legend   (overlay=True)
    <case>_boxes.nii.gz    label volume of the boxes on the original scan's grid        (save_box_mask=True)
    <case>_seg.nii.gz      the model's organ label map on the original scan's grid      (segmenting models)
    3D Slicer / MONAI / nnDetection files, viewer.html           (outputs, organdetr.formats.run_outputs)
    <case>_seg.dcm         DICOM SEG of the organ masks, <case>_sr.dcm DICOM SR (TID 1500)
                           of the boxes, for DICOM input                                   (dicom_out=True)
    <case>_rtstruct.dcm    RT Structure Set, for DICOM input                     (outputs: --format rtstruct)
    statistics.csv         per organ and scan: volume, intensities, box, cut by the field of view
                           (one cohort table; each JSON has its rows under "statistics")   (statistics=True)

Which organs: those scoring at least the run's threshold (by default the one training chose on the
validation scans, :mod:`organdetr.inference.selection`; the JSON's ``"score_threshold"`` says which),
only ``organs`` when given. A scan unlike the training scans (an MR into a CT model) is said so under
``warnings`` (:mod:`organdetr.inference.scan_checks`); with ``dicom_out`` it fails instead.

A segmenting model (one whose detector has ``segment``: ``seg2box``, MaskMed, ...) also writes its label map
(label ids of the dataset, nearest-neighbour back from the model grid); its boxes come from the masks. With
``dicom_out`` that label map (else the box masks) goes into the DICOM SEG. A classifying model (one whose
detector has ``classify``: MTMed3D with ``cls``) adds the case label with its probability to the JSON
(``"case_label": {"label", "probability", "probabilities"}``).

A model trained on several channels (``plans.json`` ``channels``, e.g. T1 / T1ce / T2 / FLAIR) reads each
scan as the nnU-Net channel files ``<case>_0000`` .. ``<case>_000{C-1}`` side by side: name the ``_0000``
file or the folder holding them; the picture shows the FLAIR (or first) channel, windowed by percentiles.

One bad scan does not stop the others: failures are collected in the returned
:class:`~organdetr.runtime.workers.BatchSummary`; a full disk (``DiskFullError``)
stops the batch. Output names are planned before the first scan (:mod:`organdetr.inference.output_names`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from organdetr.core.boxes.raster import box_mask
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume, grid_labels_to_original
from organdetr.evaluation.organ_statistics import organ_statistics, write_statistics_csv
from organdetr.formats.dicom_out import write_dicom_outputs
from organdetr.formats.dicom_source import check_dicom_source
from organdetr.formats.optional import require
from organdetr.formats.run_outputs import RunOutputs
from organdetr.inference.output_names import OutputNames, plan_outputs
from organdetr.inference.overlay import render_overlay
from organdetr.inference.predictor import Predictor, PreparedScan
from organdetr.inference.selection import ScoreThreshold, parse_organs, resolve_score_threshold, select_organs
from organdetr.io.discovery import ScanInput, find_scans, group_channels
from organdetr.io.images import UnevenSlices, read_image, write_image
from organdetr.runtime.atomic import remove_dead_temps, write_json
from organdetr.runtime.errors import DiskFullError, InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import one_line
from organdetr.runtime.workers import BatchSummary

_SCAN_ERRORS = (InputError, RuntimeError, ValueError, OSError, MemoryError)
"""What fails one scan (a line of the summary) instead of the whole run."""


# ----------------------------------------------------------------------------- writing outputs


def write_outputs(
    prediction: dict,
    out_dir: Path,
    volume: Volume | None,
    *,
    overlay: bool,
    save_box_mask: bool,
    uneven_slices: UnevenSlices = "refuse",
    seg: np.ndarray | None = None,
    outputs: RunOutputs | None = None,
    dicom_out: bool = False,
    window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write ``<case>.json`` (+ ``<case>.png``, ``<case>_boxes.nii.gz``, ``<case>_seg.nii.gz``, the
    ``outputs`` formats' files, ``<case>_seg.dcm`` / ``<case>_sr.dcm``).

    ``seg``: the model's label map on the original scan's grid (label ids), for segmenting models; the
    ``outputs`` writers use it too (3D Slicer segments, mask outlines in the viewer), and with ``dicom_out``
    the DICOM SEG holds it (else the box masks). ``window``: (width, level) of the picture (default
    W400/L40, CT soft tissue). Returns the paths written.
    """
    case_id = prediction["case_id"]
    written = []
    if seg is not None:
        path = out_dir / f"{case_id}_seg.nii.gz"
        write_image(path, seg, Geometry.from_dict(prediction["original"]))
        prediction = {**prediction, "segmentation": path.name}
        written.append(path)
    needs_volume = overlay or save_box_mask or dicom_out or (outputs is not None and outputs.needs_volume)
    if needs_volume and volume is None:
        volume = read_image(prediction["image"], uneven_slices=uneven_slices)
    if overlay:
        n = len(prediction["detections"])
        shown = "W400/L40" if window is None else f"W{window[0]:.4g}/L{window[1]:.4g}"
        title = f"{case_id}: {n} organ box{'es' if n != 1 else ''} ({shown})"
        if "case_label" in prediction:
            title += f", {prediction['case_label']['label']} ({prediction['case_label']['probability']:.2f})"
        options = {} if window is None else {"window": window}
        written.append(
            render_overlay(
                volume, prediction["detections"], out_dir / f"{case_id}.png", title=title, **options
            )
        )
    if save_box_mask:
        mask = box_mask(prediction["detections"], volume.geometry.size)
        path = out_dir / f"{case_id}_boxes.nii.gz"
        write_image(path, mask, volume.geometry)
        written.append(path)
    if outputs is not None:
        written += outputs.add_scan(prediction, volume, seg=seg)
    objects = (("seg", "sr") if dicom_out else ()) + (outputs.dicom_objects if outputs is not None else ())
    if objects:
        warned = len(prediction.get("warnings", []))
        prediction["dicom"] = write_dicom_outputs(
            prediction, volume.geometry, out_dir, seg=seg, objects=objects
        )
        written += [out_dir / entry["file"] for entry in prediction["dicom"].values()]
        for warning in prediction.get("warnings", [])[warned:]:
            tqdm.write(f"{case_id}: {warning}")
    json_path = out_dir / f"{case_id}.json"
    write_json(json_path, prediction)  # last: a JSON present means the case is complete
    return [json_path, *written]


# ----------------------------------------------------------------------------- batch driver


@dataclass(frozen=True)
class _RunSettings:
    """What every scan of one :func:`predict_scans` run is predicted and written with."""

    out_dir: Path
    threshold: ScoreThreshold
    overlay: bool
    save_box_mask: bool
    uneven_slices: UnevenSlices
    dicom_out: bool
    outputs: RunOutputs | None
    organs: frozenset[str] | None = None  # None: every organ
    statistics: list[dict] | None = None  # the run's statistics rows (None: not asked for)

    @property
    def needs_volume(self) -> bool:
        """Whether a scan's outputs need the original scan (picture, box mask, DICOM, viewer, statistics)."""
        return (
            self.overlay
            or self.save_box_mask
            or self.dicom_out
            or self.statistics is not None
            or (self.outputs is not None and self.outputs.needs_volume)
        )


def _failure(scan: ScanInput, err: BaseException) -> tuple[str, str]:
    """``(input path, one-line reason)`` of a scan that failed."""
    return str(scan.path), one_line(err, with_type=True, limit=300)


def _check_settings(batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {batch_size}")


def _scans_to_predict(
    predictor: Predictor, inputs: Sequence[str | Path] | Sequence[ScanInput]
) -> list[ScanInput]:
    """``inputs`` as scans (found on disk unless all are :class:`ScanInput`), channels grouped."""
    scans = [s if isinstance(s, ScanInput) else None for s in inputs]
    if any(s is None for s in scans):
        scans = find_scans(inputs)  # type: ignore[arg-type]
    if predictor.in_channels > 1:
        scans = group_channels(scans, predictor.in_channels)
    return scans  # type: ignore[return-value]


def _check_dicom_inputs(scans: Sequence[ScanInput]) -> None:
    """DICOM outputs: highdicom installed and every input a CT DICOM series, before the model runs."""
    require("highdicom", "--dicom-out / --format rtstruct")
    for scan in scans:
        check_dicom_source(scan.path)


def _active_outputs(outputs: RunOutputs | None, predictor: Predictor) -> RunOutputs | None:
    """``outputs`` when it writes anything (told the model's classes), else ``None``."""
    if outputs is None or not outputs.active:
        return None
    if outputs.classes is None:
        outputs.classes = predictor.classes
    return outputs


def _prepared_batches(
    predictor: Predictor,
    scans: Sequence[ScanInput],
    batch_size: int,
    keep_volume: bool,
    summary: BatchSummary,
    bar,
    uneven_slices: UnevenSlices = "refuse",
) -> Iterator[list[PreparedScan]]:
    batch: list[PreparedScan] = []
    for scan in scans:
        try:
            batch.append(predictor.prepare(scan, keep_volume=keep_volume, uneven_slices=uneven_slices))
        except _SCAN_ERRORS as err:
            summary.failed.append(_failure(scan, err))
            bar.update(1)
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _model_outputs(predictor: Predictor, batch: Sequence[PreparedScan]) -> tuple[list, list, list]:
    """Per scan of ``batch``: the detections, the label map (``None`` unless the model segments) and the
    case-level probabilities (``None`` unless it classifies), all on the model grid."""
    results = predictor.detect_grids([p.grid for p in batch])
    segs = predictor.segment_grids([p.grid for p in batch]) if predictor.segments else [None] * len(batch)
    probs = predictor.classify_grids([p.grid for p in batch]) if predictor.classifies else [None] * len(batch)
    return results, segs, probs


def _write_scan(
    predictor: Predictor,
    prepared: PreparedScan,
    result: dict,
    seg: np.ndarray | None,
    prob: np.ndarray | None,
    settings: _RunSettings,
) -> None:
    """One scan's model outputs -> its prediction JSON and the other files of the run's settings."""
    mismatches = prepared.record.get("mismatches") or []
    if settings.dicom_out and mismatches:  # no DICOM objects for the PACS from a scan unlike the training's
        raise InputError(prepared.scan.path, f"refused for --dicom-out: {mismatches[0]}")
    for line in mismatches:
        tqdm.write(f"warning: {prepared.scan.path}: {line}", file=sys.stderr)
    prediction = predictor.to_prediction(prepared, result, settings.threshold.score, prob)
    prediction["score_threshold"] = settings.threshold.to_json()
    if settings.threshold.warning:
        prediction["warnings"].append(settings.threshold.warning)
    seg_original = None if seg is None else grid_labels_to_original(seg, prepared.record)
    prediction, seg_original = select_organs(prediction, seg_original, settings.organs, predictor.classes)
    if settings.statistics is not None:
        volume = prepared.volume or read_image(prediction["image"], uneven_slices=settings.uneven_slices)
        prepared.volume = volume
        prediction["statistics"] = organ_statistics(prediction, volume.array, seg_original)
        settings.statistics.extend({"case_id": prediction["case_id"], **r} for r in prediction["statistics"])
    write_outputs(
        prediction,
        settings.out_dir,
        prepared.volume,
        overlay=settings.overlay,
        save_box_mask=settings.save_box_mask,
        uneven_slices=settings.uneven_slices,
        seg=seg_original,
        outputs=settings.outputs,
        dicom_out=settings.dicom_out,
        window=None if prepared.volume is None else predictor.display_window(prepared.volume),
    )


def _predict_batch(
    predictor: Predictor, batch: list[PreparedScan], settings: _RunSettings, summary: BatchSummary, bar
) -> None:
    """Run the model on ``batch`` and write every scan's outputs; a scan that fails goes to ``summary``."""
    results, segs, probs = _model_outputs(predictor, batch)
    for prepared, result, seg, prob in zip(batch, results, segs, probs, strict=True):
        try:
            _write_scan(predictor, prepared, result, seg, prob, settings)
            summary.done.append(prepared.scan.case_id)
        except DiskFullError:
            raise  # every later scan would fail the same way: the batch stops here
        except _SCAN_ERRORS as err:
            summary.failed.append(_failure(prepared.scan, err))
        bar.update(1)
        prepared.volume = None


def predict_scans(
    predictor: Predictor,
    inputs: Sequence[str | Path] | Sequence[ScanInput],
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    score_threshold: float | None = None,
    overlay: bool = True,
    save_box_mask: bool = False,
    uneven_slices: UnevenSlices = "refuse",
    dicom_out: bool = False,
    progress: bool = True,
    outputs: RunOutputs | None = None,
    organs: str | Sequence[str] | None = None,
    statistics: bool = False,
) -> BatchSummary:
    """Predict every scan of ``inputs`` into ``out_dir`` (see the module docstring for the outputs).

    ``score_threshold``: keep detections scoring at least this (a number in [0, 1]; 0.0 keeps the best
    query of every organ, as the paper evaluates); ``None``: the checkpoint's validated threshold
    (:func:`~organdetr.inference.selection.resolve_score_threshold`). ``organs`` (names, or one
    comma-separated string): only these organs in every output (InputError listing the model's organs
    for an unknown name). ``statistics``: ``statistics.csv`` and each JSON's ``"statistics"``
    (:mod:`organdetr.evaluation.organ_statistics`).
    ``uneven_slices="resample"``: see :meth:`Predictor.prepare`.
    With ``batch_size`` 1 the original scan is kept in memory for the picture /
    box mask; with larger batches it is read again when needed, so memory holds one full scan at a time.
    ``outputs`` adds the files of other formats (3D Slicer, MONAI, nnDetection, the HTML viewer).
    ``dicom_out`` (DICOM series inputs only, checked before the model runs) adds the DICOM SEG and SR,
    ``outputs`` with ``rtstruct`` the RT Structure Set (same checks).
    Returns the case ids done and ``(input path, one-line reason)`` per scan that failed.
    """
    _check_settings(batch_size)
    threshold = resolve_score_threshold(score_threshold, predictor.stored_score_threshold)
    selected = parse_organs(organs, predictor.classes)
    out_dir = Path(out_dir)
    outputs = _active_outputs(outputs, predictor)
    names = OutputNames.for_run(
        overlay=overlay,
        save_box_mask=save_box_mask,
        segments=predictor.segments,
        dicom_out=dicom_out,
        outputs=outputs,
    )
    if statistics:  # the run's cohort table is a run-level file too
        names = OutputNames(names.case_endings, (*names.run_files, "statistics.csv"))
    scans = plan_outputs(_scans_to_predict(predictor, inputs), out_dir, names)
    if dicom_out or (outputs is not None and outputs.dicom_objects):
        _check_dicom_inputs(scans)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out_dir)  # a killed run's half-written files
    summary = BatchSummary()
    settings = _RunSettings(
        out_dir=out_dir,
        threshold=threshold,
        overlay=overlay,
        save_box_mask=save_box_mask,
        uneven_slices=uneven_slices,
        dicom_out=dicom_out,
        outputs=outputs,
        organs=selected,
        statistics=[] if statistics else None,
    )
    # a multi-channel scan keeps its display channel: the picture cannot reread it by name
    keep_volume = (batch_size == 1 or predictor.in_channels > 1) and settings.needs_volume
    with tqdm(total=len(scans), desc="predict", unit="scan", disable=not progress, dynamic_ncols=True) as bar:
        batches = _prepared_batches(predictor, scans, batch_size, keep_volume, summary, bar, uneven_slices)
        for batch in batches:
            _predict_batch(predictor, batch, settings, summary, bar)
    if settings.outputs is not None and summary.done:
        settings.outputs.finish()
    if settings.statistics is not None and summary.done:
        write_statistics_csv(out_dir / "statistics.csv", settings.statistics)
    return summary


def load_prediction(path: str | Path) -> dict:
    """Read one prediction JSON (InputError naming the file when it is not one)."""
    path = Path(path)
    data = read_json(path, "not a readable prediction JSON")
    if not isinstance(data, dict) or "detections" not in data or "case_id" not in data:
        raise InputError(path, "not a prediction JSON (needs 'case_id' and 'detections')")
    return data


__all__ = ["load_prediction", "predict_scans", "write_outputs"]
