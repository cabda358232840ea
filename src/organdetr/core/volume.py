"""Voxel data on a grid: :class:`Volume`, the SimpleITK bridge, canonical reorientation and resampling.

A :class:`Volume` is an array indexed ``(i, j, k)`` (ITK index order) with the
:class:`~organdetr.core.geometry.Geometry` that places it in the LPS world (mm). SimpleITK holds its buffer as
``(k, j, i)``: :func:`to_sitk` and :func:`from_sitk` transpose at this edge, and nothing else does.

Reorienting to canonical LPS (:func:`reorient_to_lps`) permutes and flips the array (exact, a view);
:func:`resample` interpolates an array onto another grid in world space (SimpleITK);
:func:`grid_labels_to_original` takes a label map on the preprocessed grid back to the original scan.
Reading and writing files is :mod:`organdetr.io.images`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from organdetr.core.geometry import Geometry, lps_reorientation, reorient_geometry
from organdetr.runtime.text import brief


@dataclass
class Volume:
    """A 3D array ``[I, J, K]`` and its geometry; ``warnings`` says what reading had to repair."""

    array: np.ndarray
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- SimpleITK bridge


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


# ----------------------------------------------------------------------------- reorienting and resampling


def reorient_to_lps(volume: Volume) -> Volume:
    """Reorient ``volume`` to canonical LPS by permuting/flipping its array (exact, no interpolation).

    The returned array is a view of the input's (no copy); world positions of all voxels are unchanged.
    """
    r = lps_reorientation(volume.geometry)
    return Volume(r.apply(volume.array), reorient_geometry(volume.geometry, r))


_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def resample(
    array: np.ndarray,
    geometry: Geometry,
    target: Geometry,
    *,
    interpolation: str = "linear",
    default_value: float = 0.0,
    output_dtype: np.dtype | None = None,
) -> np.ndarray:
    """Resample ``array [I, J, K]`` on ``geometry`` onto ``target`` (world-space, SimpleITK).

    ``interpolation``: "linear", "nearest" (labels) or "bspline". Voxels of ``target`` outside the
    source get ``default_value``. Returns ``[I', J', K']`` = ``target.size``.
    """
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {brief(interpolation)}")
    source = to_sitk(array, geometry)
    pixel_type = source.GetPixelID()
    if output_dtype is not None:
        pixel_type = sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype=output_dtype)).GetPixelID()
    out = sitk.Resample(
        source,
        [int(s) for s in target.size],
        sitk.Transform(),
        _INTERPOLATORS[interpolation],
        [float(o) for o in target.origin],
        [float(s) for s in target.spacing],
        [float(d) for d in target.direction],
        float(default_value),
        pixel_type,
    )
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def grid_labels_to_original(labels_grid: np.ndarray, record: dict) -> np.ndarray:
    """A label map ``[I, J, K]`` on the preprocessed grid -> the original scan's grid (nearest neighbour).

    ``record`` is the case record (``grid`` and ``original`` geometries). The result has the original
    file's size and index order; voxels outside the model grid (``fit="pad"`` crops) are 0.
    """
    grid = Geometry.from_dict(record["grid"])
    original = Geometry.from_dict(record["original"])
    labels_grid = np.ascontiguousarray(labels_grid)
    return resample(
        labels_grid, grid, original, interpolation="nearest", default_value=0, output_dtype=labels_grid.dtype
    )


__all__ = [
    "Volume",
    "from_sitk",
    "geometry_of",
    "grid_labels_to_original",
    "reorient_to_lps",
    "resample",
    "to_sitk",
]
