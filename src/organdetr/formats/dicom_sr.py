"""DICOM SR measurement report (TID 1500, highdicom) of detected organs: one volumetric group per organ.

Each group (TID 1411) holds the organ's bounding box as a 3D spatial coordinate in the patient frame
(SCOORD3D ``POLYGON`` volume surface: the box's six faces, each a closed 4-corner polygon, LPS mm, in the
source series' frame of reference), the organ's volume (cm3), the model's score ("Probability", no units)
and the algorithm identification; finding type / site are the organ's SNOMED CT codes. The tracking UID of
a group is the tracking UID of the organ's segment in the DICOM SEG, so the two can be joined.
:func:`read_measurement_report` reads the boxes back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from organdetr import __version__
from organdetr.formats.dicom_run import DicomRun
from organdetr.formats.dicom_source import SourceSeries
from organdetr.formats.organ_codes import coding_scheme_identification, organ_code


@dataclass(frozen=True)
class OrganFinding:
    """One detected organ for the report: ``box_mm`` = ``(x0, y0, z0, x1, y1, z1)`` LPS mm, ``volume_mm3``."""

    label_id: int
    name: str
    score: float
    box_mm: tuple[float, float, float, float, float, float]
    volume_mm3: float
    tracking_uid: str


def box_faces(box_mm: Sequence[float]) -> list[np.ndarray]:
    """The six faces of the axis-aligned box ``(x0, y0, z0, x1, y1, z1)`` (mm), closed polygons ``[5, 3]``."""
    lo, hi = np.asarray(box_mm[:3], dtype=np.float64), np.asarray(box_mm[3:], dtype=np.float64)
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for value in (lo[axis], hi[axis]):
            ring = []
            for cu, cv in ((lo[u], lo[v]), (hi[u], lo[v]), (hi[u], hi[v]), (lo[u], hi[v]), (lo[u], lo[v])):
                point = np.empty(3)
                point[axis], point[u], point[v] = value, cu, cv
                ring.append(point)
            faces.append(np.stack(ring))
    return faces


def build_measurement_report(
    findings: Sequence[OrganFinding],
    source: SourceSeries,
    *,
    algorithm,
    evidence: Sequence[Dataset] = (),
    run: DicomRun | None = None,
):
    """A ``highdicom.sr.Comprehensive3DSR`` (TID 1500) with one measurement group per finding.

    ``algorithm`` is a ``highdicom.sr.AlgorithmIdentification``; ``evidence`` are further instances the
    report refers to (the DICOM SEG), listed with the source series in the evidence sequence; ``run``
    gives SeriesNumber / SeriesDate / SeriesTime (default: now). No findings: a report whose imaging
    measurements container is empty (the model found no organ).
    """
    import highdicom as hd

    observer = _device_observer()
    groups = []
    any_fallback = False
    for finding in findings:
        code = organ_code(finding.name)
        any_fallback |= code.fallback
        groups.append(_measurement_group(finding, code, source, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source.datasets, *evidence],
            content=report,
            series_instance_uid=hd.UID(),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="organdetr",
            is_complete=True,
            series_description="organdetr organ measurements",
            software_versions=__version__,
            **(run or DicomRun()).highdicom_series("sr"),
        )
    if any_fallback:
        sr.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return sr


def _device_observer():
    """The report's observer: this program, as a device (``highdicom.sr.ObserverContext``)."""
    import highdicom as hd

    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="organdetr", manufacturer_name="organdetr", model_name="organdetr"
        ),
    )


def _measurement_group(finding: OrganFinding, code, source: SourceSeries, algorithm):
    """One organ's TID 1411 group: its box as a volume surface, its volume (cm3) and score, its codes."""
    import highdicom as hd

    surface = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
        graphic_data=box_faces(finding.box_mm),
        frame_of_reference_uid=source.frame_of_reference_uid,
        source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid),
    )
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=round(finding.volume_mm3 / 1000.0, 6),
            unit=codes.UCUM.CubicCentimeter,
        ),
        hd.sr.Measurement(
            name=codes.DCM.Probability,
            value=round(float(finding.score), 6),
            unit=codes.UCUM.NoUnits,
        ),
    ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=finding.tracking_uid, identifier=f"{finding.name} (label {finding.label_id})"[:64]
        ),
        referenced_volume_surface=surface,
        finding_type=code.property_type,
        finding_category=code.category,
        finding_sites=[
            hd.sr.FindingSite(anatomic_location=code.anatomic_location, laterality=code.laterality)
        ],
        algorithm_id=algorithm,
        measurements=measurements,
    )


def read_measurement_report(path: str | Path) -> list[dict]:
    """Organ entries of a report written by :func:`build_measurement_report`, read with highdicom.

    Each: ``name`` (from the tracking identifier), ``tracking_uid``, ``finding_type`` (code value, scheme,
    meaning), ``box_mm`` (bounds of the volume surface, LPS mm), ``volume_cm3``, ``score``,
    ``frame_of_reference_uid``.
    """
    import highdicom as hd

    sr = hd.sr.srread(str(path))
    entries = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        surface = group.roi
        points = np.concatenate(
            [np.asarray(face, dtype=np.float64).reshape(-1, 3) for face in surface.graphic_data]
        )
        values = {}
        for measurement in group.get_measurements():
            values[str(measurement.name.value)] = float(measurement.value)
        finding = group.finding_type
        identifier = str(group.tracking_identifier or "")
        entries.append(
            {
                "name": identifier.split(" (label ")[0],
                "tracking_uid": str(group.tracking_uid),
                "finding_type": (finding.value, finding.scheme_designator, finding.meaning)
                if finding
                else None,
                "box_mm": [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()],
                "volume_cm3": values.get(codes.SCT.Volume.value),
                "score": values.get(codes.DCM.Probability.value),
                "frame_of_reference_uid": str(surface.frame_of_reference_uid),
            }
        )
    return entries


__all__ = [
    "OrganFinding",
    "box_faces",
    "build_measurement_report",
    "read_measurement_report",
]
