"""`predict --dicom-out`: DICOM SEG + SR (TID 1500) read back with highdicom / pydicom, references, errors."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from _cache_factory import save_random_checkpoint
from _dicom_factory import write_ct_series
from organdetr.cli import app
from organdetr.core.boxes.raster import box_mask, box_voxel_slices
from organdetr.core.colours import label_colour
from organdetr.core.geometry import Geometry
from organdetr.formats.dicom_out import NO_ORGAN_WARNING, write_dicom_outputs
from organdetr.formats.dicom_run import DicomRun
from organdetr.formats.dicom_seg import read_segmentation
from organdetr.formats.dicom_source import read_source_series
from organdetr.formats.dicom_sr import box_faces, read_measurement_report
from organdetr.formats.organ_codes import FALLBACK_SCHEME, organ_code
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.images import read_image
from organdetr.runtime.errors import InputError

CLASSES = {1: "liver", 2: "kidney_left", 4: "gluteus_maximus_right"}
GRID = (32, 32, 32)
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("run"), CLASSES, GRID)


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.from_checkpoint(checkpoint, "cpu")


def _predict(checkpoint: Path, series: Path, out: Path, *extra: str):
    args = ["predict", str(checkpoint), str(series), "-o", str(out), "--device", "cpu", "--no-progress"]
    return runner.invoke(app, [*args, "--no-overlay", "--dicom-out", *extra])


def _slice_index(ds, geometry: Geometry) -> int:
    """Volume index k of a source slice, from its position alone (axial series)."""
    return int(round((float(ds.ImagePositionPatient[2]) - geometry.origin[2]) / geometry.spacing[2]))


def box_masks(prediction: dict, size) -> dict[str, np.ndarray]:
    """Each detected organ's full box mask ``[I, J, K]`` (what its SEG segment must hold), by name."""
    masks = {}
    for det in prediction["detections"]:
        mask = np.zeros(tuple(size), bool)
        mask[box_voxel_slices(det["box_voxel"], mask.shape)] = True
        masks[det["label"]] = mask
    return masks


def label_masks(label_map: np.ndarray, classes: dict[int, str]) -> dict[str, np.ndarray]:
    """Each organ of a label map as its own mask, by name."""
    return {classes[int(v)]: label_map == v for v in np.unique(label_map) if v}


def check_seg(
    seg_path: Path, series: Path, expected: dict[str, np.ndarray], scores: dict[str, float] | None = None
) -> hd.seg.Segmentation:
    """The SEG holds every organ's mask in ``expected`` whole, frame by frame (slices identified by position,
    not by our ordering, overlaps kept); SNOMED labels, laterality inside the type item, the organ's colour
    of every output, the score in the description; it references the source series and lives in the
    source study under new UIDs, with a series date / time."""
    geometry = read_image(series).geometry
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    seg = hd.seg.segread(str(seg_path))
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesDate and seg.SeriesTime and int(seg.SeriesNumber) % 10 == 1
    assert seg.ContentDescription in ("organ boxes (detections)", "organ segmentation")
    names = []
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        name, label_id = _organ_name(description), str(description.tracking_id).split(" (label ")[1][:-1]
        names.append(name)
        code = organ_code(name)
        assert description.segment_label == code.display_name  # "Right kidney", not "kidney_right"
        assert description.segmented_property_type == code.property_type
        assert description.algorithm_identification[0].AlgorithmName == "organdetr"
        assert "SegmentedPropertyTypeModifierCodeSequence" not in description  # not at the segment level
        if code.laterality is not None:
            modifier = description.SegmentedPropertyTypeCodeSequence[
                0
            ].SegmentedPropertyTypeModifierCodeSequence
            assert modifier[0].CodeValue == code.laterality.value
        rgb = (int(round(255 * c)) for c in label_colour(int(label_id)))
        assert list(description.RecommendedDisplayCIELabValue) == list(
            hd.color.CIELabColor.from_rgb(*rgb).value
        )
        if scores is not None:
            assert description.SegmentDescription.endswith(f"score {scores[name]:.3f}")
    assert sorted(names) == sorted(expected)
    assert seg.SegmentsOverlap in ("YES", "NO")
    for ds in sources:
        k = _slice_index(ds, geometry)
        frames = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=False)[
            0
        ]  # (J, I, S)
        for index, name in enumerate(names):
            np.testing.assert_array_equal(frames[:, :, index] > 0, expected[name][:, :, k].T, err_msg=name)
    return seg


def _organ_name(description) -> str:
    """The class name a segment came from (its tracking ID is ``"<name> (label <id>)"``)."""
    return str(description.tracking_id).split(" (label ")[0]


def check_sr(sr_path: Path, series: Path, prediction: dict, seg: hd.seg.Segmentation | None) -> list[dict]:
    """TID 1500 with one group per detection: the same boxes to 1e-3 mm, scores, references."""
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    sr = pydicom.dcmread(sr_path)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {sources[0].SeriesInstanceUID, getattr(seg, "SeriesInstanceUID", None)}
    evidence = {
        item.ReferencedSOPInstanceUID
        for series_item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert {ds.SOPInstanceUID for ds in sources} <= evidence
    if seg is not None:
        assert seg.SOPInstanceUID in evidence
    entries = read_measurement_report(sr_path)
    by_name = {e["name"]: e for e in entries}
    assert len(entries) == len(prediction["detections"])
    for det in prediction["detections"]:
        entry = by_name[det["label"]]
        np.testing.assert_allclose(entry["box_mm"], det["box_mm"], atol=1e-3)
        assert entry["score"] == pytest.approx(det["score"], abs=1e-6)
        assert entry["frame_of_reference_uid"] == sources[0].FrameOfReferenceUID
        assert entry["finding_type"][0] == organ_code(det["label"]).property_type.value
        if seg is not None:
            tracking = {
                _organ_name(seg.get_segment_description(n)): seg.get_segment_description(n).tracking_uid
                for n in seg.segment_numbers
            }
            if det["label"] in tracking:  # organs detected but absent from a segmentation have no segment
                assert entry["tracking_uid"] == tracking[det["label"]]
    return entries


def test_dicom_out_seg_and_sr_round_trip(tmp_path, checkpoint):
    series, _ = write_ct_series(tmp_path / "ct")
    result = _predict(checkpoint, series, tmp_path / "out")
    assert result.exit_code == 0, result.output
    prediction = json.loads((tmp_path / "out" / "ct.json").read_text())
    assert set(prediction["dicom"]) == {"seg", "sr"}
    seg_path, sr_path = (tmp_path / "out" / prediction["dicom"][k]["file"] for k in ("seg", "sr"))
    geometry = read_image(series).geometry
    scores = {d["label"]: d["score"] for d in prediction["detections"]}
    seg = check_seg(seg_path, series, box_masks(prediction, geometry.size), scores)
    assert seg.SeriesDescription == "organdetr organ boxes"
    assert seg.SOPInstanceUID == prediction["dicom"]["seg"]["sop_instance_uid"]
    # gluteus maximus has no standard code: the private scheme is declared
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == FALLBACK_SCHEME
    entries = check_sr(sr_path, series, prediction, seg)
    for entry in entries:  # box model: the volume is the box's
        det = next(d for d in prediction["detections"] if d["label"] == entry["name"])
        assert entry["volume_cm3"] == pytest.approx(np.prod(det["size_mm"]) / 1000, rel=1e-5)


def test_segmentation_label_map_goes_into_the_seg(tmp_path, predictor):
    """A segmenting model's label map (not boxes): SEG holds it, SR volumes count its voxels."""
    series, _ = write_ct_series(tmp_path / "ct", size=(20, 16, 5))
    out = tmp_path / "out"
    predict_scans(predictor, [series], out, overlay=False, progress=False)
    prediction = json.loads((out / "ct.json").read_text())
    geometry = read_image(series).geometry
    label_map = np.zeros(geometry.size, np.uint8)
    label_map[2:9, 3:10, 0:4] = 1
    label_map[12:18, 5:12, 1:5] = 2  # label 4 (gluteus) is detected but not segmented
    written = write_dicom_outputs(prediction, geometry, out, seg=label_map, classes=CLASSES)
    seg = check_seg(out / written["seg"]["file"], series, label_masks(label_map, CLASSES))
    assert seg.SeriesDescription == "organdetr organ segmentation"
    assert seg.SegmentSequence[0].SegmentDescription.startswith("organ segmentation")
    source = read_source_series(series, geometry)
    masks, labels = read_segmentation(out / written["seg"]["file"], source)
    assert labels == {1: "Liver", 2: "Left kidney"}
    assert seg.SegmentsOverlap == "NO"  # a label map's organs do not overlap
    np.testing.assert_array_equal(masks[1], label_map == 1)
    np.testing.assert_array_equal(masks[2], label_map == 2)
    entries = {e["name"]: e for e in check_sr(out / written["sr"]["file"], series, prediction, seg)}
    voxel_cm3 = np.prod(geometry.spacing) / 1000
    assert entries["liver"]["volume_cm3"] == pytest.approx(7 * 7 * 4 * voxel_cm3, rel=1e-6)
    assert entries["gluteus_maximus_right"]["volume_cm3"] == 0.0


def test_box_faces_are_closed_and_span_the_box():
    faces = box_faces((-1.0, 2.0, 3.0, 4.0, 5.5, 9.0))
    assert len(faces) == 6
    for face in faces:
        np.testing.assert_array_equal(face[0], face[-1])
        assert np.sum(np.ptp(face, axis=0) == 0) == 1  # planar, perpendicular to one axis
    points = np.concatenate(faces)
    np.testing.assert_array_equal(points.min(0), [-1, 2, 3])
    np.testing.assert_array_equal(points.max(0), [4, 5.5, 9])


def test_real_ct_3slice_round_trip(tmp_path, predictor, shared_data):
    series = shared_data / "dcmqi" / "ct-3slice"
    summary = predict_scans(
        predictor, [series], tmp_path / "out", overlay=False, dicom_out=True, progress=False
    )
    assert summary.failed == []
    prediction = json.loads((tmp_path / "out" / "ct-3slice.json").read_text())
    masks = box_masks(prediction, read_image(series).geometry.size)
    seg = check_seg(tmp_path / "out" / "ct-3slice_seg.dcm", series, masks)
    assert str(seg.PatientID) == "99000"  # patient / study modules copied from the source
    check_sr(tmp_path / "out" / "ct-3slice_sr.dcm", series, prediction, seg)


def test_dicom_out_refuses_what_it_cannot_reference(tmp_path, checkpoint):
    """Non-DICOM input, a series that is not CT: one-line errors before any output."""
    from organdetr.io.images import write_image

    nifti = tmp_path / "scan.nii.gz"
    write_image(
        nifti,
        np.zeros((8, 8, 4), np.int16),
        Geometry((8, 8, 4), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    )
    result = _predict(checkpoint, nifti, tmp_path / "out1")
    assert isinstance(result.exception, InputError) and "not DICOM" in str(result.exception)
    assert str(nifti) in str(result.exception)
    mr, _ = write_ct_series(tmp_path / "mr", modality="MR")
    result = _predict(checkpoint, mr, tmp_path / "out2")
    assert isinstance(result.exception, InputError) and "is MR, not CT" in str(result.exception)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()  # refused before any output


def test_anonymised_series_without_uids_is_refused(tmp_path, checkpoint, shared_data):
    """The TotalSegmentator DICOM example has empty Study/Series/SOP Instance UIDs."""
    result = _predict(checkpoint, shared_data / "totalsegmentator" / "example_ct_dicom", tmp_path / "out")
    assert isinstance(result.exception, InputError)
    message = str(result.exception)
    assert "example_ct_dicom" in message and "StudyInstanceUID" in message and "\n" not in message


def test_source_series_must_match_the_volume(tmp_path):
    series, _ = write_ct_series(tmp_path / "ct", size=(12, 10, 4))
    geometry = read_image(series).geometry
    source = read_source_series(series, geometry)
    assert [_slice_index(ds, geometry) for ds in source.datasets] == [0, 1, 2, 3]
    shifted = Geometry(geometry.size, geometry.spacing, (0.0, 0.0, 7.0), geometry.direction)
    with pytest.raises(InputError, match="matches the volume"):
        read_source_series(series, shifted)
    one_less = tmp_path / "three"
    shutil.copytree(series, one_less)
    sorted(one_less.iterdir())[0].unlink()
    with pytest.raises(InputError, match="3 slices for a volume of 4"):
        read_source_series(one_less, geometry)


def test_segmenting_model_puts_its_label_map_into_the_seg(tmp_path):
    """`predict --dicom-out` with a segmenting model (seg2box): the SEG holds the model's label map (the one
    in <case>_seg.nii.gz), not box masks, and the SR volumes count its voxels."""
    classes = {1: "liver", 3: "spleen"}
    run = save_random_checkpoint(
        tmp_path / "run", classes, (32, 32, 32), "arch=seg2box", "seg2box.features=[4, 4, 8, 8, 16, 4]"
    )
    series, _ = write_ct_series(tmp_path / "ct", size=(20, 16, 5))
    result = _predict(run, series, tmp_path / "out")
    assert result.exit_code == 0, result.output
    prediction = json.loads((tmp_path / "out" / "ct.json").read_text())
    label_map = np.asarray(read_image(tmp_path / "out" / prediction["segmentation"]).array)
    geometry = read_image(series).geometry
    assert label_map.shape == geometry.size
    entries = {e["name"]: e for e in read_measurement_report(tmp_path / "out" / "ct_sr.dcm")}
    voxel_cm3 = np.prod(geometry.spacing) / 1000
    for label_id, name in classes.items():
        if name in entries:
            assert entries[name]["volume_cm3"] == pytest.approx(
                np.sum(label_map == label_id) * voxel_cm3, rel=1e-5
            )
    assert label_map.any()  # the seeded random model segments both organs somewhere
    seg = check_seg(tmp_path / "out" / "ct_seg.dcm", series, label_masks(label_map, classes))
    assert seg.SeriesDescription == "organdetr organ segmentation"


def _detection(
    label_id: int, box_voxel, geometry: Geometry, score: float = 0.9, name: str | None = None
) -> dict:
    """A detection dict as predict writes it, for an axis-aligned series (box in voxels -> LPS mm)."""
    box = np.asarray(box_voxel, dtype=np.float64)
    lo = geometry.index_to_world(box[:3] - 0.5)
    hi = geometry.index_to_world(box[3:] - 0.5)
    return {
        "label": name or CLASSES[label_id],
        "label_id": label_id,
        "score": score,
        "box_voxel": box.tolist(),
        "box_mm": [*np.minimum(lo, hi).tolist(), *np.maximum(lo, hi).tolist()],
        "size_mm": np.abs(hi - lo).tolist(),
    }


def _prediction(series: Path, detections: list[dict]) -> dict:
    return {"case_id": "ct", "image": str(series), "detections": detections, "warnings": []}


def test_overlapping_boxes_keep_their_whole_masks(tmp_path):
    """Overlapping boxes, and a box entirely covered by two smaller ones: every segment read back with
    highdicom is its organ's full box (``SegmentsOverlap`` YES), none carved, none lost."""
    series, _ = write_ct_series(tmp_path / "ct", size=(20, 16, 6))
    geometry = read_image(series).geometry
    detections = [
        _detection(1, (2, 2, 0, 12, 12, 6), geometry, 0.91),  # liver: a large box
        _detection(2, (6, 4, 1, 16, 10, 5), geometry, 0.52),  # left kidney: overlaps the liver's box
        _detection(4, (4, 4, 2, 8, 8, 4), geometry, 0.125),  # inside the liver's box, and covered by:
        _detection(5, (4, 4, 2, 6, 8, 4), geometry, 0.3, "spleen"),  # two smaller boxes, drawn over it
        _detection(6, (6, 4, 2, 8, 8, 4), geometry, 0.2, "pancreas"),  # in a flattened label map
    ]
    prediction = _prediction(series, detections)
    written = write_dicom_outputs(prediction, geometry, tmp_path / "out")
    assert set(written) == {"seg", "sr"}
    seg = check_seg(
        tmp_path / "out" / written["seg"]["file"],
        series,
        box_masks(prediction, geometry.size),
        {d["label"]: d["score"] for d in detections},
    )
    assert seg.SegmentsOverlap == "YES"
    masks, labels = read_segmentation(
        tmp_path / "out" / written["seg"]["file"], read_source_series(series, geometry)
    )
    assert {name: int(masks[n].sum()) for n, name in labels.items()} == {
        "Liver": 10 * 10 * 6,
        "Left kidney": 10 * 6 * 4,
        "Right gluteus maximus muscle": 4 * 4 * 2,
        "Spleen": 2 * 4 * 2,
        "Pancreas": 2 * 4 * 2,
    }
    # the box a flattened label map loses entirely (larger boxes are drawn first, smaller ones over them)
    assert not np.any(box_mask(detections, geometry.size) == 4)
    check_sr(tmp_path / "out" / written["sr"]["file"], series, prediction, seg)


def test_no_organ_writes_no_empty_object_and_says_so(tmp_path):
    """Nothing detected: no DICOM object at all (a SEG needs a segment, an RT Structure Set an ROI, a TID
    1500 SR a measurement group), one warning in the JSON naming what was left out. A segmenting model that
    detected an organ but segmented nothing: the SR (volume 0), no SEG. Regression: this raised
    UnboundLocalError and would have saved the SEG twice."""
    series, _ = write_ct_series(tmp_path / "ct", size=(12, 10, 4))
    geometry = read_image(series).geometry
    prediction = _prediction(series, [])
    written = write_dicom_outputs(prediction, geometry, tmp_path / "out", objects=("seg", "sr", "rtstruct"))
    assert written == {} and not (tmp_path / "out").exists()
    assert prediction["warnings"] == [f"{NO_ORGAN_WARNING}: no DICOM SEG, DICOM SR, RT Structure Set written"]

    detected = _prediction(series, [_detection(1, (2, 2, 0, 6, 6, 4), geometry)])
    empty = np.zeros(geometry.size, np.uint8)
    written = write_dicom_outputs(detected, geometry, tmp_path / "out2", seg=empty, classes=CLASSES)
    assert set(written) == {"sr"}
    assert detected["warnings"] == [f"{NO_ORGAN_WARNING}: no DICOM SEG written"]
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["ct_sr.dcm"]
    (entry,) = read_measurement_report(tmp_path / "out2" / "ct_sr.dcm")
    assert entry["name"] == "liver" and entry["volume_cm3"] == 0.0


def test_predict_with_nothing_detected_finishes(tmp_path, checkpoint):
    """`predict --dicom-out` on a scan where every score is under the threshold: exit 0, the JSON and the
    console say why there is no DICOM object."""
    series, _ = write_ct_series(tmp_path / "ct")
    result = _predict(checkpoint, series, tmp_path / "out", "--score-threshold", "1.0")
    assert result.exit_code == 0, result.output
    prediction = json.loads((tmp_path / "out" / "ct.json").read_text())
    assert prediction["detections"] == [] and prediction["dicom"] == {}
    assert prediction["warnings"] == [f"{NO_ORGAN_WARNING}: no DICOM SEG, DICOM SR written"]
    assert f"ct: {NO_ORGAN_WARNING}" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.json"]


def test_each_run_is_a_new_dated_series_with_a_larger_number(tmp_path):
    """Two runs on one study: SeriesDate / SeriesTime on every object, SeriesNumber grows from run to run
    (10-second ticks since 2024, last digit 1 SEG / 2 SR / 3 RT-STRUCT)."""
    series, _ = write_ct_series(tmp_path / "ct", size=(12, 10, 4))
    geometry = read_image(series).geometry
    numbers = []
    for run, when in enumerate((datetime(2026, 12, 3, 16, 13, 45), datetime(2026, 12, 3, 16, 14, 5))):
        prediction = _prediction(series, [_detection(1, (2, 2, 0, 6, 6, 4), geometry)])
        out = tmp_path / f"run{run}"
        write_dicom_outputs(prediction, geometry, out, objects=("seg", "sr", "rtstruct"), run=DicomRun(when))
        objects = {kind: pydicom.dcmread(out / f"ct_{kind}.dcm") for kind in ("seg", "sr", "rtstruct")}
        for ds in objects.values():
            assert ds.SeriesDate == "20261203" and ds.SeriesTime.startswith(when.strftime("%H%M%S"))
        numbers.append([int(objects[k].SeriesNumber) for k in ("seg", "sr", "rtstruct")])
    assert numbers[0] == [92247221, 92247222, 92247223]
    assert numbers[1] == [92247241, 92247242, 92247243]
    now = DicomRun()
    assert now.series_number("seg") > numbers[0][0] and now.date == datetime.now().strftime("%Y%m%d")
