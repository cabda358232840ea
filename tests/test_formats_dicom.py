"""`predict --dicom-out`: DICOM SEG + SR (TID 1500) read back with highdicom / pydicom, references, errors."""

from __future__ import annotations

import json
import shutil
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
from organdetr.core.boxes.raster import box_mask
from organdetr.core.geometry import Geometry
from organdetr.formats.dicom_out import write_dicom_outputs
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


def check_seg(
    seg_path: Path, series: Path, label_map: np.ndarray, classes: dict[int, str]
) -> hd.seg.Segmentation:
    """The SEG holds ``label_map`` frame by frame (slices identified by position, not by our ordering),
    references the source series, lives in the source study under new UIDs."""
    geometry = read_image(series).geometry
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    seg = hd.seg.segread(str(seg_path))
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    present = [int(v) for v in np.unique(label_map) if v]
    number_of = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        name = description.segment_label
        number_of[name] = number
        code = organ_code(name)
        assert description.segmented_property_type == code.property_type
        assert description.algorithm_identification[0].AlgorithmName == "organdetr"
        if code.laterality is not None:
            assert description.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == code.laterality.value
    assert sorted(number_of) == sorted(classes[i] for i in present)
    lut = np.zeros(max(present) + 1, np.uint8)
    for label_id in present:
        lut[label_id] = number_of[classes[label_id]]
    for ds in sources:
        k = _slice_index(ds, geometry)
        frame = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=True)[0]
        np.testing.assert_array_equal(frame, lut[label_map[:, :, k].T])
    return seg


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
                seg.get_segment_description(n).segment_label: seg.get_segment_description(n).tracking_uid
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
    label_map = box_mask(prediction["detections"], geometry.size)
    seg = check_seg(seg_path, series, label_map, CLASSES)
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
    written = write_dicom_outputs(prediction, label_map, geometry, out, classes=CLASSES, segmentation=True)
    seg = check_seg(out / written["seg"]["file"], series, label_map, CLASSES)
    assert seg.SeriesDescription == "organdetr organ segmentation"
    assert seg.SegmentSequence[0].SegmentDescription == "organ segmentation"
    source = read_source_series(series, geometry)
    segment_map, labels = read_segmentation(out / written["seg"]["file"], source)
    assert labels == {1: "liver", 2: "kidney_left"}
    np.testing.assert_array_equal(segment_map, label_map)
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
    label_map = box_mask(prediction["detections"], read_image(series).geometry.size)
    seg = check_seg(tmp_path / "out" / "ct-3slice_seg.dcm", series, label_map, CLASSES)
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
    seg = check_seg(tmp_path / "out" / "ct_seg.dcm", series, label_map, classes)
    assert seg.SeriesDescription == "organdetr organ segmentation"
