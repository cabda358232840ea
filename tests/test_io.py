"""Reading/writing volumes: formats, exact geometry, DICOM series (GDCM and pydicom), bad input."""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from organdetr.core.geometry import Geometry
from organdetr.core.volume import from_sitk
from organdetr.io.images import (
    read_dicom_series_pydicom,
    read_image,
    read_label_map,
    read_label_table,
    write_image,
)
from organdetr.runtime.errors import InputError

RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
PERMUTED = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
GEOMETRY = Geometry((6, 5, 4), (0.75, 1.25, 2.5), (12.5, -7.25, 100.0), RAS)


def volume_array(dtype=np.int16) -> np.ndarray:
    return np.arange(np.prod(GEOMETRY.size)).reshape(GEOMETRY.size).astype(dtype) - 50


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_write_read_round_trip_keeps_array_and_geometry(tmp_path, suffix, direction):
    geometry = Geometry(GEOMETRY.size, GEOMETRY.spacing, GEOMETRY.origin, direction)
    path = tmp_path / f"scan{suffix}"
    write_image(path, volume_array(), geometry)
    volume = read_image(path)
    assert volume.array.shape == geometry.size
    assert np.array_equal(volume.array, volume_array())
    assert volume.geometry.is_close(geometry, mm_tol=1e-4, dir_tol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_array_axis_order_is_ijk(tmp_path):
    array = np.zeros(GEOMETRY.size, np.uint8)
    array[5, 0, 0] = 1  # last i
    path = tmp_path / "a.nii.gz"
    write_image(path, array, GEOMETRY)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == GEOMETRY.size
    assert image.GetPixel(5, 0, 0) == 1


def write_sitk(path, array_kji: np.ndarray, **meta) -> None:
    image = sitk.GetImageFromArray(array_kji, isVector=meta.pop("vector", False))
    sitk.WriteImage(image, str(path))


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    write_sitk(path, np.zeros((8, 8), np.int16))
    with pytest.raises(InputError, match=r"slice\.nii\.gz: image is 2D"):
        read_image(path)


def test_4d_image_is_rejected_but_single_volume_4d_is_accepted(tmp_path):
    path = tmp_path / "series.nii.gz"
    write_sitk(path, np.zeros((2, 3, 4, 5), np.int16))
    with pytest.raises(InputError, match=r"series\.nii\.gz: image is 4D \(shape 5x4x3x2\)"):
        read_image(path)
    single = tmp_path / "single.nii.gz"
    write_sitk(single, np.ones((1, 3, 4, 5), np.int16))
    assert read_image(single).array.shape == (5, 4, 3)


def test_vector_image_is_rejected(tmp_path):
    path = tmp_path / "rgb.mha"
    write_sitk(path, np.zeros((3, 4, 5, 3), np.uint8), vector=True)
    with pytest.raises(InputError, match="3 components"):
        read_image(path)


def test_nan_voxels_are_rejected(tmp_path):
    array = volume_array(np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    path = tmp_path / "nan.nii.gz"
    write_image(path, array, GEOMETRY)
    with pytest.raises(InputError, match=r"nan\.nii\.gz: image holds 2 NaN or infinite voxels"):
        read_image(path)


def test_missing_corrupt_and_truncated_files(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match=r"garbage\.nii\.gz: cannot read image"):
        read_image(garbage)
    good = tmp_path / "good.nii"
    write_image(good, volume_array(np.float32), GEOMETRY)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(good.read_bytes())[:-200])
    with pytest.raises(InputError, match=r"truncated\.nii\.gz: cannot read") as info:
        read_image(truncated)
    assert "\n" not in str(info.value)


def test_huge_volume_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.nii.gz"
    write_image(path, volume_array(), GEOMETRY)
    with pytest.raises(InputError, match="120 voxels .* the limit is 100"):
        read_image(path, max_voxels=100)


def test_read_label_map_types(tmp_path):
    labels = np.zeros(GEOMETRY.size, np.float32)
    labels[1:3, 1:3, 1:3] = 2
    path = tmp_path / "float_labels.nii.gz"
    write_image(path, labels, GEOMETRY)
    volume = read_label_map(path)
    assert volume.array.dtype == np.uint8 and volume.array.max() == 2
    labels[0, 0, 0] = 0.5
    write_image(path, labels, GEOMETRY)
    with pytest.raises(InputError, match="non-integer values"):
        read_label_map(path)
    negative = tmp_path / "negative.nii.gz"
    write_image(negative, -np.ones(GEOMETRY.size, np.int16), GEOMETRY)
    with pytest.raises(InputError, match="negative ids"):
        read_label_map(negative)
    wide = tmp_path / "wide.nrrd"
    write_image(wide, np.full(GEOMETRY.size, 300, np.int32), GEOMETRY)
    assert read_label_map(wide).array.dtype == np.uint16


def write_dicom_series(folder, array_ijk: np.ndarray, geometry: Geometry) -> None:
    """One file per slice with the CT tags SimpleITK/GDCM need (the SimpleITK DicomSeriesFromArray recipe)."""
    folder.mkdir()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = geometry.direction
    series_uid = "1.2.826.0.1.3680043.2.1125.1." + str(int(time.time() * 1e3))
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".0",
            "0020|0037": "\\".join(str(d) for d in (direction[0], direction[3], direction[6],
                                                   direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k),
            "0028|1052": "-1024",
            "0028|1053": "1",
            "0018|0050": str(geometry.spacing[2]),
        }  # fmt: skip
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_geometry_and_pydicom_fallback(tmp_path):
    geometry = Geometry(
        (6, 5, 4), (0.75, 0.75, 2.0), (-30.0, 12.0, -400.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    )
    stored = np.random.default_rng(0).integers(0, 2000, size=geometry.size).astype(np.uint16)
    folder = tmp_path / "dicom"
    write_dicom_series(folder, stored.astype(np.int16), geometry)
    volume = read_image(folder)
    assert volume.geometry.is_close(geometry, mm_tol=1e-4)
    files = sorted(folder.iterdir())[::-1]  # the fallback sorts slices itself
    fallback = from_sitk(read_dicom_series_pydicom(folder, files))
    assert fallback.geometry.is_close(volume.geometry, mm_tol=1e-4)
    assert np.array_equal(fallback.array, volume.array)


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path)


@pytest.mark.shared_data
def test_real_jpeg2000_dicom_series(shared_data):
    folder = shared_data / "totalsegmentator" / "example_ct_dicom"
    volume = read_image(folder)
    assert volume.array.shape == (512, 512, 20)
    assert volume.geometry.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.geometry.origin[2] == pytest.approx(-804.5)
    assert volume.array.min() == -1024 and volume.array.max() == 1839  # HU = stored - 1024
    fallback = from_sitk(read_dicom_series_pydicom(folder, sorted(folder.iterdir())))
    assert np.array_equal(fallback.array, volume.array)
    assert fallback.geometry.is_close(volume.geometry, mm_tol=1e-4)
    # README: label voxel seg[i, j, k] <-> DICOM pixel px_k[511 - j, i]; i.e. the label (LAS) is j-flipped
    label = read_image(shared_data / "totalsegmentator" / "example_seg_dicom.nii.gz")
    world = label.geometry.index_to_world([10, 20, 3])
    assert np.allclose(volume.geometry.world_to_index(world), [10, 511 - 20, 3])


@pytest.mark.shared_data
def test_real_nifti_matches_manifest(shared_data):
    manifest = json.loads((shared_data / "manifest.json").read_text())
    for entry in manifest["nifti"][:4]:
        volume = read_image(shared_data / entry["path"])
        assert list(volume.array.shape) == entry["shape"]
        affine = np.asarray(entry["affine_ras"])
        lps_origin = affine[:3, 3] * [-1, -1, 1]
        assert np.allclose(volume.geometry.origin, lps_origin, atol=1e-3)
        assert volume.array.min() == entry["value_range"][0] and volume.array.max() == entry["value_range"][1]


@pytest.mark.shared_data
def test_totalsegmentator_label_table(shared_data):
    table = read_label_table(shared_data / "totalsegmentator" / "example_seg_fast_force_split.nii.gz")
    assert table is not None and len(table) == 117
    assert table[1] == "spleen" and table[117] == "costal_cartilages"
    assert read_label_table(shared_data / "totalsegmentator" / "example_ct.nii.gz") is None


# ----------------------------------------------------------------------------- headers that lie


@pytest.mark.parametrize("name", ["bomb.nii.gz", "bomb.nii", "bomb.mha", "bomb.nrrd"])
def test_header_bomb_is_refused_before_reading(tmp_path, name):
    from _bad_files import write_header_bomb

    path = write_header_bomb(tmp_path / name)
    assert path.stat().st_size < 2000
    with pytest.raises(InputError, match="header claims") as info:
        read_image(path)
    assert str(info.value).startswith(str(path)) and "3906250000" in str(info.value)  # both numbers named
    assert "\n" not in str(info.value)


def test_memory_cap_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "ok.nii.gz"
    write_image(path, volume_array(), GEOMETRY)  # 120 int16 voxels = 240 bytes
    assert read_image(path, max_bytes=240).array.shape == GEOMETRY.size
    with pytest.raises(InputError, match=r"240 bytes\), more than the memory cap of 239 bytes"):
        read_image(path, max_bytes=239)
    monkeypatch.setenv("ORGANDETR_MAX_IMAGE_BYTES", "200")
    with pytest.raises(InputError, match="ORGANDETR_MAX_IMAGE_BYTES"):
        read_image(path)
    monkeypatch.setenv("ORGANDETR_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(InputError, match="not a byte count"):
        read_image(path)


def test_default_memory_cap_is_a_fraction_of_ram():
    from organdetr.io.headers import max_image_bytes, parse_bytes

    assert 2**28 <= max_image_bytes() <= 2**42
    assert parse_bytes("16G") == 16 * 2**30 and parse_bytes("512MiB") == 2**29 and parse_bytes("3e9") == 3e9


@pytest.mark.parametrize(
    "pixdim, problem", [((0.0, 1.0, 1.0), r"\[0, 1, 1\]"), ((np.nan, 1, 1), "nan"), ((-2, 1, 1), "-2")]
)
def test_nifti_pixdim_must_be_positive(tmp_path, pixdim, problem):
    from _bad_files import write_nifti

    path = write_nifti(tmp_path / "scan.nii.gz", (8, 7, 6), pixdim=pixdim)
    with pytest.raises(InputError, match=f"scan.nii.gz: NIfTI pixdim .*{problem}"):
        read_image(path)
    assert (
        read_image(write_nifti(tmp_path / "fine.nii.gz", (8, 7, 6), pixdim=(2, 1, 1))).geometry.spacing[0]
        == 2
    )


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"TransformMatrix": "1 0 0 0.5 1 0 0 0 1"}, "not orthonormal"),
        ({"TransformMatrix": "2 0 0 0 1 0 0 0 1"}, "not orthonormal"),
        ({"ElementSpacing": "0 1 1"}, "spacing"),
        ({"ElementSpacing": "-1 1 1"}, "spacing"),
    ],
)
def test_metaimage_geometry_must_be_sane(tmp_path, fields, problem):
    from _bad_files import write_metaimage

    with pytest.raises(InputError, match=f"scan.mha: .*{problem}"):
        read_image(write_metaimage(tmp_path / "scan.mha", **fields))


def test_nrrd_shear_is_refused(tmp_path):
    from _bad_files import write_nrrd

    path = write_nrrd(tmp_path / "scan.nrrd", **{"space directions": "(1,0,0) (0.5,1,0) (0,0,1)"})
    with pytest.raises(InputError, match="scan.nrrd: direction matrix .* not orthonormal"):
        read_image(path)


@pytest.mark.parametrize(
    "how, problem",
    [
        ("gap", r"1 slice\(s\) missing, e.g. between slice_003.dcm"),
        ("duplicate", "duplicate slice position"),
        ("uneven", "uneven slice steps"),
        ("tilt", "not stacked along the slice normal"),
    ],
)
def test_broken_dicom_series_is_refused(tmp_path, how, problem):
    from _bad_files import break_dicom_series

    geometry = Geometry(
        (6, 5, 8), (0.75, 0.75, 2.0), (-30.0, 12.0, -400.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    )
    write_dicom_series(tmp_path / "dicom", np.zeros(geometry.size, np.int16), geometry)
    folder = break_dicom_series(tmp_path / "dicom", how)
    with pytest.raises(InputError, match=problem) as info:
        read_image(folder)
    assert str(info.value).startswith(str(folder)) and "\n" not in str(info.value)
    files = sorted(folder.glob("*.dcm"))
    with pytest.raises(InputError, match=problem):  # the pydicom reader checks the same
        read_dicom_series_pydicom(folder, files)


def test_dicom_gap_is_resampled_only_when_asked(tmp_path):
    from _bad_files import break_dicom_series

    geometry = Geometry(
        (6, 5, 8), (0.75, 0.75, 2.0), (-30.0, 12.0, -400.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    )
    ramp = np.broadcast_to(np.arange(8, dtype=np.int16) * 10, geometry.size).copy()  # HU = 10 * k
    write_dicom_series(tmp_path / "dicom", ramp, geometry)
    folder = break_dicom_series(tmp_path / "dicom", "gap")  # slice k = 4 removed
    volume = read_image(folder, uneven_slices="resample")
    assert volume.array.shape == geometry.size and volume.geometry.is_close(geometry, mm_tol=1e-4)
    assert np.array_equal(volume.array, ramp)  # linear in k: the missing slice is recovered exactly
    assert len(volume.warnings) == 1 and "1 slice(s) missing" in volume.warnings[0]
    assert "resampled linearly onto 8 slices at 2.000 mm" in volume.warnings[0]
