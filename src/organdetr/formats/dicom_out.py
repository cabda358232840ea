"""`predict --dicom-out`: the DICOM SEG and SR of one prediction, written beside its JSON.

:func:`~organdetr.formats.dicom_source.check_dicom_source` runs before the model (cheap header checks: a
DICOM input, with the UIDs a derived object must reference, CT); :func:`write_dicom_outputs` runs after it,
with the label map to put into the SEG: the model's segmentation ``[I, J, K]`` when it segments, else the
box masks. Files:

    <case>_seg.dcm   DICOM SEG, one BINARY segment per organ present in the label map
    <case>_sr.dcm    DICOM SR (TID 1500), one volumetric measurement group per detection

Both share the source study, reference the source series (the SR also the SEG) and get new series /
instance UIDs; a segment and its SR group share one tracking UID.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes

from organdetr import __version__
from organdetr.core.geometry import Geometry
from organdetr.formats.dicom_seg import build_segmentation
from organdetr.formats.dicom_source import check_dicom_source, read_source_series
from organdetr.formats.dicom_sr import OrganFinding, build_measurement_report
from organdetr.runtime.atomic import atomic_path

ALGORITHM_NAME = "organdetr"


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
    label_map: np.ndarray,
    geometry: Geometry,
    out_dir: str | Path,
    *,
    classes: Mapping[int, str] | None = None,
    segmentation: bool = False,
) -> dict[str, dict]:
    """Write ``<case>_seg.dcm`` and ``<case>_sr.dcm`` for ``prediction`` (a prediction JSON dict).

    ``label_map [I, J, K]`` holds label ids on the grid of the source scan ``prediction["image"]`` (whose
    volume has ``geometry``); ``segmentation`` says whether it is the model's segmentation (else box masks).
    ``classes`` (label id -> name) defaults to the detections' names. Returns, per object written
    (``"seg"``, ``"sr"``), its file name and new SOP instance / series UIDs (also stored in the JSON).
    Raises :class:`InputError` naming the source when the series cannot be referenced.
    """
    import highdicom as hd

    out_dir = Path(out_dir)
    source = read_source_series(prediction["image"], geometry)
    detections = prediction["detections"]
    if classes is None:
        classes = {int(d["label_id"]): str(d["label"]) for d in detections}
    tracking = {int(d["label_id"]): hd.UID() for d in reversed(detections)}
    params = algorithm_parameters(prediction, segmentation)
    family = codes.cid7162.ArtificialIntelligence
    seg_algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=family, version=__version__, parameters=params
    )
    sr_algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=__version__, parameters=[f"{k}={v}" for k, v in params.items()]
    )
    case_id = prediction["case_id"]
    written: dict[str, dict] = {}
    evidence = []
    if np.any(label_map):
        seg = build_segmentation(
            label_map,
            classes,
            source,
            algorithm=seg_algorithm,
            tracking_uids=tracking,
            boxes=not segmentation,
        )
        written["seg"] = _save(seg, out_dir / f"{case_id}_seg.dcm")
        evidence.append(seg)

    voxel_mm3 = float(np.prod(geometry.spacing))
    counts = np.bincount(label_map.ravel(), minlength=1) if segmentation else None
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
    sr = build_measurement_report(findings, source, algorithm=sr_algorithm, evidence=[seg] if seg else [])
    written: dict[str, dict] = {}  # both objects are built before either is written
    if seg is not None:
        written["seg"] = _save(seg, out_dir / f"{case_id}_seg.dcm")
    written["sr"] = _save(sr, out_dir / f"{case_id}_sr.dcm")
    return written


def _save(dataset, path: Path) -> dict:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return {
        "file": path.name,
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
    }


__all__ = ["ALGORITHM_NAME", "algorithm_parameters", "check_dicom_source", "write_dicom_outputs"]
