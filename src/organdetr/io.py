"""Reading and writing CT volumes with SimpleITK (NIfTI, NRRD, MHA/MHD, DICOM series folders).

Arrays come back in ``(i, j, k)`` order (SimpleITK's ``(k, j, i)`` is transposed here and only here),
with a :class:`~organdetr.geometry.Geometry` in the LPS world frame. Every reader validates its input
(readable, 3D, scalar, finite, not absurdly large) and raises :class:`~organdetr.errors.InputError`
naming the file; a DICOM series that SimpleITK/GDCM cannot decode falls back to pydicom (+pylibjpeg).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from organdetr.atomic import atomic_path
from organdetr.errors import InputError
from organdetr.geometry import Geometry

MAX_VOXELS = 2_000_000_000
"""Largest volume :func:`read_image` accepts (2e9 voxels = 4 GB as int16): beyond this is a wrong file."""

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass
class Volume:
    """A 3D array ``[I, J, K]`` and its geometry."""

    array: np.ndarray
    geometry: Geometry


def geometry_of(image: sitk.Image) -> Geometry:
    """Geometry of a 3D SimpleITK image."""
    return Geometry(
        size=tuple(int(s) for s in image.GetSize()),
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """``(I, J, K)`` array + geometry -> SimpleITK image.

    A Fortran-ordered ``(I, J, K)`` array (what :func:`from_sitk` returns) is passed without a copy.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in geometry.spacing])
    image.SetOrigin([float(o) for o in geometry.origin])
    image.SetDirection([float(d) for d in geometry.direction])
    return image


def from_sitk(image: sitk.Image) -> Volume:
    """SimpleITK image -> :class:`Volume` with an ``(I, J, K)`` array.

    The array is the transposed view of SimpleITK's ``(k, j, i)`` buffer (Fortran-ordered, no copy).
    """
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    return Volume(array, geometry_of(image))


# ----------------------------------------------------------------------------- reading


def read_image(path: str | Path, *, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a 3D image file (NIfTI, NRRD, MHA/MHD, single DICOM) or a DICOM series folder.

    Returns a :class:`Volume` with the array in ``(i, j, k)`` order and the geometry in LPS mm.
    Raises :class:`InputError` naming ``path`` if it is missing, unreadable/corrupt, not 3D (a 4D
    file with one volume is accepted), multi-component, larger than ``max_voxels``, or holds NaN/Inf.
    """
    path = Path(path)
    if path.is_dir():
        image = _read_dicom_series(path, max_voxels)
    elif path.is_file():
        image = _read_file(path, max_voxels)
    else:
        raise InputError(path, "file not found")
    volume = from_sitk(image)
    _check_finite(path, volume.array)
    if path.name.endswith(".nii.gz"):
        _check_gzip_complete(path)
    elif path.name.endswith(".nii"):
        _check_file_complete(path)
    if volume.array.dtype.kind == "f" and path.name.endswith((".nii", ".nii.gz")):
        _check_finite_nifti(path)
    return volume


def read_label_map(path: str | Path, *, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a label map: like :func:`read_image`, then checked to hold non-negative integer ids.

    Float files holding whole numbers (common in public datasets) are cast; the array comes back as
    the smallest unsigned type that holds the largest id (uint8/uint16/uint32).
    """
    volume = read_image(path, max_voxels=max_voxels)
    volume.array = integer_labels(path, volume.array)
    return volume


def integer_labels(path: str | Path, array: np.ndarray) -> np.ndarray:
    """``array`` as uint8/16/32 label ids; InputError for fractional or negative values."""
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise InputError(path, "label map holds non-integer values (is this an image, not labels?)")
    elif array.dtype.kind not in "iub":
        raise InputError(path, f"label map has unsupported pixel type {array.dtype}")
    if array.size == 0:
        raise InputError(path, "label map is empty (zero voxels)")
    low, high = array.min(), array.max()
    if low < 0:
        raise InputError(path, f"label map holds negative ids (min {low})")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return array if array.dtype == dtype else array.astype(dtype)
    raise InputError(path, f"label id {high} is too large")


def _read_file(path: Path, max_voxels: int) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(path, f"cannot read image ({_itk_reason(err)})") from None
    _check_header(path, tuple(reader.GetSize()), reader.GetNumberOfComponents(), max_voxels)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(
            path, f"cannot read image data, file corrupt or truncated ({_itk_reason(err)})"
        ) from None
    return _squeeze_4d(image)


def _check_header(path: Path, size: tuple[int, ...], components: int, max_voxels: int) -> None:
    shape = "x".join(str(s) for s in size)
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise InputError(path, f"image is {len(size)}D (shape {shape}); expected a 3D volume")
    if min(size) < 1:
        raise InputError(path, f"image has an empty axis (shape {shape})")
    if components != 1:
        raise InputError(
            path, f"image has {components} components per voxel (RGB/vector); expected scalar CT"
        )
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > max_voxels:
        raise InputError(
            path, f"image has {voxels:.3g} voxels (shape {shape}); the limit is {max_voxels:.3g}"
        )


def _squeeze_4d(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        return sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    return image


def _check_finite(path: Path, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(path, f"image holds {bad} NaN or infinite voxels")


def _nifti_bytes(path: Path) -> int:
    """Bytes a NIfTI file must hold (header + extensions + voxel data), from its header."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
        return int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
    except Exception as err:
        raise InputError(path, f"cannot read NIfTI header ({' '.join(str(err).split())})") from None


def _check_file_complete(path: Path) -> None:
    """ITK may read a truncated ``.nii`` without complaint: compare the file size with the header."""
    expected = _nifti_bytes(path)
    if path.stat().st_size < expected:
        raise InputError(path, f"file is truncated ({path.stat().st_size} of {expected} bytes)")


def _check_gzip_complete(path: Path) -> None:
    """ITK reads a truncated ``.nii.gz`` without complaint; check the gzip size trailer (cheap).

    Only when the trailer disagrees with the header's data size is the stream decompressed to tell a
    truncated file from one with trailing bytes.
    """
    import gzip
    import zlib

    expected = _nifti_bytes(path)
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        if int.from_bytes(fh.read(4), "little") == expected % 2**32:
            return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        raise InputError(path, "file is truncated or corrupt (the gzip stream ends early)") from None
    if total < expected:
        raise InputError(path, f"file is truncated ({total} of {expected} bytes)")


def _check_finite_nifti(path: Path) -> None:
    """ITK's NIfTI reader turns NaN into 0, so float NIfTIs are checked on disk with nibabel."""
    import nibabel as nib

    try:
        raw = np.asanyarray(nib.load(str(path)).dataobj.get_unscaled())
    except Exception as err:
        raise InputError(path, f"cannot read image data ({' '.join(str(err).split())})") from None
    if raw.dtype.kind == "f":
        _check_finite(path, raw)


def _itk_reason(err: RuntimeError) -> str:
    """The useful last line of an ITK exception (its message spans several lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if "No such file or directory" not in line] or lines
    reason = lines[-1] if lines else type(err).__name__
    return re.sub(r"^.*?(ERROR|Description): *", "", reason)[:200]


# ----------------------------------------------------------------------------- DICOM series


def _read_dicom_series(folder: Path, max_voxels: int) -> sitk.Image:
    """The largest DICOM series in ``folder`` (SimpleITK/GDCM; pydicom fallback for undecodable pixels)."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(folder, "folder holds no DICOM series (and is not an image file)")
    files = max(
        (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len
    )
    if len(files) < 2:
        raise InputError(folder, "DICOM series has a single slice; expected a 3D series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError:
        image = None
    if image is None or image.GetNumberOfComponentsPerPixel() != 1:
        return read_dicom_series_pydicom(folder, [Path(f) for f in files], max_voxels)
    _check_header(folder, tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel(), max_voxels)
    return image


def read_dicom_series_pydicom(folder: Path, files: list[Path], max_voxels: int = MAX_VOXELS) -> sitk.Image:
    """Read one DICOM series with pydicom (+pylibjpeg for JPEG/JPEG2000) and build its geometry.

    Slices are sorted along the slice normal (ImageOrientationPatient row x column); spacing from
    PixelSpacing and the slice positions; HU = stored * RescaleSlope + RescaleIntercept.
    """
    import pydicom

    slices = []
    for file in files:
        try:
            slices.append(pydicom.dcmread(file))
        except Exception as err:
            raise InputError(file, f"cannot read DICOM ({err})") from None
    first = slices[0]
    try:
        orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    except AttributeError as err:
        raise InputError(files[0], f"DICOM slice lacks geometry tags ({err})") from None
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([s.ImagePositionPatient for s in slices], dtype=np.float64)
    order = np.argsort(positions @ normal)
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if np.any(steps <= 1e-6):
        raise InputError(folder, "DICOM series has two slices at the same position")
    if np.ptp(steps) > 0.01 * float(np.median(steps)) + 1e-3:
        raise InputError(
            folder, f"DICOM slices are unevenly spaced ({steps.min():.3f}..{steps.max():.3f} mm)"
        )
    size = (int(first.Columns), int(first.Rows), len(slices))
    _check_header(folder, size, int(getattr(first, "SamplesPerPixel", 1)), max_voxels)
    pixels = np.empty(size[::-1], dtype=np.float32)  # (k, j, i) = (slice, row, column)
    for k, index in enumerate(order):
        ds = slices[index]
        try:
            stored = ds.pixel_array
        except Exception as err:
            raise InputError(files[index], f"cannot decode DICOM pixels ({err})") from None
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        pixels[k] = stored * slope + intercept
    if np.array_equal(pixels, np.round(pixels)) and pixels.min() >= -32768 and pixels.max() <= 32767:
        pixels = pixels.astype(np.int16)
    image = sitk.GetImageFromArray(pixels)
    # PixelSpacing is (row spacing = between rows, column spacing = between columns): i steps columns
    image.SetSpacing((col_spacing, row_spacing, float(np.median(steps))))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(float(v) for v in np.stack([row_dir, col_dir, normal], axis=1).ravel()))
    return image


# ----------------------------------------------------------------------------- label tables


def read_label_table(path: str | Path) -> dict[int, str] | None:
    """Label id -> name from a NIfTI's TotalSegmentator ``<CaretExtension>`` header table, or ``None``.

    Label 0 (background / "Unknown") is dropped. Non-NIfTI files and NIfTIs without the table give
    ``None``.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception:
        return None
    for extension in header.extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and b"<CaretExtension" in content:
            return _parse_caret_labels(content)
    return None


def _parse_caret_labels(content: bytes) -> dict[int, str] | None:
    try:
        root = ET.fromstring(content.rstrip(b"\x00").decode("utf-8", errors="replace"))
    except ET.ParseError:
        return None
    table = {}
    for label in root.iter("Label"):
        key = int(label.get("Key", "-1"))
        name = (label.text or "").strip()
        if key > 0 and name:
            table[key] = name
    return table or None


# ----------------------------------------------------------------------------- writing


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True) -> None:
    """Write ``array [I, J, K]`` with ``geometry`` to ``path`` (format from the suffix), atomically.

    Two-file formats (``.mhd`` + data, ``.nhdr`` + data) are written into a temporary folder beside
    ``path`` under their final names, then moved: the data file first, the header last.
    """
    path = Path(path)
    image = to_sitk(array, geometry)
    if path.suffix.lower() not in (".mhd", ".nhdr"):
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        return
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp_dir:
        sitk.WriteImage(image, str(Path(tmp_dir) / path.name), useCompression=compress)
        written = sorted(Path(tmp_dir).iterdir(), key=lambda p: p.name == path.name)  # header last
        for file in written:
            os.replace(file, path.parent / file.name)
