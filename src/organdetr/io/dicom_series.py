"""DICOM series geometry: where each slice is, whether the slices make a regular grid, and what to do if not.

ITK's series reader builds one grid from the first slice's position and an average slice step: a missing
slice, two slices at one position or uneven steps are then read as a regular volume at a wrong spacing
(with only a warning on stderr). :func:`read_slice_layout` reads the position and orientation of every
slice (pydicom, headers only), sorts the slices along the slice normal and checks them;
:meth:`SliceLayout.check` refuses, with an :class:`~organdetr.runtime.errors.InputError` naming the folder
and the
slices, duplicates, in-plane shifts (gantry tilt), differing orientations and uneven steps - or, for uneven
steps with ``resample=True``, accepts them and :func:`resample_slices` interpolates the stack linearly onto
a regular grid at the median step (the warning goes into the prediction JSON).

Arrays here are SimpleITK's ``(k, j, i)`` = (slice, row, column) stacks; ``organdetr.io.images`` turns them
into
``(i, j, k)`` volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from organdetr.runtime.errors import InputError
from organdetr.runtime.text import collapse

STEP_TOLERANCE = (0.01, 1e-3)
"""Steps count as equal within ``1 % of the median step + 1e-3 mm`` (positions are stored to ~1e-3 mm)."""
_GEOMETRY_TAGS = [
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "SamplesPerPixel", "BitsAllocated", "NumberOfFrames",
]  # fmt: skip


@dataclass
class SliceLayout:
    """Slices of one series sorted along the normal.

    ``files`` sorted; ``positions [n, 3]`` ImagePositionPatient (LPS mm); ``row``, ``col`` (3,) the
    direction cosines of the i (column index) and j (row index) axes; ``normal = row x col``;
    ``offsets [n]`` positions along the normal (increasing); ``pixel_spacing`` (i, j) mm.
    """

    files: list[Path]
    positions: np.ndarray
    row: np.ndarray
    col: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    samples: int
    bits: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    @property
    def offsets(self) -> np.ndarray:
        return self.positions @ self.normal

    @property
    def steps(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def median_step(self) -> float:
        return float(np.median(self.steps))

    @property
    def size(self) -> tuple[int, int, int]:
        """``(I, J, K)`` = (columns, rows, slices)."""
        return (self.columns, self.rows, len(self.files))

    @property
    def claimed_bytes(self) -> int:
        return self.columns * self.rows * len(self.files) * self.samples * max(1, self.bits // 8)

    def is_uneven(self) -> bool:
        relative, absolute = STEP_TOLERANCE
        return float(np.ptp(self.steps)) > relative * self.median_step + absolute

    def check(self, folder: Path, *, resample: bool = False) -> list[str]:
        """Refuse what cannot be a regular grid; return warnings (uneven steps pass with ``resample``)."""
        steps, offsets = self.steps, self.offsets
        relative, absolute = STEP_TOLERANCE
        duplicate = np.flatnonzero(steps <= max(absolute, 1e-3 * abs(self.median_step)))
        if duplicate.size:
            a, b = self.files[duplicate[0]], self.files[duplicate[0] + 1]
            raise InputError(
                folder,
                f"DICOM series has {duplicate.size} duplicate slice position(s), e.g. {a.name} and {b.name} "
                f"both at {offsets[duplicate[0]]:.3f} mm along the slice normal",
            )
        in_plane = self.positions - self.positions[0] - np.outer(offsets - offsets[0], self.normal)
        shift = float(np.abs(in_plane).max())
        if shift > 0.5 * min(self.pixel_spacing):
            raise InputError(
                folder,
                f"DICOM slices are not stacked along the slice normal (in-plane shift up to {shift:.2f} mm; "
                "gantry tilt?); resample the series to a regular grid first",
            )
        if not self.is_uneven():
            return []
        median = self.median_step
        gaps = np.flatnonzero(steps > (1.5 * median))
        if gaps.size:
            missing = int(sum(round(steps[g] / median) - 1 for g in gaps))
            first = gaps[0]
            what = (
                f"{missing} slice(s) missing, e.g. between {self.files[first].name} "
                f"({offsets[first]:.3f} mm) and {self.files[first + 1].name} ({offsets[first + 1]:.3f} mm)"
            )
        else:
            what = "uneven slice steps"
        problem = f"{what}: steps {steps.min():.3f}..{steps.max():.3f} mm (median {median:.3f} mm)"
        if not resample:
            raise InputError(
                folder,
                f"DICOM series is not a regular grid ({problem}); refused (--resample-uneven-slices "
                "interpolates it onto the median step)",
            )
        count = regular_slice_count(offsets, median)
        return [
            f"DICOM series was not a regular grid ({problem}); resampled linearly onto {count} slices "
            f"at {(offsets[-1] - offsets[0]) / (count - 1):.3f} mm"
        ]


def read_slice_layout(folder: Path, files: list[Path]) -> SliceLayout:
    """Headers of ``files`` (one series) -> :class:`SliceLayout` sorted along the normal.

    InputError naming the slice for unreadable headers, missing or inconsistent geometry tags, a
    non-orthonormal ImageOrientationPatient or multi-frame files.
    """
    headers = []
    for file in files:
        try:
            headers.append(pydicom.dcmread(file, stop_before_pixels=True, specific_tags=_GEOMETRY_TAGS))
        except Exception as err:
            raise InputError(file, f"cannot read DICOM header ({collapse(str(err), 200)})") from None
    first = headers[0]
    try:
        orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
        spacing = tuple(float(v) for v in first.PixelSpacing)  # (between rows, between columns)
        positions = np.asarray([h.ImagePositionPatient for h in headers], dtype=np.float64)
        rows, columns = int(first.Rows), int(first.Columns)
    except (AttributeError, TypeError, ValueError) as err:
        raise InputError(files[0], f"DICOM slice lacks geometry tags ({err})") from None
    if orientation.shape != (6,) or positions.shape != (len(files), 3) or len(spacing) != 2:
        raise InputError(files[0], "DICOM geometry tags have the wrong number of values")
    for file, header in zip(files, headers, strict=True):
        other = np.asarray(getattr(header, "ImageOrientationPatient", [np.nan] * 6), dtype=np.float64)
        if other.shape != (6,) or not np.allclose(other, orientation, atol=1e-4):
            raise InputError(file, "slice orientation differs from the series' first slice")
        if (int(getattr(header, "Rows", -1)), int(getattr(header, "Columns", -1))) != (rows, columns):
            raise InputError(file, f"slice size differs from the series' first slice ({columns}x{rows})")
        if int(getattr(header, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(file, "multi-frame DICOM inside a series of slices is not supported")
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(orientation)):
        raise InputError(folder, "DICOM slice positions or orientation hold NaN/infinite values")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(files[0], f"PixelSpacing {list(spacing)} mm is not positive and finite")
    row, col = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(row @ col)) > 1e-3
    ):
        raise InputError(
            files[0],
            f"ImageOrientationPatient {orientation.round(6).tolist()} is not two orthonormal cosines",
        )
    order = np.argsort(positions @ np.cross(row, col), kind="stable")
    return SliceLayout(
        files=[files[i] for i in order],
        positions=positions[order],
        row=row,
        col=col,
        pixel_spacing=(spacing[1], spacing[0]),
        rows=rows,
        columns=columns,
        samples=int(getattr(first, "SamplesPerPixel", 1) or 1),
        bits=int(getattr(first, "BitsAllocated", 16) or 16),
    )


def regular_slice_count(offsets: np.ndarray, step: float) -> int:
    """Slices of a regular grid from the first to the last offset at about ``step`` mm."""
    return max(2, int(round((offsets[-1] - offsets[0]) / step)) + 1)


def resample_slices(stack: np.ndarray, offsets: np.ndarray, step: float) -> tuple[np.ndarray, float]:
    """Linear interpolation of ``stack [n, rows, cols]`` at increasing ``offsets [n]`` (mm) onto a regular
    grid from the first to the last offset at about ``step`` mm -> ``(stack [m, rows, cols], exact step)``.

    Integer input comes back rounded in its own dtype.
    """
    count = regular_slice_count(offsets, step)
    exact = float(offsets[-1] - offsets[0]) / (count - 1)
    targets = offsets[0] + exact * np.arange(count)
    left = np.clip(np.searchsorted(offsets, targets, side="right") - 1, 0, len(offsets) - 2)
    weight = ((targets - offsets[left]) / (offsets[left + 1] - offsets[left])).astype(np.float32)
    out = np.empty((count, *stack.shape[1:]), dtype=np.float32)
    for k in range(count):
        low, high = stack[left[k]].astype(np.float32), stack[left[k] + 1].astype(np.float32)
        out[k] = low + weight[k] * (high - low)
    if stack.dtype.kind in "iu":
        info = np.iinfo(stack.dtype)
        out = np.clip(np.round(out), info.min, info.max).astype(stack.dtype)
    return out, exact


__all__ = ["STEP_TOLERANCE", "SliceLayout", "read_slice_layout", "regular_slice_count", "resample_slices"]
