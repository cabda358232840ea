"""Tiny single-frame CT DICOM series written with pydicom (full UIDs, so SEG / SR can reference them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(
    folder: Path,
    size: tuple[int, int, int] = (24, 20, 6),
    spacing: tuple[float, float, float] = (1.5, 1.25, 2.5),
    origin: tuple[float, float, float] = (-18.0, -12.0, -100.0),
    *,
    modality: str = "CT",
    seed: int = 0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
) -> tuple[Path, np.ndarray]:
    """Series of ``size = (I, J, K)`` (columns, rows, slices); returns ``(folder, HU [I, J, K])``.

    ``orientation``: ImageOrientationPatient (row direction = along i, column direction = along j), axial by
    default; slice ``k`` lies at ``origin + k * spacing[2] * (row x column)``.

    Files are named in *reverse* slice order so that readers must sort by position, not by name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hu = rng.normal(-200, 40, size).astype(np.int16)
    hu[6:18, 4:14, 1:5] = 60
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    for k in range(size[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Phantom^Test", "ORGANDETR-1"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20250101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "A1", "", "1"
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 3, k + 1, "organdetr-tests"
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + spacing[2] * k * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows = j), column spacing (i)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = size[1], size[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        pydicom.dcmwrite(folder / f"slice_{size[2] - k:03d}.dcm", ds, enforce_file_format=True)
    return folder, hu
