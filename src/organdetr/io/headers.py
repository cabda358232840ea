"""What an image header claims, checked before a single voxel is read.

A header is a promise: ``DimSize = 1250 1250 1250`` in a 107-byte file, ``pixdim = 0``, a sheared
``TransformMatrix``. These checks compare the promise with the memory cap, with the bytes the file can
hold, and with what a CT grid can be, and raise :class:`~organdetr.runtime.errors.InputError` naming the file
(and
both numbers) before any large allocation:

* **bytes** - the voxel data a header claims (voxels x components x bytes per component) against a memory
  cap (:func:`max_image_bytes`: ``$ORGANDETR_MAX_IMAGE_BYTES``, else a quarter of the RAM this process may
  use); for uncompressed files against the bytes the file holds; for gzip/zlib streams against the most a
  deflate stream of that size can expand to (1032:1).
* **geometry** - spacing finite and > 0, origin finite, direction orthonormal (in every format: ITK reads
  NIfTI ``pixdim = 0`` as 1 mm and accepts a sheared MetaImage matrix).

Formats with a parsed header: NIfTI (``.nii``, ``.nii.gz``, via nibabel), MetaImage (``.mha``, ``.mhd``)
and NRRD (``.nrrd``, ``.nhdr``). Other formats get the memory cap and the geometry checks.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief, format_vector, one_line

MAX_BYTES_ENV = "ORGANDETR_MAX_IMAGE_BYTES"
MEMORY_FRACTION = 0.25
"""Default cap = this fraction of the usable RAM: reading needs about 2-3x the voxel bytes (ITK's buffer,
the numpy copy, the float32 grid)."""
DEFLATE_MAX_RATIO = 1032
"""A deflate (gzip / zlib) stream expands at most ~1032-fold (a 258-byte match per ~2 bits)."""
ORTHONORMAL_TOL = 1e-3
"""Largest ``|D^T D - I|`` entry accepted for a direction matrix (DICOM stores cosines to ~6 digits)."""

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


# ----------------------------------------------------------------------------- the memory cap


def _usable_ram() -> int | None:
    """Physical RAM, or the cgroup (container) limit when that is lower; ``None`` where unknown."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (ram is None or int(text) < ram):
            ram = int(text)
    return ram


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"3e9"`` -> bytes (binary units K/M/G/T, optional ``B``/``iB``)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if match is None:
        raise ValueError(text)
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not np.isfinite(value) or value <= 0:
        raise ValueError(text)
    return int(value)


def max_image_bytes() -> int:
    """The voxel-data cap: ``$ORGANDETR_MAX_IMAGE_BYTES`` (e.g. ``16G``), else ``MEMORY_FRACTION`` of RAM."""
    raw = os.environ.get(MAX_BYTES_ENV)
    if raw:
        try:
            return parse_bytes(raw)
        except ValueError:
            raise InputError(None, f"${MAX_BYTES_ENV}={brief(raw)} is not a byte count (e.g. 16G)") from None
    ram = _usable_ram()
    return int(ram * MEMORY_FRACTION) if ram else 8 * 2**30


def format_bytes(n: float) -> str:
    """``3906250000`` -> ``"3.64 GiB"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def check_claimed_bytes(path: Path, claimed: int, max_bytes: int | None = None) -> None:
    """InputError when the voxel data a header claims exceeds the memory cap."""
    cap = max_image_bytes() if max_bytes is None else max_bytes
    if claimed > cap:
        raise InputError(
            path,
            f"header claims {format_bytes(claimed)} of voxel data ({claimed} bytes), more than the "
            f"memory cap of {format_bytes(cap)} ({cap} bytes; set ${MAX_BYTES_ENV} to change it)",
        )


def pixel_bytes(pixel_type: str) -> int:
    """Bytes per component of a SimpleITK pixel type string (``"vector of 16-bit signed integer"`` -> 2)."""
    match = re.search(r"(\d+)-bit", pixel_type)
    size = int(match.group(1)) // 8 if match else 8
    return size * (2 if pixel_type.startswith("complex") else 1)


# ----------------------------------------------------------------------------- geometry


def check_geometry(
    path: Path, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> None:
    """InputError unless spacing is finite and > 0, origin finite and direction an orthonormal matrix.

    ``spacing``/``origin`` (n,), ``direction`` (n*n,) row-major, as SimpleITK reports them.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    n = len(spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(path, f"voxel spacing {format_vector(spacing)} mm is not positive and finite")
    if not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise InputError(path, f"origin {format_vector(origin)} is not finite")
    matrix = np.asarray(direction, dtype=np.float64).reshape(n, n)
    if not np.all(np.isfinite(matrix)):
        raise InputError(path, "direction matrix holds NaN or infinite values")
    error = float(np.abs(matrix.T @ matrix - np.eye(n)).max())
    if error > ORTHONORMAL_TOL:
        raise InputError(
            path,
            f"direction matrix {format_vector(matrix.ravel())} is not orthonormal (sheared or scaled axes, "
            f"|D^T D - I| = {error:.3g}); expected rotation/flip cosines",
        )


# ----------------------------------------------------------------------------- bytes on disk


def check_file_holds(path: Path, claimed: int) -> None:
    """Compare the claimed voxel bytes with what the file can hold (format from the suffix)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, claimed)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, claimed)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, claimed)


def _check_raw(path: Path, data_file: Path, available: int, claimed: int) -> None:
    if available < claimed:
        where = "" if data_file == path else f" (data file {data_file.name})"
        raise InputError(
            path,
            f"header claims {claimed} bytes of voxel data but the file holds {max(available, 0)}{where}: "
            "truncated file or a header that lies",
        )


def _check_deflate(path: Path, compressed: int, claimed: int, header_bytes: int = 0) -> None:
    if claimed + header_bytes > DEFLATE_MAX_RATIO * compressed + 4096:
        raise InputError(
            path,
            f"header claims {format_bytes(claimed)} of voxel data ({claimed} bytes), more than a "
            f"{compressed}-byte compressed stream can hold (at most {DEFLATE_MAX_RATIO}x): "
            "a header that lies (or a truncated file)",
        )


def _raw_nifti_header(path: Path):
    """The NIfTI-1/2 header as stored (nibabel's ``nib.load`` silently fixes zero and negative pixdim)."""
    with ImageOpener(str(path), "rb") as fh:
        block = fh.read(540)
    sizeof_hdr = int.from_bytes(block[:4], "little")
    if sizeof_hdr not in (348, 540):
        sizeof_hdr = int.from_bytes(block[:4], "big")
    if sizeof_hdr == 540:
        return nib.Nifti2Header(block[:540], check=False)
    return nib.Nifti1Header(block[:348], check=False)


def check_nifti_pixdim(path: Path) -> None:
    """InputError unless the stored NIfTI voxel sizes (pixdim 1..3) are positive and finite.

    Run before ITK opens the file: ITK reads 0 or NaN as 1 mm (printing only a niftilib warning).
    """
    try:
        header = _raw_nifti_header(path)
        ndim = int(header["dim"][0])
        pixdim = np.asarray(header["pixdim"][1 : 1 + min(max(ndim, 1), 3)], dtype=np.float64)
    except Exception as err:
        raise InputError(path, f"cannot read image (bad NIfTI header: {one_line(err, limit=200)})") from None
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(
            path, f"NIfTI pixdim {format_vector(pixdim)} (voxel size, mm) is not positive and finite"
        )


def _check_nifti(path: Path, claimed: int) -> None:
    """File size (``.nii``) or gzip bound + size trailer (``.nii.gz``) against the header.

    The bytes on disk follow the header's own datatype (``bitpix``), not ``claimed``: ITK reports a scaled
    image (``scl_slope`` / ``scl_inter``, as dcm2niix writes CT) as float32, twice a uint16 file's bytes.
    """
    try:
        header = _raw_nifti_header(path)
        offset = int(header.get_data_offset())
        claimed = _nifti_data_bytes(header)
    except Exception as err:
        raise InputError(path, f"cannot read image (bad NIfTI header: {one_line(err, limit=200)})") from None
    size = path.stat().st_size
    if path.name.lower().endswith(".nii"):
        _check_raw(path, path, size - offset, claimed)
        return
    _check_deflate(path, size, claimed, offset)
    _check_gzip_complete(path, offset + claimed)


def _nifti_data_bytes(header) -> int:
    """Voxel bytes stored in a NIfTI file: the product of ``dim[1..dim[0]]`` times the datatype's size
    (``bitpix / 8``; the datatype code's size where ``bitpix`` is not set)."""
    dim = [int(d) for d in header["dim"]]
    voxels = int(np.prod([max(d, 0) for d in dim[1 : 1 + min(max(dim[0], 1), 7)]], dtype=np.int64))
    bitpix = int(header["bitpix"])
    if bitpix <= 0:
        bitpix = 8 * header.get_data_dtype().itemsize
    return (voxels * bitpix + 7) // 8


def _check_gzip_complete(path: Path, expected: int) -> None:
    """ITK reads a truncated ``.nii.gz`` without complaint; check the gzip size trailer (cheap).

    Only when the trailer disagrees with the header's size is the stream decompressed (in 16 MiB chunks,
    bounded memory) to tell a truncated file from one with trailing bytes.
    """
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        if int.from_bytes(fh.read(4), "little") == expected % 2**32:
            return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
                if total >= expected:
                    return
    except (EOFError, OSError, zlib.error):
        raise InputError(path, "file is truncated or corrupt (the gzip stream ends early)") from None
    raise InputError(path, f"file is truncated ({total} of {expected} bytes)")


def _text_header(
    path: Path, end: re.Pattern[bytes], separator: str, limit: int = 1 << 16
) -> tuple[dict[str, str], int]:
    """``key -> value`` of a text header (keys lower-case without spaces) and the byte offset where the
    data starts (just after ``end``)."""
    with open(path, "rb") as fh:
        head = fh.read(limit)
    match = end.search(head)
    stop = match.end() if match else len(head)
    fields = {}
    for line in head[:stop].decode("latin-1").splitlines():
        key, sep, value = line.partition(separator)
        if sep and not line.startswith("#"):
            fields[key.strip().lower().replace(" ", "")] = value.strip()
    return fields, stop


def _check_metaimage(path: Path, claimed: int) -> None:
    fields, data_start = _text_header(path, re.compile(rb"ElementDataFile\s*=[^\n]*\n"), "=")
    data_name = fields.get("elementdatafile", "LOCAL")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data_name.upper() == "LOCAL":
        data_file, available = path, path.stat().st_size - data_start
    elif data_name.upper().startswith("LIST") or "%" in data_name:
        return  # one file per slice: only the memory cap applies
    else:
        data_file = path.parent / data_name
        if not data_file.is_file():
            raise InputError(path, f"data file {data_name} named by the header is missing")
        available = data_file.stat().st_size
        skip = int(fields.get("headersize", "0") or 0)
        available -= max(skip, 0)
    if compressed:
        _check_deflate(path, available, claimed)
    else:
        _check_raw(path, data_file, available, claimed)


def _check_nrrd(path: Path, claimed: int) -> None:
    fields, data_start = _text_header(path, re.compile(rb"\r?\n\r?\n"), ":")
    encoding = fields.get("encoding", "raw").lower()
    detached = fields.get("datafile") or fields.get("data_file")
    if detached:
        if detached.upper().startswith("LIST") or "%" in detached or " " in detached:
            return
        data_file = path.parent / detached
        if not data_file.is_file():
            raise InputError(path, f"data file {detached} named by the header is missing")
        available = data_file.stat().st_size
    else:
        data_file, available = path, path.stat().st_size - data_start
    skip = int(fields.get("byteskip", "0") or 0)
    if encoding == "raw":
        _check_raw(path, data_file, available - max(skip, 0), claimed)
    elif encoding in ("gzip", "gz"):
        _check_deflate(path, available, claimed)


__all__ = [
    "MAX_BYTES_ENV",
    "check_claimed_bytes",
    "check_file_holds",
    "check_geometry",
    "check_nifti_pixdim",
    "format_bytes",
    "max_image_bytes",
    "parse_bytes",
    "pixel_bytes",
]
