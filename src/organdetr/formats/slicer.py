"""3D Slicer files: organ boxes as a markups ROI file, organ masks as a ``.seg.nrrd`` segmentation.

Per scan (``organdetr predict --format slicer``):

``<case>_boxes.mrk.json``
    One markups ROI per organ (Slicer's ``markups-schema-v1.0.3.json``): named after the organ, coloured
    like the organ everywhere else in the toolkit (:func:`organdetr.core.colours.label_colour`), the
    score in
    the control point's description. Coordinates are LPS mm (``"coordinateSystem": "LPS"``). The ROI is
    aligned with the scan's voxel axes (``orientation`` = the scan's direction, made a proper rotation),
    so it is the voxel box exactly, also on oblique scans; on axis-aligned scans it equals ``box_mm``.
``<case>.seg.nrrd``
    A Slicer segmentation written with **slicerio**: one segment per organ with its name, colour,
    label value and terminology (``Segment<i>_Terminology``: the SNOMED CT codes of the DICOM SEG,
    :func:`organdetr.formats.organ_codes.slicer_terminology`), the detection's score in the segment tag
    ``organdetr.score``. From the model's label map (``seg``: label ids ``[I, J, K]`` on the scan grid)
    when the model segments, else from the boxes (``<organ> box`` segments; overlapping boxes go to
    separate layers, as Slicer stores overlapping segments).

Open both in Slicer by dragging them onto the window together with the scan (or ``File > Add Data``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from organdetr.core.boxes.raster import box_voxel_slices
from organdetr.core.colours import label_colour
from organdetr.core.geometry import Geometry
from organdetr.formats.organ_codes import slicer_terminology
from organdetr.runtime.atomic import atomic_path, write_json
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
"""The ``@schema`` URL every markups file names (Slicer reads v1.0.x files)."""

_LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- markups ROI


def roi_box(detection: Mapping, geometry: Geometry | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(center (3,) LPS mm, size (3,) mm, orientation (3, 3))`` of one detection's ROI.

    With the scan's ``geometry`` the ROI is the voxel box ``box_voxel`` (half-open, original scan
    indices) on the scan's axes: ``orientation`` columns are the world directions of i, j, k (one
    flipped if needed to make it a rotation; a box is symmetric). Without it, the axis-aligned
    ``box_mm``.
    """
    if geometry is None or "box_voxel" not in detection:
        box = np.asarray(detection["box_mm"], dtype=np.float64)
        return (box[:3] + box[3:]) / 2.0, box[3:] - box[:3], np.eye(3)
    box = np.asarray(detection["box_voxel"], dtype=np.float64)
    centre_index = (box[:3] + box[3:]) / 2.0 - 0.5  # voxel v spans [v - 0.5, v + 0.5)
    size = (box[3:] - box[:3]) * np.asarray(geometry.spacing)
    orientation = geometry.direction_matrix.copy()
    if np.linalg.det(orientation) < 0:
        orientation[:, 0] = -orientation[:, 0]
    return geometry.index_to_world(centre_index), size, orientation


def roi_markup(detection: Mapping, geometry: Geometry | None = None) -> dict:
    """One markups ROI (a ``markups[]`` item of the schema) for a prediction JSON detection."""
    centre, size, orientation = roi_box(detection, geometry)
    colour = [round(c, 4) for c in label_colour(int(detection.get("label_id", 1)))]
    name = str(detection["label"])
    score = detection.get("score")
    description = f"score {float(score):.3f}" if score is not None else ""
    orientation_list = [round(float(v), 9) for v in orientation.ravel()]
    position = [round(float(v), 4) for v in centre]
    return {
        "type": "ROI",
        "name": name,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": True,
        "labelFormat": "%N",
        "roiType": "Box",
        "center": position,
        "orientation": orientation_list,
        "size": [round(float(v), 4) for v in size],
        "insideOut": False,
        "controlPoints": [
            {
                "id": "1",
                "label": name,
                "description": description,
                "associatedNodeID": "",
                "position": position,
                "orientation": orientation_list,
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined",
            }
        ],
        "measurements": [],
        "display": {
            "visibility": True,
            "opacity": 1.0,
            "color": colour,
            "selectedColor": colour,
            "activeColor": colour,
            "propertiesLabelVisibility": True,
            "pointLabelsVisibility": False,
            "handlesInteractive": False,
        },
    }


def markups_document(prediction: Mapping) -> dict:
    """The whole ``.mrk.json`` document: one ROI per detection of a prediction JSON."""
    original = prediction.get("original")
    geometry = Geometry.from_dict(original) if original else None
    return {
        "@schema": MARKUPS_SCHEMA,
        "markups": [roi_markup(d, geometry) for d in prediction.get("detections", [])],
    }


def write_markups(prediction: Mapping, path: str | Path) -> Path:
    """Write ``prediction``'s organ boxes as a Slicer markups ROI file (atomically); returns ``path``."""
    path = Path(path)
    write_json(path, markups_document(prediction))
    return path


def read_markups_rois(path: str | Path) -> list[dict]:
    """The ROIs of a ``.mrk.json`` file -> ``[{"label", "box_mm", "center", "size", "orientation",
    "color"}]``: ``box_mm`` (6,) is the LPS axis-aligned bound of the ROI's 8 corners, ``center`` LPS mm.

    Files in Slicer's RAS coordinate system are converted to LPS. Other markup types are skipped.
    InputError naming the file when it is not a markups file.
    """
    path = Path(path)
    document = read_json(path, "not a readable markups JSON")
    if not isinstance(document, dict) or not isinstance(document.get("markups"), list):
        raise InputError(path, "not a Slicer markups file (no 'markups' list)")
    rois = []
    for n, markup in enumerate(document["markups"]):
        if not isinstance(markup, dict) or markup.get("type") != "ROI":
            continue
        try:
            rois.append(_roi_from_markup(markup))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"markup {n}: not a valid ROI ({err})") from None
    return rois


def _roi_from_markup(markup: Mapping) -> dict:
    flip = _LPS_FROM_RAS if markup.get("coordinateSystem", "LPS") == "RAS" else np.ones(3)
    if "center" in markup:
        centre = np.asarray(markup["center"], dtype=np.float64)
    else:
        centre = np.asarray(markup["controlPoints"][0]["position"], dtype=np.float64)
    size = np.asarray(markup["size"], dtype=np.float64)
    orientation = np.asarray(markup.get("orientation", np.eye(3).ravel()), dtype=np.float64).reshape(3, 3)
    if centre.shape != (3,) or size.shape != (3,):
        raise ValueError("center and size need 3 numbers")
    centre, orientation = centre * flip, orientation * flip[:, None]
    signs = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=np.float64) * 2 - 1
    corners = centre + (signs * size / 2.0) @ orientation.T
    display = markup.get("display", {})
    return {
        "label": str(markup.get("name", "")),
        "box_mm": np.concatenate([corners.min(axis=0), corners.max(axis=0)]),
        "center": centre,
        "size": size,
        "orientation": orientation,
        "color": display.get("selectedColor", display.get("color")),
    }


# ----------------------------------------------------------------------------- segmentation (.seg.nrrd)


def require_slicerio():
    try:
        import slicerio
    except ImportError:
        raise InputError(None, "writing .seg.nrrd needs slicerio: pip install 'organdetr[slicer]'") from None
    return slicerio


def ijk_to_lps(geometry: Geometry) -> np.ndarray:
    """4x4 matrix from voxel index ``(i, j, k, 1)`` to LPS mm (Slicer's ``ijkToLPS``)."""
    matrix = np.eye(4)
    matrix[:3, :3] = geometry.direction_matrix * np.asarray(geometry.spacing)[None, :]
    matrix[:3, 3] = geometry.origin
    return matrix


def _segment(
    label_value: int,
    label_id: int,
    name: str,
    extent: Sequence[int],
    layer: int = 0,
    organ: str | None = None,
    score: float | None = None,
) -> dict:
    """One slicerio segment: ``name`` shown, colour by label id, terminology (SNOMED CT) of ``organ``
    (default ``name``), the detection's ``score`` as the segment tag ``organdetr.score``."""
    segment = {
        "id": f"{name}_{label_id}".replace(" ", "_"),
        "name": name,
        "nameAutoGenerated": False,
        "color": [round(c, 6) for c in label_colour(label_id)],
        "colorAutoGenerated": False,
        "labelValue": int(label_value),
        "layer": int(layer),
        "extent": [int(v) for v in extent],
        "terminology": slicer_terminology(organ or name),
    }
    if score is not None:  # the detection's score, a segment tag (Segment editor: segment tags)
        segment["tags"] = {"organdetr.score": f"{float(score):.4f}"}
    return segment


def write_label_segmentation(
    path: str | Path,
    labels: np.ndarray,
    geometry: Geometry,
    names: Mapping[int, str],
    scores: Mapping[int, float] | None = None,
) -> Path:
    """Write a label map ``labels [I, J, K]`` (label id per voxel, 0 = background) on ``geometry`` as a
    Slicer ``.seg.nrrd``: one segment per label id present, named by ``names`` (``label_<id>`` for ids
    it lacks), label value = label id, the detection's score (``scores``: label id -> score) as the segment
    tag ``organdetr.score``. Returns ``path``."""
    from scipy import ndimage

    slicerio = require_slicerio()
    labels = np.asarray(labels)
    if labels.shape != tuple(geometry.size):
        raise InputError(
            path, f"label map shape {labels.shape} differs from the scan's {tuple(geometry.size)}"
        )
    if labels.dtype.kind not in "iu":
        raise InputError(path, f"label map has non-integer type {labels.dtype}")
    max_id = int(labels.max()) if labels.size else 0
    segments = []
    for label_id, region in enumerate(ndimage.find_objects(labels, max_label=max_id), start=1):
        if region is None:
            continue
        extent = [v for s in region for v in (s.start, s.stop - 1)]
        name = names.get(label_id, f"label_{label_id}")
        segments.append(_segment(label_id, label_id, name, extent, score=(scores or {}).get(label_id)))
    dtype = np.uint8 if max_id < 256 else np.uint16
    segmentation = {
        "voxels": labels.astype(dtype, copy=False),
        "ijkToLPS": ijk_to_lps(geometry),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }
    return _write_segmentation(slicerio, path, segmentation)


def write_box_segmentation(path: str | Path, detections: Sequence[Mapping], geometry: Geometry) -> Path:
    """Write each detection's voxel box as a segment ``<organ> box`` of a ``.seg.nrrd`` on ``geometry``
    (its score in the segment tag ``organdetr.score``).

    Boxes overlap; each goes to the first layer where it overlaps no other box (label values 1.. per
    layer), so no box loses voxels. Filled voxels are :func:`organdetr.core.boxes.raster.box_voxel_slices`.
    """
    slicerio = require_slicerio()
    shape = tuple(int(s) for s in geometry.size)
    layers: list[list[tuple[slice, ...]]] = []
    placed = []  # (layer, label value, detection, slices)
    for det in detections:
        slices = box_voxel_slices(det["box_voxel"], shape)
        layer = next(
            (n for n, taken in enumerate(layers) if not any(_overlap(slices, t) for t in taken)), None
        )
        if layer is None:
            layers.append([])
            layer = len(layers) - 1
        layers[layer].append(slices)
        placed.append((layer, len(layers[layer]), det, slices))
    count = max(len(layers), 1)
    most = max((len(t) for t in layers), default=0)
    voxels = np.zeros((count, *shape), dtype=np.uint8 if most < 256 else np.uint16)
    segments = []
    for layer, value, det, slices in placed:
        voxels[(layer, *slices)] = value
        extent = [v for s in slices for v in (s.start, s.stop - 1)]
        label_id, organ = int(det["label_id"]), str(det["label"])
        segments.append(
            _segment(value, label_id, f"{organ} box", extent, layer, organ=organ, score=det.get("score"))
        )
    segmentation = {
        "voxels": voxels[0] if count == 1 else voxels,
        "ijkToLPS": ijk_to_lps(geometry),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }
    return _write_segmentation(slicerio, path, segmentation)


def _overlap(a: Sequence[slice], b: Sequence[slice]) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b, strict=True))


def _write_segmentation(slicerio, path: str | Path, segmentation: dict) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path


# ----------------------------------------------------------------------------- per scan


def write_slicer_files(
    prediction: Mapping,
    out_dir: str | Path,
    *,
    seg: np.ndarray | None = None,
    classes: Mapping[int, str] | None = None,
) -> list[Path]:
    """``OUT/<case>_boxes.mrk.json`` and ``OUT/<case>.seg.nrrd`` (organ masks from ``seg`` when given,
    else the boxes) for one prediction JSON (which must carry the scan geometry, ``original``).
    ``classes`` (label id -> name) names the segments of organs the model segmented but did not keep."""
    out_dir = Path(out_dir)
    case_id = prediction["case_id"]
    written = [write_markups(prediction, out_dir / f"{case_id}_boxes.mrk.json")]
    if not prediction.get("original"):
        raise InputError(None, f"prediction {case_id}: no scan geometry ('original'); cannot write .seg.nrrd")
    geometry = Geometry.from_dict(prediction["original"])
    seg_path = out_dir / f"{case_id}.seg.nrrd"
    if seg is not None:
        names = {int(k): str(v) for k, v in (classes or {}).items()}
        names.update({int(d["label_id"]): str(d["label"]) for d in prediction.get("detections", [])})
        scores = {int(d["label_id"]): d["score"] for d in prediction.get("detections", []) if "score" in d}
        written.append(write_label_segmentation(seg_path, seg, geometry, names, scores))
    else:
        written.append(write_box_segmentation(seg_path, prediction.get("detections", []), geometry))
    return written


__all__ = [
    "MARKUPS_SCHEMA",
    "ijk_to_lps",
    "markups_document",
    "read_markups_rois",
    "roi_box",
    "roi_markup",
    "write_box_segmentation",
    "write_label_segmentation",
    "write_markups",
    "write_slicer_files",
]
