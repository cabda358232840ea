"""organdetr.formats.slicer: markups ROI files valid against the Slicer schema, .seg.nrrd via slicerio."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.world import voxel_box_to_world
from organdetr.core.colours import label_colour
from organdetr.core.geometry import Geometry
from organdetr.formats.slicer import (
    MARKUPS_SCHEMA,
    markups_document,
    read_markups_rois,
    write_box_segmentation,
    write_label_segmentation,
    write_slicer_files,
)

slicerio = pytest.importorskip("slicerio")

_VEC3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_VEC9 = {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9}
_RGB = {
    "type": "array",
    "items": {"type": "number", "minimum": 0, "maximum": 1},
    "minItems": 3,
    "maxItems": 3,
}
# The constraints of Slicer's markups-schema-v1.0.3.json (Modules/Loadable/Markups/Resources/Schema) on every
# field the writer emits, transcribed from the schema: required keys, types, enums, array lengths, ranges.
MARKUPS_V103 = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string"},
        "markups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                    "name": {"type": "string"},
                    "coordinateSystem": {"enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"enum": ["mm", "um"]},
                    "locked": {"type": "boolean"},
                    "fixedNumberOfControlPoints": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "roiType": {"type": "string"},
                    "center": _VEC3,
                    "size": _VEC3,
                    "orientation": _VEC9,
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "associatedNodeID": {"type": "string"},
                                "position": _VEC3,
                                "orientation": _VEC9,
                                "selected": {"type": "boolean"},
                                "locked": {"type": "boolean"},
                                "visibility": {"type": "boolean"},
                                "positionStatus": {"enum": ["undefined", "preview", "defined"]},
                            },
                        },
                    },
                    "measurements": {"type": "array"},
                    "display": {
                        "type": "object",
                        "properties": {
                            "visibility": {"type": "boolean"},
                            "opacity": {"type": "number", "minimum": 0, "maximum": 1},
                            "color": _RGB,
                            "selectedColor": _RGB,
                            "activeColor": _RGB,
                            "propertiesLabelVisibility": {"type": "boolean"},
                            "pointLabelsVisibility": {"type": "boolean"},
                            "handlesInteractive": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}

# LAS scan (det(direction) < 0, like TotalSegmentator's DICOM labels): i -> right, j -> anterior
GEOMETRY = Geometry((40, 36, 20), (1.5, 1.2, 3.0), (30.0, -20.0, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
LAS = Geometry((40, 36, 20), (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))


def _labels(shape=(40, 36, 20)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[4:20, 5:25, 2:12] = 5  # liver
    labels[22:30, 8:16, 6:14] = 1  # spleen
    labels[10:14, 10:14, 10:18] = 3  # inside the liver's box: boxes overlap
    return labels


def _prediction(geometry: Geometry) -> dict:
    names = {5: "liver", 1: "spleen", 3: "kidney_left"}
    boxes = boxes_from_labels(_labels(geometry.size), geometry, names)
    detections = [
        {"label": b.name, "label_id": b.label_id, "score": 0.9 - 0.1 * n, "box_voxel": b.box_voxel.tolist(),
         "box_mm": b.box_mm.tolist()}
        for n, b in enumerate(boxes)
    ]  # fmt: skip
    return {
        "case_id": "scan1",
        "world_frame": "LPS",
        "original": geometry.to_dict(),
        "detections": detections,
    }


@pytest.mark.parametrize("geometry", [GEOMETRY, LAS], ids=["RAS", "LAS"])
def test_markups_valid_against_schema_and_round_trip(tmp_path, geometry):
    prediction = _prediction(geometry)
    document = markups_document(prediction)
    jsonschema.validate(document, MARKUPS_V103)
    assert document["@schema"] == MARKUPS_SCHEMA
    assert [m["name"] for m in document["markups"]] == [d["label"] for d in prediction["detections"]]
    for markup, det in zip(document["markups"], prediction["detections"], strict=True):
        assert markup["type"] == "ROI" and markup["roiType"] == "Box" and markup["coordinateSystem"] == "LPS"
        rotation = np.asarray(markup["orientation"]).reshape(3, 3)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0)  # a rotation, also for the LAS scan
        assert markup["display"]["selectedColor"] == pytest.approx(label_colour(det["label_id"]), abs=1e-4)
        assert markup["controlPoints"][0]["description"] == f"score {det['score']:.3f}"
    path = tmp_path / "scan1_boxes.mrk.json"
    path.write_text(json.dumps(document))
    rois = read_markups_rois(path)
    for roi, det in zip(rois, prediction["detections"], strict=True):
        np.testing.assert_allclose(roi["box_mm"], det["box_mm"], atol=1e-3)  # LPS mm to 1e-3 mm


def test_markups_in_ras_are_read_as_lps(tmp_path):
    markup = {"type": "ROI", "coordinateSystem": "RAS", "center": [10.0, 20.0, 30.0], "size": [4.0, 6.0, 8.0],
              "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1]}  # fmt: skip
    path = tmp_path / "ras.mrk.json"
    path.write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [markup, {"type": "Fiducial"}]}))
    (roi,) = read_markups_rois(path)
    np.testing.assert_allclose(roi["box_mm"], [-12, -23, 26, -8, -17, 34])


def test_bad_markups_file_names_the_file(tmp_path):
    from organdetr.runtime.errors import InputError

    path = tmp_path / "bad.mrk.json"
    path.write_text('{"markups": [{"type": "ROI", "size": [1, 2]}]}')
    with pytest.raises(InputError, match="bad.mrk.json: markup 0"):
        read_markups_rois(path)


def test_label_segmentation_round_trip_through_slicerio(tmp_path):
    labels = _labels()
    names = {5: "liver", 1: "spleen", 3: "kidney_left"}
    path = write_label_segmentation(tmp_path / "scan1.seg.nrrd", labels, LAS, names)
    segmentation = slicerio.read_segmentation(str(path))
    assert sorted(slicerio.segment_names(segmentation)) == sorted(names.values())
    np.testing.assert_allclose(segmentation["ijkToLPS"][:3, 3], LAS.origin)
    np.testing.assert_allclose(np.diag(segmentation["ijkToLPS"][:3, :3]), [-1.5, 1.2, 3.0])
    for label_id, name in names.items():
        segment = slicerio.segment_from_name(segmentation, name)
        assert segment["labelValue"] == label_id
        assert segment["color"] == pytest.approx(label_colour(label_id), abs=1e-5)
        np.testing.assert_array_equal(slicerio.segment_mask(segmentation, segment), labels == label_id)


def test_box_segmentation_keeps_overlapping_boxes_whole(tmp_path):
    prediction = _prediction(GEOMETRY)
    path = write_box_segmentation(tmp_path / "b.seg.nrrd", prediction["detections"], GEOMETRY)
    segmentation = slicerio.read_segmentation(str(path))
    assert segmentation["voxels"].ndim == 4  # the kidney box lies inside the liver box: two layers
    for det in prediction["detections"]:
        mask = slicerio.segment_mask(
            segmentation, slicerio.segment_from_name(segmentation, f"{det['label']} box")
        )
        segment = slicerio.segment_from_name(segmentation, f"{det['label']} box")
        assert segment["tags"]["organdetr.score"] == f"{det['score']:.4f}"  # the score travels with it
        box = np.asarray(det["box_voxel"]).astype(int)
        expected = np.zeros(GEOMETRY.size, bool)
        expected[box[0] : box[3], box[1] : box[4], box[2] : box[5]] = True
        np.testing.assert_array_equal(mask, expected)
        # the segment's voxels span the detection's box in world mm
        np.testing.assert_allclose(voxel_box_to_world(box.astype(float), GEOMETRY), det["box_mm"], atol=1e-6)


def test_write_slicer_files_per_scan(tmp_path):
    prediction = _prediction(LAS)
    written = write_slicer_files(prediction, tmp_path, seg=_labels())
    assert [p.name for p in written] == ["scan1_boxes.mrk.json", "scan1.seg.nrrd"]
    segmentation = slicerio.read_segmentation(str(written[1]))
    assert sorted(slicerio.segment_names(segmentation)) == ["kidney_left", "liver", "spleen"]
    for det in prediction["detections"]:
        segment = slicerio.segment_from_name(segmentation, det["label"])
        assert segment["tags"]["organdetr.score"] == f"{det['score']:.4f}"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files
