"""`predict --dicom-out` / `--format rtstruct`: the DICOM objects of one prediction, written beside its JSON.

:func:`~organdetr.formats.dicom_source.check_dicom_source` runs before the model (cheap header checks: a
DICOM input, with the UIDs a derived object must reference, CT); :func:`write_dicom_outputs` runs after it,
with the model's label map ``[I, J, K]`` when it segments (else each organ's mask is its box). Files:

    <case>_seg.dcm        DICOM SEG, one BINARY segment per organ, overlapping (each keeps its whole mask)
    <case>_sr.dcm         DICOM SR (TID 1500), one volumetric measurement group per detection
    <case>_rtstruct.dcm   RT Structure Set, one ROI per organ with contours per slice  (--format rtstruct)

All share the source study, reference the source series (the SR also the SEG) and get new series /
instance UIDs, SeriesDate / SeriesTime and a SeriesNumber that grows from run to run
(:mod:`organdetr.formats.dicom_run`); a segment and its SR group share one tracking UID. The model's
score of each organ is in the SEG's segment description, the RT ROI description and the SR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes

from organdetr import __version__
from organdetr.core.boxes.raster import box_voxel_slices
from organdetr.core.geometry import Geometry
from organdetr.formats.dicom_rtstruct import OrganROI, build_structure_set
from organdetr.formats.dicom_run import DicomRun
from organdetr.formats.dicom_seg import Segment, build_segmentation, segments_of
from organdetr.formats.dicom_source import check_dicom_source, read_source_series
from organdetr.formats.dicom_sr import OrganFinding, build_measurement_report
from organdetr.runtime.atomic import atomic_path

ALGORITHM_NAME = "organdetr"
DICOM_OBJECTS = ("seg", "sr", "rtstruct")
"""The DICOM objects a prediction can be written as: ``--dicom-out`` = SEG + SR, ``--format rtstruct``."""
NO_ORGAN_WARNING = "no organ detected (none above the score threshold, or an empty label map)"
"""Start of the warning (``prediction["warnings"]``) when a DICOM object is left out for want of an organ."""
OBJECT_NAMES = {"seg": "DICOM SEG", "sr": "DICOM SR", "rtstruct": "RT Structure Set"}


def algorithm_parameters(prediction: dict, segmentation: bool) -> dict[str, str]:
    """The algorithm parameters recorded in SEG and SR: checkpoint (folder name), model grid, mask kind."""
    model = prediction.get("model") or {}
    checkpoint = model.get("checkpoint")
    params = {
        "masks": "segmentation" if segmentation else "boxes",
        "volume": "segmentation" if segmentation else "box",
    }
    if checkpoint:
        params["checkpoint"] = Path(str(checkpoint)).name
    if model.get("input_size"):
        params["model_grid"] = "x".join(str(s) for s in model["input_size"])
    return params


def write_dicom_outputs(
    prediction: dict,
    geometry: Geometry,
    out_dir: str | Path,
    *,
    seg: np.ndarray | None = None,
    classes: Mapping[int, str] | None = None,
    objects: Sequence[str] = ("seg", "sr"),
    run: DicomRun | None = None,
) -> dict[str, dict]:
    """Write the DICOM ``objects`` (of :data:`DICOM_OBJECTS`) of ``prediction`` (a prediction JSON dict).

    ``seg [I, J, K]``: the model's label map on the grid of the source scan ``prediction["image"]`` (whose
    volume has ``geometry``) when the model segments, else ``None`` (each organ's mask is its box).
    ``classes`` (label id -> name) defaults to the detections' names; ``run`` stamps the series (default:
    now). Returns, per object written, its file name and new SOP instance / series UIDs (also stored in
    the JSON). An object with nothing to hold is left out, never written empty (a SEG needs a segment, an
    RT Structure Set an ROI, a TID 1500 SR a measurement group): no organ mask (nothing detected, or a
    segmenting model's empty label map) -> no SEG / RT Structure Set, no detection -> no SR either; a
    line saying which goes to ``prediction["warnings"]``. Raises :class:`InputError` naming the source
    when the series cannot be referenced.
    """
    out_dir = Path(out_dir)
    run = run or DicomRun()
    source = read_source_series(prediction["image"], geometry)
    detections = prediction["detections"]
    if classes is None:
        classes = {int(d["label_id"]): str(d["label"]) for d in detections}
    organs, masks = organ_masks(detections, geometry.size, seg=seg, classes=classes)
    tracking = {int(d["label_id"]): _uid() for d in reversed(detections)}
    tracking.update({o.label_id: _uid() for o in organs if o.label_id not in tracking})
    params = algorithm_parameters(prediction, seg is not None)
    built: dict[str, object] = {}
    if organs and "seg" in objects:
        algorithm = _seg_algorithm(params)
        built["seg"] = build_segmentation(
            masks, organs, source, algorithm=algorithm, tracking_uids=tracking, boxes=seg is None, run=run
        )
    if detections and "sr" in objects:
        findings = _findings(detections, seg, geometry, tracking)
        evidence = [built["seg"]] if "seg" in built else []
        built["sr"] = build_measurement_report(
            findings, source, algorithm=_sr_algorithm(params), evidence=evidence, run=run
        )
    if organs and "rtstruct" in objects:
        rois = [
            OrganROI(o.label_id, o.name, mask, seg is None, o.score)
            for o, mask in zip(organs, masks, strict=True)
        ]
        built["rtstruct"] = build_structure_set(rois, source, run=run)
    skipped = [OBJECT_NAMES[kind] for kind in objects if kind not in built]
    if skipped:
        prediction.setdefault("warnings", []).append(f"{NO_ORGAN_WARNING}: no {', '.join(skipped)} written")
    case_id = prediction["case_id"]
    return {kind: _save(ds, out_dir / f"{case_id}_{kind}.dcm") for kind, ds in built.items()}


def organ_masks(
    detections: Sequence[Mapping],
    size: Sequence[int],
    *,
    seg: np.ndarray | None = None,
    classes: Mapping[int, str],
) -> tuple[list[Segment], np.ndarray]:
    """The organs to write and their masks ``[S, I, J, K]`` bool on the scan grid ``size``.

    With a label map ``seg [I, J, K]``: one organ per label id present (``mask = seg == id``). Else one
    per detection (by label id): the voxels its box fills (:func:`box_voxel_slices`), whole, however the
    boxes overlap. Scores come from the detections (None for a label that was segmented, not detected).
    """
    scores = {int(d["label_id"]): float(d["score"]) for d in detections}
    shape = tuple(int(s) for s in size)
    if seg is not None:
        organs = [replace(o, score=scores.get(o.label_id)) for o in segments_of(seg, classes)]
        masks = np.zeros((len(organs), *shape), dtype=bool)
        for index, organ in enumerate(organs):
            masks[index] = seg == organ.label_id
        return organs, masks
    by_label = {int(d["label_id"]): d for d in detections}
    organs, masks = [], np.zeros((len(by_label), *shape), dtype=bool)
    for index, label_id in enumerate(sorted(by_label)):
        det = by_label[label_id]
        organs.append(
            Segment(index + 1, label_id, classes.get(label_id, str(det["label"])), scores[label_id])
        )
        masks[(index, *box_voxel_slices(det["box_voxel"], shape))] = True
    return organs, masks


def _findings(detections, seg: np.ndarray | None, geometry: Geometry, tracking) -> list[OrganFinding]:
    """One SR finding per detection: its box, score and volume (the label map's voxels when the model
    segments, else the box's)."""
    voxel_mm3 = float(np.prod(geometry.spacing))
    counts = np.bincount(seg.ravel(), minlength=1) if seg is not None else None
    findings = []
    for det in detections:
        label_id = int(det["label_id"])
        if counts is not None:
            volume = float(counts[label_id]) * voxel_mm3 if label_id < len(counts) else 0.0
        else:
            volume = float(np.prod(det["size_mm"]))
        findings.append(
            OrganFinding(
                label_id=label_id,
                name=str(det["label"]),
                score=float(det["score"]),
                box_mm=tuple(float(v) for v in det["box_mm"]),
                volume_mm3=volume,
                tracking_uid=tracking[label_id],
            )
        )
    return findings


def _seg_algorithm(params: Mapping[str, str]):
    import highdicom as hd

    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters=params,
    )


def _sr_algorithm(params: Mapping[str, str]):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=__version__, parameters=[f"{k}={v}" for k, v in params.items()]
    )


def _uid() -> str:
    import highdicom as hd

    return str(hd.UID())


def _save(dataset, path: Path) -> dict:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return {
        "file": path.name,
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
    }


__all__ = [
    "ALGORITHM_NAME",
    "DICOM_OBJECTS",
    "NO_ORGAN_WARNING",
    "OBJECT_NAMES",
    "algorithm_parameters",
    "check_dicom_source",
    "organ_masks",
    "write_dicom_outputs",
]
