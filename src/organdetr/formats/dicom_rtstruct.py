"""DICOM RT Structure Set of detected organs, for a DICOM CT series: one ROI per organ, contours per slice.

Each organ becomes one ROI (``StructureSetROISequence`` / ``ROIContourSequence`` /
``RTROIObservationsSequence`` items sharing its ROI number) named like its SEG segment ("Right kidney"),
with the organ's colour everywhere (``ROIDisplayColor``, :func:`organdetr.core.colours.label_colour`), its
SNOMED CT codes (``RTROIIdentificationCodeSequence`` with laterality as a nested modifier, and the
``SegmentedPropertyCategoryCodeSequence``), interpreted type ``ORGAN`` and the model's score in the ROI
description. On every source slice the organ covers there is one ``CLOSED_PLANAR`` contour per outline:

* box (detection model): the rectangle of the voxels the box fills
  (:func:`organdetr.core.boxes.raster.box_voxel_slices`), drawn on the voxel edges ``i0 - 0.5 .. i1 + 0.5``;
* mask (segmenting model): the iso-line 0.5 of the slice's mask (marching squares, ``contourpy``), which
  runs half-way between inside and outside voxel centres; holes are further contours inside the outer one
  (even-odd rule, as treatment planning systems read nested contours); collinear points are dropped.

Either way the pixel centres inside a slice's contours are the organ's voxels on that slice (exactly for
boxes; for masks up to marching-squares choices at diagonal-only contacts, within one voxel).

Geometry: a contour point at voxel ``(i, j)`` of source slice ``k`` is
``ImagePositionPatient_k + i * PixelSpacing[1] * row_dir_k + j * PixelSpacing[0] * col_dir_k`` (LPS mm),
with ``(row_dir_k, col_dir_k)`` = that slice's ``ImageOrientationPatient``: each slice's own header, so
oblique series and any file order are placed right (``SourceSeries.datasets[k]`` is the slice at volume
index ``k``). Every contour references its slice (``ContourImageSequence``); the structure set references
the source series and frame of reference (``ReferencedFrameOfReferenceSequence``).

Library choice: plain **pydicom** (already a dependency) plus **contourpy** (already installed as
matplotlib's dependency). highdicom 0.28 has no RT Structure Set class. rt-utils would add opencv-python
(about 60 MB of wheels) to trace contours, rounds contour points to the pixel grid from cv2 (contours on
pixel centres, i.e. half a voxel inside the organ) and orders slices itself; here the geometry comes from
the same :class:`~organdetr.formats.dicom_source.SourceSeries` matching that the SEG uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import contourpy
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from organdetr import __version__
from organdetr.core.colours import label_colour
from organdetr.formats.dicom_run import DicomRun
from organdetr.formats.dicom_source import SourceSeries
from organdetr.formats.organ_codes import OrganCode, coding_scheme_identification, organ_code

MANUFACTURER = "organdetr"

_PATIENT_STUDY = (
    ("PatientName", ""),
    ("PatientID", ""),
    ("PatientBirthDate", ""),
    ("PatientSex", ""),
    ("StudyDate", ""),
    ("StudyTime", ""),
    ("ReferringPhysicianName", ""),
    ("StudyID", ""),
    ("AccessionNumber", ""),
    ("StudyDescription", None),
    ("PatientAge", None),
    ("PatientSize", None),
    ("PatientWeight", None),
)
"""Patient / General Study / Patient Study attributes copied from the source (default when absent; None: left
out), as highdicom copies them into the SEG and SR (dcentvfy finds the study's instances consistent)."""


@dataclass(frozen=True)
class OrganROI:
    """One organ for the structure set: ``mask [I, J, K]`` bool on the source grid, ``box`` True when the
    mask is a detection box (drawn as rectangles), the model's ``score`` (None when unknown)."""

    label_id: int
    name: str
    mask: np.ndarray
    box: bool
    score: float | None = None


def slice_outlines(mask_2d: np.ndarray, box: bool) -> list[np.ndarray]:
    """Closed outlines of one slice's mask ``[I, J]`` in voxel coordinates ``(n, 2)`` of ``(i, j)``, first
    point not repeated. ``box``: the mask is a rectangle; its outline is its 4 voxel-edge corners."""
    if not mask_2d.any():
        return []
    if box:
        ii, jj = np.nonzero(mask_2d)
        i0, i1, j0, j1 = ii.min() - 0.5, ii.max() + 0.5, jj.min() - 0.5, jj.max() + 0.5
        return [np.array([[i0, j0], [i1, j0], [i1, j1], [i0, j1]], dtype=np.float64)]
    padded = np.pad(mask_2d.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded.T, line_type=contourpy.LineType.Separate).lines(0.5)
    outlines = []
    for line in lines:  # (x, y) = (i + 1, j + 1) on the padded grid, closed (last point = first)
        ring = _drop_collinear(np.asarray(line, dtype=np.float64)[:-1] - 1.0)
        if len(ring) >= 3:
            outlines.append(ring)
    return outlines


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """``ring (n, 2)`` without the points that lie on the straight line between their neighbours."""
    before, after = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - before[:, 0]) * (after[:, 1] - ring[:, 1]) - (ring[:, 1] - before[:, 1]) * (
        after[:, 0] - ring[:, 0]
    )
    return ring[np.abs(cross) > 1e-9]


def voxel_to_patient(ds: Dataset, points_ij: np.ndarray) -> np.ndarray:
    """Voxel ``(i, j)`` points ``(n, 2)`` of the slice ``ds`` -> LPS mm ``(n, 3)`` from its own
    ImagePositionPatient, ImageOrientationPatient and PixelSpacing (``[row step (j), column step (i)]``)."""
    origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_step, column_step = (float(v) for v in ds.PixelSpacing)
    along_i, along_j = orientation[:3] * column_step, orientation[3:] * row_step
    return origin + points_ij[:, :1] * along_i + points_ij[:, 1:2] * along_j


def build_structure_set(rois: Sequence[OrganROI], source: SourceSeries, *, run: DicomRun | None = None):
    """A pydicom RT Structure Set (RTSTRUCT) of ``rois`` on ``source``, in its study, under new UIDs.

    ``run`` gives SeriesNumber / SeriesDate / SeriesTime (default: now). Raises ``ValueError`` when there is
    no ROI or a mask is not on the source grid.
    """
    if not rois:
        raise ValueError("no organ to write into an RT Structure Set")
    expected = (int(source.first.Columns), int(source.first.Rows), len(source.datasets))
    for roi in rois:
        if tuple(roi.mask.shape) != expected:
            raise ValueError(f"mask of {roi.name} {roi.mask.shape} is not on the source grid {expected}")
    run = run or DicomRun()
    ds = _header(source, run)
    codes = [organ_code(roi.name) for roi in rois]
    ds.StructureSetROISequence = DicomSequence(
        [
            _structure_set_roi(n, roi, code, source)
            for n, (roi, code) in enumerate(zip(rois, codes, strict=True), 1)
        ]
    )
    ds.ROIContourSequence = DicomSequence([_roi_contour(n, roi, source) for n, roi in enumerate(rois, 1)])
    ds.RTROIObservationsSequence = DicomSequence([_observation(n, code) for n, code in enumerate(codes, 1)])
    if any(code.fallback for code in codes):
        ds.CodingSchemeIdentificationSequence = DicomSequence([coding_scheme_identification()])
    return ds


def _header(source: SourceSeries, run: DicomRun) -> Dataset:
    """SOP common, patient / study (copied from the source), RT series, equipment, frame of reference and
    the structure set's references to the source series."""
    first = source.first
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    now = datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = source.study_uid
    for keyword, default in _PATIENT_STUDY:
        value = first.get(keyword, default)
        if value is not None:
            setattr(ds, keyword, value)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = run.series_number("rtstruct")
    ds.SeriesDate, ds.SeriesTime = run.date, run.time
    ds.SeriesDescription = "organdetr organ contours"
    ds.OperatorsName = ""
    ds.Manufacturer = ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = __version__
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "ORGANS"
    ds.StructureSetName = "organdetr organs"
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = run.date, run.time
    series = Dataset()
    series.SeriesInstanceUID = source.series_uid
    series.ContourImageSequence = DicomSequence([_image_reference(s) for s in source.datasets])
    frame = Dataset()
    frame.FrameOfReferenceUID = source.frame_of_reference_uid
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (as PS3.3 asks)
    study.ReferencedSOPInstanceUID = source.study_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    return ds


def _image_reference(image: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return item


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _structure_set_roi(number: int, roi: OrganROI, code: OrganCode, source: SourceSeries) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = source.frame_of_reference_uid
    item.ROIName = code.display_name
    kind = "organ box (detection)" if roi.box else "organ segmentation"
    score = "" if roi.score is None else f", score {roi.score:.3f}"
    item.ROIDescription = f"{kind}{score} ({roi.name}, label {roi.label_id})"[:64]
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"organdetr {__version__}"
    return item


def _roi_contour(number: int, roi: OrganROI, source: SourceSeries) -> Dataset:
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = [int(round(255 * c)) for c in label_colour(roi.label_id)]
    contours = []
    for k, image in enumerate(source.datasets):
        for outline in slice_outlines(roi.mask[:, :, k], roi.box):
            contour = Dataset()
            contour.ContourNumber = len(contours) + 1
            contour.ContourImageSequence = DicomSequence([_image_reference(image)])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(outline)
            points = voxel_to_patient(image, outline)
            contour.ContourData = [f"{v:.4f}".rstrip("0").rstrip(".") for v in points.ravel()]
            contours.append(contour)
    if contours:  # type 3: left out for an organ that fills no voxel centre (a box beyond the last slice)
        item.ContourSequence = DicomSequence(contours)
    return item


def _observation(number: int, code: OrganCode) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.RTROIInterpretedType = "ORGAN"
    item.ROIInterpreter = ""
    identification = _code_item(code.property_type)
    if code.laterality is not None and code.region is None:
        identification.SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
            [_code_item(code.laterality)]
        )
    item.RTROIIdentificationCodeSequence = DicomSequence([identification])
    item.SegmentedPropertyCategoryCodeSequence = DicomSequence([_code_item(code.category)])
    return item


__all__ = ["OrganROI", "build_structure_set", "slice_outlines", "voxel_to_patient"]
