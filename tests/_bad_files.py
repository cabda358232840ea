"""Files that lie, built byte by byte: header bombs, impossible geometry, broken DICOM series."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

BOMB_SHAPE = (1250, 1250, 1250)  # int16: 3.9 GB claimed


def nifti_bytes(shape, *, pixdim=(1.0, 1.0, 1.0), data: bool = True, dtype=np.int16) -> bytes:
    """A NIfTI-1 file (header, 4-byte extension flag, voxels in Fortran order) with raw ``pixdim``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header["pixdim"][1:4] = pixdim  # after set_qform, which would recompute it
    header["vox_offset"] = 352
    voxels = np.zeros(shape, dtype).tobytes(order="F") if data else b""
    return header.binaryblock + b"\0" * 4 + voxels


def write_nifti(path: Path, shape, **kwargs) -> Path:
    blob = nifti_bytes(shape, **kwargs)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


def _write_edited(path: Path, shape, end: bytes, separator: str, fields: dict[str, str]) -> Path:
    """A small zero image written by SimpleITK (uncompressed), then the header lines (up to ``end``) whose
    key is in ``fields`` replaced by ``key<separator> value``; the voxel data stay those of ``shape``."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape[::-1], np.int16)), str(path), useCompression=False)
    head, sep, data = path.read_bytes().partition(end)
    lines = head.decode().split("\n")
    for i, line in enumerate(lines):
        key = line.split(separator)[0].strip()
        if key in fields:
            lines[i] = f"{key}{separator} {fields[key]}"
    path.write_bytes("\n".join(lines).encode() + sep + data)
    return path


def write_metaimage(path: Path, shape=(6, 7, 8), **fields: str) -> Path:
    """A small ``.mha`` with header fields (``TransformMatrix``, ``ElementSpacing``, ``DimSize``) replaced."""
    return _write_edited(path, shape, b"ElementDataFile = LOCAL\n", " =", fields)


def write_nrrd(path: Path, shape=(6, 7, 8), **fields: str) -> Path:
    """A small raw ``.nrrd`` with header fields (``sizes``, ``space directions``) replaced."""
    return _write_edited(path, shape, b"\n\n", ":", fields)


def write_header_bomb(path: Path) -> Path:
    """A file of a few hundred bytes whose header claims ``BOMB_SHAPE`` int16 voxels (format by suffix)."""
    if path.name.endswith((".nii", ".nii.gz")):
        return write_nifti(path, BOMB_SHAPE, data=False)
    size = " ".join(str(s) for s in BOMB_SHAPE)
    if path.suffix == ".mha":
        return write_metaimage(path, DimSize=size)
    return write_nrrd(path, sizes=size)


def break_dicom_series(folder: Path, how: str) -> Path:
    """Damage a series written by ``test_io.write_dicom_series`` (files ``slice_000.dcm``...): ``gap``
    (one slice removed), ``duplicate`` (two slices at one position), ``uneven`` (one slice moved by 40 %
    of a step), ``tilt`` (each slice shifted in-plane, as a tilted gantry does)."""
    import pydicom

    files = sorted(folder.glob("slice_*.dcm"))
    middle = files[len(files) // 2]
    if how == "gap":
        middle.unlink()
        return folder
    ds = pydicom.dcmread(middle)
    if how == "duplicate":
        ds.ImagePositionPatient = pydicom.dcmread(files[len(files) // 2 - 1]).ImagePositionPatient
        ds.save_as(middle)
    elif how == "uneven":
        step = float(pydicom.dcmread(files[1]).ImagePositionPatient[2]) - float(
            pydicom.dcmread(files[0]).ImagePositionPatient[2]
        )
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 0.4 * step]
        ds.save_as(middle)
    elif how == "tilt":
        for k, file in enumerate(files):
            ds = pydicom.dcmread(file)
            position = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [position[0], position[1] + 0.8 * k, position[2]]
            ds.save_as(file)
    else:
        raise ValueError(how)
    return folder
