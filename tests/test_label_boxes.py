"""Organ boxes from label maps: conventions, options, errors, and the real TotalSegmentator scans."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.world import voxel_box_to_world, world_box_to_voxel
from organdetr.core.geometry import Geometry
from organdetr.io.images import read_label_map
from organdetr.runtime.errors import InputError

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
RAS = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
SAR = (0, 0, -1.0, 0, -1.0, 0, 1.0, 0, 0)


def grid(direction=IDENTITY, size=(10, 8, 6)) -> Geometry:
    return Geometry(size, (2.0, 1.0, 3.0), (100.0, -50.0, 10.0), direction)


def test_half_open_voxel_box_and_edge_mm_box():
    labels = np.zeros((10, 8, 6), np.uint8)
    labels[2:5, 1:4, 0:2] = 3  # voxels 2..4, 1..3, 0..1
    (box,) = boxes_from_labels(labels, grid(), {3: "liver"})
    assert (box.label_id, box.name, box.voxels) == (3, "liver", 27 - 9)
    assert box.box_voxel.tolist() == [2, 1, 0, 5, 4, 2]
    # voxel edges: i from 2 - 0.5 to 4 + 0.5 voxels of 2 mm, origin 100 mm
    assert box.box_mm.tolist() == pytest.approx([103, -49.5, 8.5, 109, -46.5, 14.5])


def test_boxes_sorted_by_id_named_by_class_map_or_label_id():
    labels = np.zeros((10, 8, 6), np.uint16)
    labels[0, 0, 0] = 7
    labels[9, 7, 5] = 2
    boxes = boxes_from_labels(labels, grid(), None)
    assert [(b.label_id, b.name) for b in boxes] == [(2, "label_2"), (7, "label_7")]
    assert boxes[1].box_voxel.tolist() == [0, 0, 0, 1, 1, 1]


def test_unknown_label_id_and_empty_map_raise_input_error():
    labels = np.zeros((10, 8, 6), np.uint8)
    with pytest.raises(InputError, match="seg.nii.gz: label map is empty"):
        boxes_from_labels(labels, grid(), {1: "a"}, path="seg.nii.gz")
    assert boxes_from_labels(labels, grid(), {1: "a"}, allow_empty=True) == []
    labels[1, 1, 1] = 4
    with pytest.raises(InputError, match=r"seg.nii.gz: label ids \[4\] are not in the class map"):
        boxes_from_labels(labels, grid(), {1: "a"}, path="seg.nii.gz")


def test_min_voxels_and_largest_component():
    labels = np.zeros((10, 8, 6), np.uint8)
    labels[0:3, 0:3, 0:3] = 1  # 27 voxels
    labels[8, 7, 5] = 1  # a stray voxel far away
    labels[5, 5, 5] = 2  # a one-voxel organ
    both = boxes_from_labels(labels, grid(), None)
    assert both[0].box_voxel.tolist() == [0, 0, 0, 9, 8, 6] and both[0].voxels == 28
    largest = boxes_from_labels(labels, grid(), None, largest_component=True, min_voxels=2)
    assert len(largest) == 1
    assert largest[0].box_voxel.tolist() == [0, 0, 0, 3, 3, 3] and largest[0].voxels == 27
    # a diagonal neighbour is the same component (26-connectivity)
    labels[3, 3, 3] = 1
    assert boxes_from_labels(labels, grid(), None, largest_component=True)[0].box_voxel.tolist()[3:] == [
        4,
        4,
        4,
    ]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_one_pass_boxes_equal_per_class_np_where(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=(7, 6, 5), p=[0.85, 0.05, 0.05, 0.03, 0.02]).astype(np.uint8)
    labels[0, 0, 0] = 1
    boxes = boxes_from_labels(labels, grid(size=(7, 6, 5)), None)
    for box in boxes:
        where = np.argwhere(labels == box.label_id)
        assert box.box_voxel.tolist() == [*where.min(0), *(where.max(0) + 1)]
        assert box.voxels == len(where)
    assert {b.label_id for b in boxes} == set(np.unique(labels)) - {0}


@pytest.mark.parametrize("direction", [IDENTITY, RAS, SAR])
def test_voxel_world_box_round_trip(direction):
    g = grid(direction)
    rng = np.random.default_rng(0)
    lo = rng.uniform(-3, 5, size=(4, 5, 3))
    boxes = np.concatenate([lo, lo + rng.uniform(0.5, 4, size=(4, 5, 3))], axis=-1)
    box_mm = voxel_box_to_world(boxes, g)
    assert box_mm.shape == (4, 5, 6)
    assert np.all(box_mm[..., 3:] >= box_mm[..., :3])
    assert np.allclose(world_box_to_voxel(box_mm, g), boxes)
    # the mm box contains the world position of every voxel centre inside the voxel box
    centre = g.index_to_world((boxes[0, 0, :3] + boxes[0, 0, 3:]) / 2 - 0.5)
    assert np.all(centre >= box_mm[0, 0, :3]) and np.all(centre <= box_mm[0, 0, 3:])


def manifest_label_files(shared_data):
    manifest = json.loads((shared_data / "manifest.json").read_text())
    return [entry for entry in manifest["nifti"] if entry.get("labels_present")]


@pytest.mark.shared_data
def test_real_label_maps_match_manifest(shared_data):
    entries = manifest_label_files(shared_data)
    assert len(entries) >= 10
    for entry in entries:
        volume = read_label_map(shared_data / entry["path"])
        boxes = boxes_from_labels(volume.array, volume.geometry, None)
        expected = entry["labels_present"]
        assert [b.label_id for b in boxes] == [e["id"] for e in expected], entry["path"]
        spacing = np.asarray(volume.geometry.spacing)
        for box, e in zip(boxes, expected, strict=True):
            assert box.voxels == e["voxels"]
            assert box.box_voxel[:3].tolist() == e["bbox_vox_min"]
            assert (box.box_voxel[3:] - 1).tolist() == e["bbox_vox_max_incl"]
            # manifest mm boxes are RAS voxel-centre bounds; ours are LPS voxel-edge bounds
            centres_lps = np.array([e["bbox_world_ras_mm_min"], e["bbox_world_ras_mm_max"]]) * [-1, -1, 1]
            lo, hi = centres_lps.min(0) - spacing / 2, centres_lps.max(0) + spacing / 2
            assert np.allclose(box.box_mm, [*lo, *hi], atol=0.02), (entry["path"], e["name"])
            # every voxel of the organ lies inside its boxes
            where = np.argwhere(volume.array == box.label_id)
            assert where.min(0).tolist() == box.box_voxel[:3].tolist()
            assert (where.max(0) + 1).tolist() == box.box_voxel[3:].tolist()
