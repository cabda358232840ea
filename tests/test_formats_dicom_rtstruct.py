"""`predict --format rtstruct`: the RT Structure Set read back with pydicom and rasterised independently
(contour points -> voxel indices through the volume's own geometry from SimpleITK, pixel centres inside the
polygons, even-odd rule); and dciodvfy (dicom3tools) on the SEG, SR and RT-STRUCT of the real CT series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import slicerio
from matplotlib.path import Path as Polygon
from scipy import ndimage
from typer.testing import CliRunner

from _cache_factory import save_random_checkpoint
from _dicom_factory import write_ct_series
from organdetr.cli import app
from organdetr.core.boxes.raster import box_voxel_slices
from organdetr.core.colours import label_colour
from organdetr.core.geometry import Geometry
from organdetr.formats.dicom_out import write_dicom_outputs
from organdetr.formats.organ_codes import organ_code
from organdetr.io.images import read_image
from organdetr.runtime.errors import InputError

CLASSES = {
    1: "liver",
    2: "kidney_right",
    3: "kidney_left",
    4: "urinary_bladder",
    5: "aorta",
    6: "inferior_vena_cava",
}
runner = CliRunner()


def rasterise(rtstruct: pydicom.Dataset, geometry: Geometry, series: Path) -> dict[str, np.ndarray]:
    """Every ROI's contours as a voxel mask ``[I, J, K]`` (by ROI name): each contour mapped to voxel
    indices with ``geometry``; its points must lie on one slice plane (integer k), the slice its
    ContourImageSequence names; pixel centres inside it are toggled (nested contours = holes)."""
    position_k = {}
    for path in series.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index = geometry.world_to_index(np.asarray(ds.ImagePositionPatient, dtype=np.float64))
        position_k[ds.SOPInstanceUID] = int(round(index[2]))
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    centres = np.stack(np.meshgrid(*(np.arange(n) for n in geometry.size[:2]), indexing="ij"), -1).reshape(
        -1, 2
    )
    masks = {}
    for roi in rtstruct.ROIContourSequence:
        mask = np.zeros(geometry.size, bool)
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            ijk = geometry.world_to_index(points)
            k = position_k[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose(ijk[:, 2], k, atol=1e-3)  # on the plane of the slice it names
            inside = Polygon(ijk[:, :2]).contains_points(centres).reshape(geometry.size[:2])
            mask[:, :, k] ^= inside
        masks[names[int(roi.ReferencedROINumber)]] = mask
    return masks


def _prediction(series: Path, detections: list[dict]) -> dict:
    return {"case_id": "ct", "image": str(series), "detections": detections, "warnings": []}


def _detection(label_id: int, box_voxel, score: float = 0.8) -> dict:
    box = [float(v) for v in box_voxel]
    return {
        "label": CLASSES[label_id],
        "label_id": label_id,
        "score": score,
        "box_voxel": box,
        "box_mm": box,  # the RT Structure Set draws box_voxel; box_mm only goes into the SR
        "size_mm": [h - lo for lo, h in zip(box[:3], box[3:], strict=True)],
    }


def test_box_contours_rasterise_to_the_boxes(tmp_path):
    """Box model: one rectangle per slice the box covers, on the voxel edges; rasterised, exactly the box's
    voxels on every slice (overlapping boxes each whole); codes, colour, score, references."""
    series, _ = write_ct_series(tmp_path / "ct", size=(24, 20, 6))
    geometry = read_image(series).geometry
    detections = [
        _detection(1, (1.6, 2.2, 0.4, 15.3, 14.9, 5.7), 0.93),
        _detection(3, (10, 5, 1, 22, 12, 4), 0.41),
        _detection(2, (4, 4, 2, 8, 8, 3), 0.2),  # inside the liver's box
    ]
    written = write_dicom_outputs(
        _prediction(series, detections), geometry, tmp_path / "out", objects=("rtstruct",)
    )
    rt = pydicom.dcmread(tmp_path / "out" / written["rtstruct"]["file"])
    assert rt.Modality == "RTSTRUCT" and rt.SeriesDate and int(rt.SeriesNumber) % 10 == 3
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.iterdir()}
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == rt.FrameOfReferenceUID
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence} == sources
    masks = rasterise(rt, geometry, series)
    for det in detections:
        code = organ_code(det["label"])
        expected = np.zeros(geometry.size, bool)
        expected[box_voxel_slices(det["box_voxel"], geometry.size)] = True
        np.testing.assert_array_equal(masks[code.display_name], expected, err_msg=det["label"])
    rois = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    for roi, contour, observation in zip(
        rois.values(), rt.ROIContourSequence, rt.RTROIObservationsSequence, strict=True
    ):
        det = next(d for d in detections if organ_code(d["label"]).display_name == roi.ROIName)
        code = organ_code(det["label"])
        assert f"score {det['score']:.3f}" in roi.ROIDescription
        assert list(contour.ROIDisplayColor) == [round(255 * c) for c in label_colour(det["label_id"])]
        identification = observation.RTROIIdentificationCodeSequence[0]
        assert identification.CodeValue == code.property_type.value
        if code.laterality is not None:  # kidneys: Right / Left inside the code item
            modifier = identification.SegmentedPropertyTypeModifierCodeSequence[0]
            assert modifier.CodeValue == code.laterality.value
        assert observation.RTROIInterpretedType == "ORGAN"
        assert all(len(c.ContourData) == 12 for c in contour.ContourSequence)  # 4 corners per slice


def test_mask_contours_on_an_oblique_series(tmp_path):
    """Segmenting model on an oblique series (tilted 36.9 deg about the column axis): the contours of an
    L-shaped organ and a ring (with its hole) rasterise back to the masks within one voxel on every slice,
    with the points on each referenced slice's plane (placed from that slice's own position and
    orientation; the volume's geometry, read by SimpleITK, maps them back)."""
    series, _ = write_ct_series(tmp_path / "ct", size=(24, 20, 5), orientation=(0.8, 0, 0.6, 0, 1, 0))
    geometry = read_image(series).geometry
    assert abs(geometry.direction_matrix[2, 0] - 0.6) < 1e-6  # SimpleITK sees the oblique series
    label_map = np.zeros(geometry.size, np.uint8)
    label_map[2:12, 2:6, 0:4] = 1
    label_map[2:6, 6:16, 0:4] = 1  # an L
    label_map[14:22, 6:16, 1:5] = 5
    label_map[16:20, 9:13, 1:5] = 0  # a ring: the aorta's wall with its lumen cut out
    label_map[3, 18, 2] = 1  # a one-voxel island
    detections = [_detection(1, (2, 2, 0, 12, 19, 4), 0.7), _detection(5, (14, 6, 1, 22, 16, 5), 0.6)]
    written = write_dicom_outputs(
        _prediction(series, detections), geometry, tmp_path / "out", seg=label_map, objects=("rtstruct",)
    )
    rt = pydicom.dcmread(tmp_path / "out" / written["rtstruct"]["file"])
    masks = rasterise(rt, geometry, series)
    assert sorted(masks) == ["Aorta", "Liver"]
    for name, label_id in (("Liver", 1), ("Aorta", 5)):
        expected = label_map == label_id
        differ = masks[name] ^ expected
        for k in range(geometry.size[2]):  # within one voxel: only where the mask's edge is
            edge = ndimage.binary_dilation(expected[:, :, k]) & ~ndimage.binary_erosion(expected[:, :, k])
            assert not np.any(differ[:, :, k] & ~edge), (name, k)
        assert differ.sum() == 0  # and in fact exactly, for these shapes
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    (aorta,) = [c for c in rt.ROIContourSequence if names[int(c.ReferencedROINumber)] == "Aorta"]
    assert len(aorta.ContourSequence) == 2 * 4  # outer wall + lumen on each of its 4 slices


def test_rtstruct_refuses_input_that_is_not_dicom(tmp_path):
    from organdetr.io.images import write_image

    run = save_random_checkpoint(tmp_path / "run", {1: "liver"}, (32, 32, 32))
    nifti = tmp_path / "scan.nii.gz"
    write_image(
        nifti,
        np.zeros((8, 8, 4), np.int16),
        Geometry((8, 8, 4), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    )
    args = ["predict", str(run), str(nifti), "-o", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    result = runner.invoke(app, [*args, "--no-overlay", "--format", "rtstruct"])
    assert isinstance(result.exception, InputError) and "not DICOM" in str(result.exception)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- dciodvfy on the real CT

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_problems(path: Path) -> list[str]:
    """dciodvfy's lines that fail the check: any Error, any attribute 'not present in standard DICOM IOD'
    (a Standard Extended SOP Class). Other warnings (the source's retired PN form, the private coding
    scheme of codes that SNOMED CT lacks) are allowed."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [
        line for line in lines if re.match(r"\s*Error", line) or "not present in standard DICOM IOD" in line
    ]


@pytest.fixture(scope="module")
def real_outputs(tmp_path_factory, shared_data) -> tuple[Path, dict]:
    """SEG + SR + RT-STRUCT (+ Slicer files) of the real 3-slice CT, from `organdetr predict`."""
    root = tmp_path_factory.mktemp("real")
    run = save_random_checkpoint(root / "run", CLASSES, (32, 32, 32))
    out = root / "out"
    args = ["predict", str(run), str(shared_data / "dcmqi" / "ct-3slice"), "-o", str(out), "--device", "cpu"]
    options = ["--no-progress", "--no-overlay", "--dicom-out", "--format", "rtstruct", "--format", "slicer"]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "ct-3slice.json").read_text())


@pytest.mark.shared_data
@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian: apt-get install dicom3tools)")
@pytest.mark.parametrize("kind", ["seg", "sr", "rtstruct"])
def test_dciodvfy_finds_no_error_and_no_extension(real_outputs, kind):
    out, prediction = real_outputs
    path = out / prediction["dicom"][kind]["file"]
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    assert any(
        iod in result.stdout + result.stderr
        for iod in ("Segmentation", "Comprehensive3DSR", "RTStructureSet")
    )
    assert dciodvfy_problems(path) == []


@pytest.mark.shared_data
def test_one_colour_and_one_name_per_organ_in_every_output(real_outputs):
    """SEG (CIELab), RT-STRUCT (RGB), Slicer segmentation and markups, all from label_colour: the same
    colour for every organ (urinary bladder, aorta and IVC differed before); the Slicer segments carry the
    SEG's SNOMED CT codes as terminology."""
    out, prediction = real_outputs
    expected = {
        d["label"]: [round(255 * c) for c in label_colour(d["label_id"])] for d in prediction["detections"]
    }
    assert {"urinary_bladder", "aorta", "inferior_vena_cava"} <= set(expected)
    seg = hd.seg.segread(str(out / "ct-3slice_seg.dcm"))
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        name = str(description.tracking_id).split(" (label ")[0]
        lab = hd.color.CIELabColor.from_rgb(*expected[name]).value
        assert list(description.RecommendedDisplayCIELabValue) == list(lab), name
    rt = pydicom.dcmread(out / "ct-3slice_rtstruct.dcm")
    by_roi_name = {organ_code(name).display_name: rgb for name, rgb in expected.items()}
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    for contour in rt.ROIContourSequence:
        assert list(contour.ROIDisplayColor) == by_roi_name[names[int(contour.ReferencedROINumber)]]
    segmentation = slicerio.read_segmentation(str(out / "ct-3slice.seg.nrrd"), skip_voxels=True)
    for segment in segmentation["segments"]:
        organ = segment["name"].removesuffix(" box")
        assert [round(255 * c) for c in segment["color"]] == expected[organ]
        code = organ_code(organ)
        assert segment["terminology"]["type"] == [
            code.property_type.scheme_designator,
            code.property_type.value,
            code.property_type.meaning,
        ]
        if code.laterality is not None:
            assert segment["terminology"]["typeModifier"][1] == code.laterality.value
