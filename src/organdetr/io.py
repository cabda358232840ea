"""Reading and writing CT volumes with SimpleITK (NIfTI, NRRD, MHA/MHD, DICOM series folders).

Arrays come back in ``(i, j, k)`` order (SimpleITK's ``(k, j, i)`` is transposed here and only here),
with a :class:`~organdetr.geometry.Geometry` in the LPS world frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from organdetr.atomic import atomic_path
from organdetr.geometry import Geometry


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
    """``(I, J, K)`` array + geometry -> SimpleITK image."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def from_sitk(image: sitk.Image) -> Volume:
    """SimpleITK image -> :class:`Volume` with an ``(I, J, K)`` array."""
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    return Volume(np.ascontiguousarray(array), geometry_of(image))


def read_image(path: str | Path) -> Volume:
    """Read a 3D image file or DICOM series folder. (Validation is added by the data layer.)"""
    return from_sitk(sitk.ReadImage(str(path)))


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True) -> None:
    """Write ``array [I, J, K]`` with ``geometry`` to ``path`` (format from the suffix), atomically."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(to_sitk(array, geometry), str(tmp), useCompression=compress)
