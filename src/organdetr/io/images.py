"""Reading and writing CT volumes with SimpleITK (NIfTI, NRRD, MHA/MHD, DICOM series folders).

Readers return a :class:`~organdetr.core.volume.Volume`: the array in ``(i, j, k)`` order (SimpleITK's
``(k, j, i)`` is transposed by :mod:`organdetr.core.volume`, the SimpleITK bridge) with a
:class:`~organdetr.core.geometry.Geometry` in the LPS world frame. Every reader validates its input and raises
:class:`~organdetr.runtime.errors.InputError` naming the file: the header first, before any voxel is read (3D,
scalar, not more voxels than ``max_voxels``, claimed bytes within the memory cap and within what the file
holds, spacing > 0, orthonormal direction: ``organdetr.io.headers``), DICOM slice positions
(``organdetr.io.dicom_series``), then the voxels (complete, finite). A DICOM series that SimpleITK/GDCM
cannot decode falls back to pydicom (+pylibjpeg).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume, from_sitk, to_sitk
from organdetr.io.dicom_series import SliceLayout, read_slice_layout, resample_slices
from organdetr.io.headers import (
    check_claimed_bytes,
    check_file_holds,
    check_geometry,
    check_nifti_pixdim,
    max_image_bytes,
    pixel_bytes,
)
from organdetr.runtime.atomic import atomic_path, temp_affixes
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import collapse

MAX_VOXELS = 2_000_000_000
"""Largest volume :func:`read_image` accepts (2e9 voxels = 4 GB as int16): beyond this is a wrong file."""

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

UnevenSlices = Literal["refuse", "resample"]


# ----------------------------------------------------------------------------- reading


def read_image(
    path: str | Path,
    *,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int | None = None,
    uneven_slices: UnevenSlices = "refuse",
) -> Volume:
    """Read a 3D image file (NIfTI, NRRD, MHA/MHD, single DICOM) or a DICOM series folder.

    Returns a :class:`Volume` with the array in ``(i, j, k)`` order and the geometry in LPS mm.
    Raises :class:`InputError` naming ``path`` if it is missing, unreadable/corrupt/truncated, not 3D (a
    4D file with one volume is accepted), multi-component, larger than ``max_voxels``, claims more voxel
    bytes than ``max_bytes`` (default :func:`~organdetr.io.headers.max_image_bytes`) or than the file
    holds, has a zero/negative/NaN spacing or a non-orthonormal direction, holds NaN/Inf, or (DICOM) has
    duplicate, shifted or unevenly spaced slices. ``uneven_slices="resample"`` accepts uneven slice steps
    and interpolates them onto a regular grid; ``Volume.warnings`` then says so.
    """
    path = Path(path)
    max_bytes = max_image_bytes() if max_bytes is None else max_bytes
    warnings: list[str] = []
    if path.is_dir():
        image, warnings = _read_dicom_series(path, max_voxels, max_bytes, uneven_slices)
    elif path.is_file():
        image = _read_file(path, max_voxels, max_bytes)
    else:
        raise InputError(path, "file not found")
    volume = from_sitk(image)
    volume.warnings = warnings
    _check_finite(path, volume.array)
    if volume.array.dtype.kind == "f" and path.name.endswith((".nii", ".nii.gz")):
        _check_finite_nifti(path)
    return volume


def read_label_map(path: str | Path, *, max_voxels: int = MAX_VOXELS, max_bytes: int | None = None) -> Volume:
    """Read a label map: like :func:`read_image`, then checked to hold non-negative integer ids.

    Float files holding whole numbers (common in public datasets) are cast; the array comes back as
    the smallest unsigned type that holds the largest id (uint8/uint16/uint32).
    """
    volume = read_image(path, max_voxels=max_voxels, max_bytes=max_bytes)
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


def _read_file(path: Path, max_voxels: int, max_bytes: int) -> sitk.Image:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_pixdim(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(path, f"cannot read image ({_itk_reason(err)})") from None
    size = tuple(reader.GetSize())
    components = reader.GetNumberOfComponents()
    _check_header(path, size, components, max_voxels)
    claimed = int(np.prod(size, dtype=np.int64)) * components
    claimed *= pixel_bytes(sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    check_claimed_bytes(path, claimed, max_bytes)
    n = len(size)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(n, n)[:3, :3]
    check_geometry(path, reader.GetSpacing()[:3], reader.GetOrigin()[:3], direction.ravel())
    check_file_holds(path, claimed)
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


def _check_finite_nifti(path: Path) -> None:
    """ITK's NIfTI reader turns NaN into 0, so float NIfTIs are checked on disk with nibabel."""
    try:
        raw = np.asanyarray(nib.load(str(path)).dataobj.get_unscaled())
    except Exception as err:
        raise InputError(path, f"cannot read image data ({collapse(str(err))})") from None
    if raw.dtype.kind == "f":
        _check_finite(path, raw)


def _itk_reason(err: RuntimeError) -> str:
    """The useful last line of an ITK exception (its message spans several lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if "No such file or directory" not in line] or lines
    reason = lines[-1] if lines else type(err).__name__
    return re.sub(r"^.*?(ERROR|Description): *", "", reason)[:200]


# ----------------------------------------------------------------------------- DICOM series


def _read_dicom_series(
    folder: Path, max_voxels: int, max_bytes: int, uneven_slices: UnevenSlices
) -> tuple[sitk.Image, list[str]]:
    """The largest DICOM series in ``folder`` and the warnings of reading it.

    Slice positions are checked first (``organdetr.io.dicom_series``); pixels come from SimpleITK/GDCM in
    the checked order, or from pydicom when GDCM cannot decode them.
    """
    with _quiet_itk():  # GDCM's "No Series were found" would print before our one line
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = max(
            (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids),
            key=len,
            default=(),
        )
    if not series_ids:
        raise InputError(folder, "folder holds no DICOM series (and is not an image file)")
    if len(files) < 2:
        raise InputError(folder, "DICOM series has a single slice; expected a 3D series")
    layout, warnings = _checked_layout(folder, [Path(f) for f in files], max_voxels, max_bytes, uneven_slices)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in layout.files])
    try:
        with _quiet_itk():  # ITK's "non uniform sampling" warning: checked above
            image = reader.Execute()
    except RuntimeError:
        image = None
    if image is None or image.GetNumberOfComponentsPerPixel() != 1:
        stack = _pydicom_pixels(layout)
    else:
        _check_header(folder, tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel(), max_voxels)
        stack = sitk.GetArrayFromImage(image)
    return _series_image(stack, layout), warnings


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK's and GDCM's C++ warnings off in the block: what they warn about is checked, said in one line."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _checked_layout(
    folder: Path, files: list[Path], max_voxels: int, max_bytes: int, uneven_slices: UnevenSlices
) -> tuple[SliceLayout, list[str]]:
    layout = read_slice_layout(folder, files)
    _check_header(folder, layout.size, layout.samples, max_voxels)
    check_claimed_bytes(folder, layout.claimed_bytes, max_bytes)
    return layout, layout.check(folder, resample=uneven_slices == "resample")


def _series_image(stack: np.ndarray, layout: SliceLayout) -> sitk.Image:
    """A ``(k, j, i)`` stack in layout order -> SimpleITK image with the layout's geometry (resampled to a
    regular grid when the slice steps are uneven)."""
    step = layout.median_step
    if layout.is_uneven():
        stack, step = resample_slices(stack, layout.offsets, step)
    image = sitk.GetImageFromArray(stack)
    # PixelSpacing is (row spacing = between rows, column spacing = between columns): i steps columns
    image.SetSpacing((*layout.pixel_spacing, float(step)))
    image.SetOrigin(tuple(float(v) for v in layout.positions[0]))
    direction = np.stack([layout.row, layout.col, layout.normal], axis=1)
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _pydicom_pixels(layout: SliceLayout) -> np.ndarray:
    """Pixels of the layout's slices as a ``(k, j, i)`` HU stack (int16 when exact, else float32)."""
    pixels = np.empty((len(layout.files), layout.rows, layout.columns), dtype=np.float32)
    for k, file in enumerate(layout.files):
        try:
            ds = pydicom.dcmread(file)
            stored = ds.pixel_array
        except Exception as err:
            raise InputError(
                file, f"cannot decode DICOM pixels ({collapse(str(err), 200)})"
            ) from None
        if stored.shape != pixels.shape[1:]:
            raise InputError(file, f"pixel data shape {stored.shape} differs from Rows x Columns")
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        pixels[k] = stored * slope + intercept
    if np.array_equal(pixels, np.round(pixels)) and pixels.min() >= -32768 and pixels.max() <= 32767:
        return pixels.astype(np.int16)
    return pixels


def read_dicom_series_pydicom(
    folder: Path,
    files: list[Path],
    max_voxels: int = MAX_VOXELS,
    *,
    max_bytes: int | None = None,
    uneven_slices: UnevenSlices = "refuse",
) -> sitk.Image:
    """Read one DICOM series with pydicom (+pylibjpeg for JPEG/JPEG2000) and build its geometry.

    Slices are sorted along the slice normal (ImageOrientationPatient row x column) and checked like
    :func:`read_image` does; spacing from PixelSpacing and the slice positions; HU = stored *
    RescaleSlope + RescaleIntercept.
    """
    max_bytes = max_image_bytes() if max_bytes is None else max_bytes
    layout, _ = _checked_layout(Path(folder), [Path(f) for f in files], max_voxels, max_bytes, uneven_slices)
    return _series_image(_pydicom_pixels(layout), layout)


# ----------------------------------------------------------------------------- label tables


def read_label_table(path: str | Path) -> dict[int, str] | None:
    """Label id -> name from a NIfTI's TotalSegmentator ``<CaretExtension>`` header table, or ``None``.

    Label 0 (background / "Unknown") is dropped. Non-NIfTI files and NIfTIs without the table give
    ``None``.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
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
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, _ = temp_affixes(path.name)
    with tempfile.TemporaryDirectory(prefix=prefix, suffix=".tmp", dir=path.parent) as tmp_dir:
        sitk.WriteImage(image, str(Path(tmp_dir) / path.name), useCompression=compress)
        written = sorted(Path(tmp_dir).iterdir(), key=lambda p: p.name == path.name)  # header last
        for file in written:
            os.replace(file, path.parent / file.name)
