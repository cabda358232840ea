"""The DICOM series a prediction came from: its headers, matched slice by slice to the volume read from it.

DICOM SEG frames and SR references must name the source instances, so the headers of the series that
:func:`organdetr.io.images.read_image` read are re-read here (pydicom, no pixel data) and each slice is
assigned the
``k`` index of the volume ``[I, J, K]`` it became: ``ImagePositionPatient`` mapped through the volume's
geometry must land on an integer ``k`` with ``i = j = 0``, and ``ImageOrientationPatient`` must be the
volume's ``i`` / ``j`` directions. Anything else (a different series, a multi-frame file, an anonymised
series without UIDs, not CT) is an :class:`~organdetr.runtime.errors.InputError` before anything is written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from organdetr.core.geometry import Geometry
from organdetr.io.discovery import is_dicom_file, is_dicom_series
from organdetr.runtime.errors import InputError

SOURCE_MODALITIES = ("CT",)
"""Modalities the DICOM routes accept (the detector is trained on CT)."""

_REQUIRED_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "FrameOfReferenceUID",
)


@dataclass
class SourceSeries:
    """Headers of a single-frame DICOM series, ``datasets[k]`` = the slice at volume index ``k``."""

    path: Path
    datasets: list[Dataset]

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)


def is_dicom_input(path: str | Path) -> bool:
    """``True`` for a folder holding DICOM files or a DICOM file (the rules of ``organdetr predict``)."""
    path = Path(path)
    return is_dicom_series(path) if path.is_dir() else path.is_file() and is_dicom_file(path)


def read_source_series(path: str | Path, geometry: Geometry) -> SourceSeries:
    """Headers of the DICOM series at ``path`` (folder or file) ordered by the volume's ``k`` index.

    ``geometry`` is the geometry of the volume :func:`organdetr.io.images.read_image` returned for ``path``.
    Raises :class:`InputError` (naming ``path``) when no series there matches it slice for slice, when
    the series lacks the UIDs a derived object must reference, or when its modality is not CT.
    """
    path = Path(path)
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in _image_headers(path):
        by_series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    if not by_series:
        raise InputError(path, "holds no DICOM image slices with ImagePositionPatient")
    candidates = sorted(by_series.values(), key=len, reverse=True)
    problem = ""
    for datasets in candidates:
        try:
            ordered = _order_by_volume_index(datasets, geometry)
        except ValueError as err:
            problem = str(err)
            continue
        check_source_header(path, ordered[0])
        if len({str(ds.get("SOPInstanceUID", "")) for ds in ordered}) != len(ordered):
            raise InputError(path, "DICOM slices share SOPInstanceUIDs (or lack them)")
        for ds in ordered:
            _tidy_header(ds)
        return SourceSeries(path, ordered)
    raise InputError(path, f"no DICOM series there matches the volume read from it ({problem})")


def check_dicom_source(path: str | Path) -> None:
    """Cheap check before any model runs: ``path`` is DICOM and its first image slice passes
    :func:`check_source_header`. Raises :class:`InputError` naming ``path`` otherwise."""
    path = Path(path)
    if not is_dicom_input(path):
        raise InputError(path, "not DICOM; DICOM outputs need a DICOM series as input")
    for ds in _image_headers(path):
        check_source_header(path, ds)
        return
    raise InputError(path, "holds no readable DICOM image slice")


def check_source_header(path: str | Path, ds: Dataset) -> None:
    """Raise :class:`InputError` (naming ``path``) unless ``ds`` has the UIDs a derived object must
    reference (study, series, instance, SOP class, frame of reference) and is CT."""
    missing = [name for name in _REQUIRED_UIDS if not str(ds.get(name, "") or "").strip()]
    if missing:
        raise InputError(
            path,
            f"DICOM series has no {', '.join(missing)} (anonymised without UIDs?); "
            "a DICOM SEG / SR must reference them",
        )
    modality = str(ds.get("Modality", "") or "") or "?"
    if modality not in SOURCE_MODALITIES:
        raise InputError(
            path, f"DICOM series is {modality}, not CT; the DICOM outputs are made for CT series"
        )


def _image_headers(path: Path):
    """Headers (no pixel data) of the DICOM image slices at ``path`` (folder or file), in file-name order."""
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if path.is_dir()
        else [path]
    )
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
            continue
        if "ImagePositionPatient" in ds:
            yield ds


def _tidy_header(ds: Dataset) -> None:
    """Header fixes that keep the meaning and let highdicom copy the patient / study modules:
    an empty SpecificCharacterSet means the default repertoire, so it is removed."""
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet


def _order_by_volume_index(datasets: list[Dataset], geometry: Geometry) -> list[Dataset]:
    size = geometry.size
    if len(datasets) != size[2]:
        raise ValueError(f"{len(datasets)} slices for a volume of {size[2]}")
    if int(getattr(datasets[0], "NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame DICOM images are not supported, only one slice per file")
    direction = geometry.direction_matrix
    slots: list[Dataset | None] = [None] * size[2]
    for ds in datasets:
        if (int(ds.Columns), int(ds.Rows)) != (size[0], size[1]):
            raise ValueError(f"slice of {ds.Columns}x{ds.Rows} pixels for a volume of {size[0]}x{size[1]}")
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if not (
            np.allclose(orientation[:3], direction[:, 0], atol=1e-3)
            and np.allclose(orientation[3:], direction[:, 1], atol=1e-3)
        ):
            raise ValueError("slice orientation differs from the volume's")
        index = geometry.world_to_index(np.asarray(ds.ImagePositionPatient, dtype=np.float64))
        k = int(round(index[2]))
        if abs(index[0]) > 0.01 or abs(index[1]) > 0.01 or abs(index[2] - k) > 0.01 or not 0 <= k < size[2]:
            raise ValueError(f"slice at {list(ds.ImagePositionPatient)} is not a slice of the volume")
        if slots[k] is not None:
            raise ValueError(f"two slices at volume index k = {k}")
        slots[k] = ds
    return [ds for ds in slots if ds is not None]


__all__ = [
    "SOURCE_MODALITIES",
    "SourceSeries",
    "check_dicom_source",
    "check_source_header",
    "is_dicom_input",
    "read_source_series",
]
