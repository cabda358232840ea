"""MONAI datalists (formats.monai_datalist writes, datasets.monai_datalist reads, core.boxes.modes converts):
round-tripped through MONAI's own loaders and box_utils."""

from __future__ import annotations

import json

import numpy as np
import pytest

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.modes import BOX_MODES, from_mode, lps_to_ras, to_mode
from organdetr.core.geometry import Geometry
from organdetr.datasets.monai_datalist import convert, read_datalist
from organdetr.datasets.nnunet import load_dataset
from organdetr.formats.monai_datalist import datalist_document, write_datalist
from organdetr.io.images import read_label_map, write_image
from organdetr.runtime.errors import InputError

monai = pytest.importorskip("monai")
from monai.data import box_utils, load_decathlon_datalist  # noqa: E402

# RAS-stored scan (NIfTI's usual orientation) with three organs; the kidney's box lies inside the liver's
GEOMETRY = Geometry((40, 36, 20), (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
NAMES = {5: "liver", 1: "spleen", 3: "kidney_left"}


def _scan(folder, name="case_a"):
    labels = np.zeros(GEOMETRY.size, np.uint8)
    labels[4:20, 5:25, 2:12] = 5
    labels[22:30, 8:16, 6:14] = 1
    labels[10:14, 10:14, 10:18] = 3
    image = np.where(labels > 0, 60, -100).astype(np.int16)
    write_image(folder / f"{name}.nii.gz", image, GEOMETRY)
    write_image(folder / f"{name}_label.nii.gz", labels, GEOMETRY)
    return folder / f"{name}.nii.gz", labels


def _prediction(image, labels) -> dict:
    boxes = boxes_from_labels(labels, GEOMETRY, NAMES)
    detections = [
        {"label": b.name, "label_id": b.label_id, "score": 0.5 + 0.1 * n, "box_voxel": b.box_voxel.tolist(),
         "box_mm": b.box_mm.tolist()}
        for n, b in enumerate(boxes)
    ]  # fmt: skip
    return {"case_id": "case_a", "image": str(image), "detections": detections}


def test_modes_match_monai_box_utils():
    rng = np.random.default_rng(0)
    lo = rng.uniform(-50, 50, (7, 3))
    corners = np.concatenate([lo, lo + rng.uniform(1, 30, (7, 3))], axis=1)
    for mode in BOX_MODES:
        expected = box_utils.convert_box_mode(corners, src_mode="xyzxyz", dst_mode=mode)
        np.testing.assert_allclose(to_mode(corners, mode), expected)
        np.testing.assert_allclose(from_mode(expected, mode), corners, rtol=0, atol=1e-4)  # MONAI: float32
    np.testing.assert_allclose(lps_to_ras(lps_to_ras(corners)), corners)


def test_image_boxes_equal_monai_mask_to_box(tmp_path):
    """MONAI loads our datalist and its own mask->box on the label map gives the same image boxes."""
    from monai.apps.detection.transforms.box_ops import convert_mask_to_box
    from monai.transforms import LoadImage

    image, labels = _scan(tmp_path)
    prediction = _prediction(image, labels)
    path = write_datalist(tmp_path / "dl.json", [prediction], box_mode="cccwhd", coordinates="image")
    (item,) = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="validation")
    boxes = box_utils.convert_box_mode(np.asarray(item["box"]), src_mode="cccwhd", dst_mode="xyzxyz")
    label_array = np.asarray(LoadImage(image_only=True)(str(tmp_path / "case_a_label.nii.gz")))
    masks = np.stack(
        [np.where(label_array == d["label_id"], d["label_id"] - 1, -1) for d in prediction["detections"]]
    )
    monai_boxes, monai_labels = convert_mask_to_box(masks.astype(np.int16), bg_label=-1)
    np.testing.assert_allclose(boxes, monai_boxes, atol=1e-4)
    assert item["label"] == monai_labels.tolist() == [d["label_id"] - 1 for d in prediction["detections"]]


def test_world_boxes_through_monai_affine(tmp_path):
    """MONAI's own world -> image transform maps our LPS world boxes onto our voxel boxes (its voxel centres
    at integer indices put them half a voxel below the mask-derived boxes: documented convention)."""
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToImageCoordinated,
        ConvertBoxToStandardModed,
    )
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    image, labels = _scan(tmp_path)
    prediction = _prediction(image, labels)
    path = write_datalist(tmp_path / "dl.json", [prediction], box_mode="cccwhd", coordinates="world")
    (item,) = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="validation")
    pipeline = Compose([
        LoadImaged(keys="image", image_only=False, meta_key_postfix="meta_dict"),
        EnsureChannelFirstd(keys="image"),
        ConvertBoxToStandardModed(box_keys="box", mode="cccwhd"),
        AffineBoxToImageCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
    ])  # fmt: skip
    out = pipeline({"image": item["image"], "box": np.asarray(item["box"], dtype=np.float32)})
    voxel = np.asarray([d["box_voxel"] for d in prediction["detections"]])
    np.testing.assert_allclose(np.asarray(out["box"]), voxel - 0.5, atol=1e-3)


def test_document_metadata_and_ras(tmp_path):
    image, labels = _scan(tmp_path)
    prediction = _prediction(image, labels)
    doc = datalist_document([prediction], box_mode="xyzxyz", coordinates="world-ras")
    assert doc["labels"] == {"0": "spleen", "2": "kidney_left", "4": "liver"}
    assert doc["world_frame"] == "RAS" and doc["validation"][0]["score"] == [0.5, 0.6, 0.7]
    ras = np.asarray(doc["validation"][0]["box"])
    mm = np.asarray([d["box_mm"] for d in prediction["detections"]])
    np.testing.assert_allclose(ras[:, [0, 1, 3, 4]], -mm[:, [3, 4, 0, 1]], atol=1e-3)


@pytest.mark.parametrize("coordinates", ["world", "image"])
def test_convert_datalist_to_nnunet_round_trip(tmp_path, coordinates):
    """A datalist in MONAI's LUNA16 shape (written with MONAI's box_utils) -> nnU-Net with box label maps
    whose boxes are the original ones."""
    image, labels = _scan(tmp_path)
    truth = boxes_from_labels(labels, GEOMETRY, NAMES)
    corners = np.asarray([b.box_voxel if coordinates == "image" else b.box_mm for b in truth])
    datalist = {
        "training": [{"image": image.name, "box": box_utils.convert_box_mode(corners, src_mode="xyzxyz",
                      dst_mode="cccwhd").tolist(), "label": [b.label_id - 1 for b in truth]}],
        "validation": [{"image": _scan(tmp_path, "case_b")[0].name}],  # no boxes: a test image
    }  # fmt: skip
    (tmp_path / "dl.json").write_text(json.dumps(datalist))
    names = ["spleen", "x1", "kidney_left", "x3", "liver"]
    summary = convert(tmp_path / "dl.json", tmp_path / "Dataset900_M", coordinates=coordinates,
                      label_names=names, progress=False)  # fmt: skip
    assert summary.failed == [] and summary.num_training == 1 and summary.num_test == 1
    dataset = load_dataset(tmp_path / "Dataset900_M")
    assert dataset.classes == {1: "spleen", 2: "x1", 3: "kidney_left", 4: "x3", 5: "liver"}
    label_map = read_label_map(tmp_path / "Dataset900_M" / "labelsTr" / "case_a.nii.gz")
    got = {b.label_id: b.box_voxel for b in boxes_from_labels(label_map.array, label_map.geometry, None)}
    for b in truth:  # the kidney's box sits inside the liver's: the liver keeps its box extent anyway
        np.testing.assert_array_equal(got[b.label_id], b.box_voxel)


def test_bad_datalists_name_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz", "box": [[0, 0, 0, 1, 1]], "label": [0]}]}))
    with pytest.raises(InputError, match="bad.json: training\\[0\\]"):
        read_datalist(path)
    path.write_text(
        json.dumps({"training": [{"image": "a.nii.gz", "box": [[0, 0, 0, 1, 1, 1]], "label": []}]})
    )
    with pytest.raises(InputError, match="1 boxes but 0 labels"):
        read_datalist(path)
    path.write_text(json.dumps({"testing": []}))
    with pytest.raises(InputError, match="no list named"):
        read_datalist(path)
    with pytest.raises(InputError, match="box mode 'ccc' is not one of"):
        read_datalist(path, keys=["testing"], box_mode="ccc")


def test_cli_convert_monai_datalist_with_base_dir(tmp_path):
    from typer.testing import CliRunner

    from organdetr.cli import app

    images = tmp_path / "images"
    images.mkdir()
    image, labels = _scan(images)
    truth = boxes_from_labels(labels, GEOMETRY, NAMES)
    item = {
        "image": image.name,
        "box": [b.box_voxel.tolist() for b in truth],
        "label": [b.label_id - 1 for b in truth],
    }
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "fold0.json").write_text(json.dumps({"training": [item]}))
    args = ["convert", "monai-datalist", str(tmp_path / "lists" / "fold0.json"), str(tmp_path / "D")]
    args += ["--base-dir", str(images), "--box-mode", "xyzxyz", "--coordinates", "image"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_dataset(tmp_path / "D").classes[5] == "class_4"
