"""Geometry: voxel <-> world round trips, LPS reorientation, model grids and the way back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from organdetr.core.boxes.world import grid_box_to_original, voxel_box_to_world
from organdetr.core.geometry import (
    Geometry,
    Reorientation,
    axis_codes,
    lps_reorientation,
    pad_grid,
    reorient_geometry,
    resize_grid,
)
from organdetr.core.volume import Volume, from_sitk, reorient_to_lps, resample, to_sitk
from organdetr.io.images import read_image


def signed_permutation(perm, signs) -> tuple[float, ...]:
    matrix = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(zip(perm, signs, strict=True)):
        matrix[world, axis] = sign
    return tuple(matrix.ravel())


DIRECTIONS = {
    "LPS": signed_permutation((0, 1, 2), (1, 1, 1)),
    "RAS": signed_permutation((0, 1, 2), (-1, -1, 1)),
    "LAS": signed_permutation((0, 1, 2), (1, -1, 1)),
    "SAR": signed_permutation((2, 1, 0), (1, -1, -1)),
    "PIL": signed_permutation((1, 2, 0), (1, -1, 1)),
}


def geometry(direction: str, size=(7, 5, 4), spacing=(0.8, 1.5, 3.0), origin=(-10.0, 20.5, 3.25)) -> Geometry:
    return Geometry(size, spacing, origin, DIRECTIONS[direction])


@pytest.mark.parametrize("code", DIRECTIONS)
def test_index_world_round_trip_and_axis_codes(code):
    g = geometry(code)
    index = np.random.default_rng(0).uniform(-2, 8, size=(20, 3))
    world = g.index_to_world(index)
    assert np.allclose(g.world_to_index(world), index)
    assert axis_codes(g) == code
    # world = origin + direction @ (spacing * index), checked against SimpleITK for one point
    image = sitk.Image([int(s) for s in g.size], sitk.sitkUInt8)
    image.SetSpacing(g.spacing)
    image.SetOrigin(g.origin)
    image.SetDirection(g.direction)
    assert np.allclose(image.TransformContinuousIndexToPhysicalPoint(index[0].tolist()), world[0])


def test_to_dict_round_trip():
    g = geometry("PIL")
    assert Geometry.from_dict(g.to_dict()) == g


@pytest.mark.parametrize("code", DIRECTIONS)
def test_reorient_to_lps_keeps_every_voxel_in_place(code):
    g = geometry(code)
    array = np.arange(np.prod(g.size), dtype=np.int32).reshape(g.size)
    canonical = reorient_to_lps(Volume(array, g))
    assert np.allclose(canonical.geometry.direction_matrix, np.eye(3))
    assert axis_codes(canonical.geometry) == "LPS"
    # the voxel with value v sits at the same world position before and after
    for index in itertools.product(*(range(s) for s in canonical.array.shape)):
        value = canonical.array[index]
        original_index = np.unravel_index(value, g.size)
        assert np.allclose(canonical.geometry.index_to_world(index), g.index_to_world(original_index))
    # and back
    r = lps_reorientation(g)
    assert np.array_equal(r.invert(canonical.array), array)


@pytest.mark.parametrize("code", DIRECTIONS)
def test_reorient_matches_simpleitk_dicomorient(code):
    g = geometry(code)
    array = np.random.default_rng(1).integers(0, 100, size=g.size).astype(np.int16)
    ours = reorient_to_lps(Volume(array, g))
    theirs = from_sitk(sitk.DICOMOrient(to_sitk(array, g), "LPS"))
    assert np.array_equal(ours.array, theirs.array)
    assert np.allclose(ours.geometry.origin, theirs.geometry.origin)
    assert np.allclose(ours.geometry.spacing, theirs.geometry.spacing)


def test_oblique_direction_reorients_to_nearest_axes():
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flipped = rot @ np.diag([-1.0, -1.0, 1.0])
    g = Geometry((4, 5, 6), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(flipped.ravel()))
    r = lps_reorientation(g)
    assert r == Reorientation((0, 1, 2), (True, True, False))
    canonical = reorient_geometry(g, r)
    assert np.allclose(canonical.direction_matrix, rot)


def test_resize_grid_covers_the_same_extent():
    canonical = reorient_geometry(geometry("RAS", size=(10, 20, 30), spacing=(3.0, 1.0, 2.0)))
    mapping = resize_grid(canonical, (5, 8, 12))
    edges = np.array([[-0.5, -0.5, -0.5], np.array(mapping.geometry.size) - 0.5])
    src_edges = np.array([[-0.5, -0.5, -0.5], np.array(canonical.size) - 0.5])
    assert np.allclose(mapping.geometry.index_to_world(edges), canonical.index_to_world(src_edges))
    assert np.allclose(mapping.geometry.spacing, (6.0, 2.5, 5.0))


def test_pad_grid_centres_the_scan():
    canonical = geometry("LPS", size=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    mapping = pad_grid(canonical, (2.0, 2.0, 2.0), (9, 5, 3))  # resampled 5x5x5 -> pad 2, keep, crop 1
    centre_grid = mapping.geometry.index_to_world((np.array(mapping.geometry.size) - 1) / 2)
    centre_scan = canonical.index_to_world((np.array(canonical.size) - 1) / 2)
    assert np.allclose(centre_grid, centre_scan, atol=1.0 + 1e-9)  # within one grid voxel / 2 of 2 mm
    assert np.allclose(mapping.geometry.spacing, 2.0)
    # first resampled voxel centre at -0.5 + 1 = 0.5 mm; two voxels of padding at 2 mm before it
    assert mapping.geometry.origin[0] == pytest.approx(0.5 - 4.0)


def test_resample_onto_own_grid_is_identity():
    g = geometry("SAR")
    array = np.random.default_rng(2).normal(size=g.size).astype(np.float32)
    assert np.allclose(resample(array, g, g, interpolation="linear"), array, atol=1e-5)
    labels = (array > 0).astype(np.uint8)
    assert np.array_equal(resample(labels, g, g, interpolation="nearest"), labels)


@pytest.mark.parametrize("code", ["LPS", "RAS", "PIL"])
@pytest.mark.parametrize("fit", ["resize", "pad"])
def test_grid_box_to_original_inverts_the_forward_map(code, fit):
    g = geometry(code, size=(40, 30, 20), spacing=(0.7, 1.1, 2.5))
    canonical = reorient_geometry(g)
    mapping = (
        resize_grid(canonical, (16, 12, 10))
        if fit == "resize"
        else pad_grid(canonical, (2, 2, 2), (8, 16, 32))
    )
    record = {"original": g.to_dict(), "to_original": mapping.to_dict()}
    rng = np.random.default_rng(3)
    lo = rng.uniform(0, 5, size=(10, 3))
    grid_boxes = np.concatenate([lo, lo + rng.uniform(1, 5, size=(10, 3))], axis=1)
    box_original, box_mm = grid_box_to_original(grid_boxes, record)
    # the mm box is the grid box seen through the grid geometry (same world region)
    assert np.allclose(box_mm, voxel_box_to_world(grid_boxes, mapping.geometry))
    assert np.allclose(voxel_box_to_world(box_original, g), box_mm)


def test_real_ras_scan_reorients_to_identity(shared_data):
    volume = read_image(shared_data / "totalsegmentator" / "example_ct.nii.gz")
    assert axis_codes(volume.geometry) == "RAS"
    canonical = reorient_to_lps(volume)
    assert np.allclose(canonical.geometry.direction_matrix, np.eye(3))
    assert canonical.array[0, 0, 0] == volume.array[-1, -1, 0]
