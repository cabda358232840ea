"""Dataset converters: tiny fake trees of each published layout -> nnU-Net v2 raw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.core.geometry import Geometry
from organdetr.datasets import FORMATS, get_converter
from organdetr.datasets.conversion import dense_class_map
from organdetr.datasets.labels import load_class_map
from organdetr.datasets.nnunet import load_dataset
from organdetr.datasets.source import SourceCase, select_cases
from organdetr.datasets.source_checks import SourceMismatchError, check_is_image
from organdetr.io.images import read_image, write_image
from organdetr.runtime.errors import InputError

SIZE = (6, 5, 4)
# a non-trivial geometry (flipped axes, anisotropic spacing, offset origin) that must survive conversion
GEOMETRY = Geometry(SIZE, (0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
OTHER_GEOMETRY = Geometry(SIZE, (0.8, 0.9, 3.0), (-10.0, 20.0, 30.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))


def fake_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, SIZE).astype(np.int16)


def fake_label(ids: list[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice([0, *ids], SIZE).astype(np.uint8)


def put(path: Path, array: np.ndarray, geometry: Geometry = GEOMETRY) -> np.ndarray:
    write_image(path, array, geometry)
    return array


def assert_case(dst: Path, case_id: str, image: np.ndarray, label: np.ndarray | None, split: str = "Tr"):
    out_image = read_image(dst / f"images{split}" / f"{case_id}_0000.nii.gz")
    np.testing.assert_array_equal(out_image.array, image)
    assert out_image.geometry.size == GEOMETRY.size
    np.testing.assert_allclose(out_image.geometry.spacing, GEOMETRY.spacing, atol=1e-6)
    np.testing.assert_allclose(out_image.geometry.origin, GEOMETRY.origin, atol=1e-5)
    np.testing.assert_allclose(out_image.geometry.direction, GEOMETRY.direction, atol=1e-6)
    label_file = dst / f"labels{split}" / f"{case_id}.nii.gz"
    if label is None:
        assert not label_file.exists()
        return
    out_label = read_image(label_file)
    assert out_label.array.dtype == np.uint8
    np.testing.assert_array_equal(out_label.array, label)
    assert out_label.geometry == out_image.geometry


def dataset_json(dst: Path) -> dict:
    return json.loads((dst / "dataset.json").read_text())


def test_abdomenct1k(tmp_path):
    src, dst = tmp_path / "AbdomenCT-1K", tmp_path / "out"
    img1 = put(src / "AbdomenCT-1K-ImagePart1" / "Case_00001_0000.nii.gz", fake_image(1))
    img2 = put(src / "AbdomenCT-1K-ImagePart2" / "Case_00002_0000.nii.gz", fake_image(2))
    img3 = put(src / "AbdomenCT-1K-ImagePart2" / "Case_00003_0000.nii.gz", fake_image(3))
    lab1 = put(src / "Mask" / "Case_00001.nii.gz", fake_label([1, 2, 3, 4], 1))
    lab2 = put(src / "Mask" / "Case_00002.nii.gz", fake_label([1, 4], 2))
    summary = get_converter("abdomenct1k")(src, dst, progress=False)
    assert sorted(summary.done) == ["Case_00001", "Case_00002", "Case_00003"] and not summary.failed
    assert_case(dst, "Case_00001", img1, lab1)
    assert_case(dst, "Case_00002", img2, lab2)
    assert_case(dst, "Case_00003", img3, None, split="Ts")  # no mask -> test image
    meta = dataset_json(dst)
    assert meta["labels"] == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert meta["label_set"] == "organs4" and "both kidneys" in meta["label_set_description"]
    assert "JunMa11/AbdomenCT-1K" in meta["class_source"]
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    dataset = load_dataset(dst)
    assert len(dataset.cases) == 2 and len(dataset.test_cases) == 1


def test_word_keeps_official_split(tmp_path):
    root, dst = tmp_path / "WORD-V0.1.0", tmp_path / "out"
    ids = list(range(1, 17))
    data = {}
    for folder, case_id in (("Tr", "word_0001"), ("Val", "word_0101"), ("Ts", "word_0121")):
        data[case_id] = (
            put(root / f"images{folder}" / f"{case_id}.nii.gz", fake_image(len(data))),
            put(root / f"labels{folder}" / f"{case_id}.nii.gz", fake_label(ids, len(data))),
        )
    summary = get_converter("word")(tmp_path, dst, progress=False)  # finds WORD-V0.1.0 below SRC
    assert len(summary.done) == 3
    assert_case(dst, "word_0001", *data["word_0001"])
    assert_case(dst, "word_0101", *data["word_0101"])
    assert_case(dst, "word_0121", *data["word_0121"], split="Ts")
    meta = dataset_json(dst)
    assert meta["official_split"] == {"train": ["word_0001"], "val": ["word_0101"], "test": ["word_0121"]}
    assert meta["labels"]["kidney_left"] == 3 and meta["labels"]["head_of_femur_right"] == 16
    assert meta["numTraining"] == 2


def write_amos(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    published = ["spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
                 "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
                 "bladder", "prostate/uterus"]  # fmt: skip
    labels = {"0": "background"} | {str(i): n for i, n in enumerate(published, start=1)}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "AMOS", "labels": labels}))
    data = {}
    for folder, case_id in (("Tr", "amos_0001"), ("Va", "amos_0008"), ("Tr", "amos_0507")):
        data[case_id] = (
            put(root / f"images{folder}" / f"{case_id}.nii.gz", fake_image(len(data))),
            put(root / f"labels{folder}" / f"{case_id}.nii.gz", fake_label(list(range(1, 16)), len(data))),
        )
    put(root / "imagesTs" / "amos_0002.nii.gz", fake_image(9))
    return data


def test_amos_converts_ct_only_by_default(tmp_path):
    data = write_amos(tmp_path / "amos22")
    dst = tmp_path / "ct"
    summary = get_converter("amos")(tmp_path, dst, progress=False)
    assert sorted(summary.done) == ["amos_0001", "amos_0002", "amos_0008"]
    assert_case(dst, "amos_0001", *data["amos_0001"])
    assert_case(dst, "amos_0008", *data["amos_0008"])
    assert_case(dst, "amos_0002", fake_image(9), None, split="Ts")
    meta = dataset_json(dst)
    assert meta["labels"]["aorta"] == 8 and meta["labels"]["inferior_vena_cava"] == 9  # "arota" -> ours
    assert meta["channel_names"] == {"0": "CT"}

    mr = get_converter("amos")(tmp_path, tmp_path / "mr", modality="mr", progress=False)
    assert mr.done == ["amos_0507"] and dataset_json(tmp_path / "mr")["channel_names"] == {"0": "MR"}


def test_amos_uses_the_datasets_own_labels_when_they_differ(tmp_path):
    write_amos(tmp_path / "amos22")
    meta = json.loads((tmp_path / "amos22" / "dataset.json").read_text())
    meta["labels"]["15"] = "Prostate Or Uterus"
    (tmp_path / "amos22" / "dataset.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="differ"):
        get_converter("amos")(tmp_path, tmp_path / "out", subset=["amos_0001"], progress=False)
    assert dataset_json(tmp_path / "out")["labels"]["prostate_or_uterus"] == 15


def test_verse(tmp_path):
    src, dst = tmp_path / "verse20", tmp_path / "out"
    img = put(
        src / "dataset-01training" / "rawdata" / "sub-gl003" / "sub-gl003_dir-ax_ct.nii.gz", fake_image(1)
    )
    lab = put(
        src / "dataset-01training" / "derivatives" / "sub-gl003" / "sub-gl003_dir-ax_seg-vert_msk.nii.gz",
        fake_label([19, 20, 28], 1),
    )
    img2 = put(
        src / "dataset-02validation" / "rawdata" / "sub-verse004" / "sub-verse004_ct.nii.gz", fake_image(2)
    )
    lab2 = put(
        src / "dataset-02validation" / "derivatives" / "sub-verse004" / "sub-verse004_seg-vert_msk.nii.gz",
        fake_label([1, 7, 26, 27], 2),
    )
    summary = get_converter("verse")(src, dst, progress=False)
    assert sorted(summary.done) == ["sub-gl003_dir-ax", "sub-verse004"]
    assert_case(dst, "sub-gl003_dir-ax", img, lab)
    assert_case(dst, "sub-verse004", img2, lab2)
    meta = dataset_json(dst)
    assert meta["labels"]["vertebrae_T13"] == 28 and meta["labels"]["sacrum"] == 26
    assert meta["official_split"] == {
        "sub-gl003_dir-ax": "dataset-01training",
        "sub-verse004": "dataset-02validation",
    }


def write_totalseg_subject(
    src: Path, subject: str, masks: dict[str, np.ndarray], seed: int = 0
) -> np.ndarray:
    image = put(src / subject / "ct.nii.gz", fake_image(seed))
    for name, mask in masks.items():
        put(src / subject / "segmentations" / f"{name}.nii.gz", mask.astype(np.uint8))
    return image


def test_totalsegmentator_merge_overlap_and_splits(tmp_path):
    src, dst = tmp_path / "ts", tmp_path / "out"
    spleen = np.zeros(SIZE, bool)
    spleen[:3] = True
    liver = np.zeros(SIZE, bool)
    liver[2:5] = True  # overlaps the spleen on i == 2
    image = write_totalseg_subject(src, "s0001", {"spleen": spleen, "liver": liver, "aorta": np.zeros(SIZE)})
    test_image = write_totalseg_subject(src, "s0002", {"liver": liver}, seed=2)
    (src / "meta.csv").write_text("image_id;age;split\ns0001;60;train\ns0002;70;test\n")
    summary = get_converter("totalsegmentator")(src, dst, progress=False)
    assert sorted(summary.done) == ["s0001", "s0002"] and not summary.failed
    expected = np.zeros(SIZE, np.uint8)
    expected[:2] = 1  # spleen (id 1)
    expected[2:5] = 5  # liver (id 5) wins the overlap: higher id
    assert_case(dst, "s0001", image, expected)
    assert_case(dst, "s0002", test_image, np.where(liver, 5, 0), split="Ts")
    meta = dataset_json(dst)
    assert len(meta["labels"]) == 118 and "higher id wins" in meta["overlap_rule"]
    assert (meta["numTraining"], meta["numTest"]) == (1, 1)


def test_totalsegmentator_mr_variant(tmp_path):
    src, dst = tmp_path / "ts_mr", tmp_path / "out"
    image = put(src / "s0001" / "mri.nii.gz", fake_image(4))
    vertebrae = np.zeros(SIZE, np.uint8)
    vertebrae[:, :, 1:3] = 1
    put(src / "s0001" / "segmentations" / "vertebrae.nii.gz", vertebrae)
    write_totalseg_subject(src, "ct_only", {})  # a CT subject has no mri.nii.gz: not a case here
    summary = get_converter("totalsegmentator_mr")(src, dst, progress=False)
    assert summary.done == ["s0001"]
    assert_case(dst, "s0001", image, vertebrae * 19)  # vertebrae = 19 in total_mr
    meta = dataset_json(dst)
    assert meta["channel_names"] == {"0": "MR"} and len(meta["labels"]) == 51


def test_totalsegmentator_bad_masks_fail_their_case_only(tmp_path):
    src, dst = tmp_path / "ts", tmp_path / "out"
    good = write_totalseg_subject(src, "s0001", {"liver": np.ones(SIZE)})
    write_totalseg_subject(src, "s0002", {"not_a_structure": np.ones(SIZE)})
    write_totalseg_subject(src, "s0003", {})
    put(src / "s0003" / "segmentations" / "liver.nii.gz", np.ones(SIZE, np.uint8), OTHER_GEOMETRY)
    summary = get_converter("totalsegmentator")(src, dst, progress=False)
    assert summary.done == ["s0001"]
    failed = dict(summary.failed)
    assert failed["s0002"].startswith(str(src / "s0002" / "segmentations" / "not_a_structure.nii.gz"))
    assert "is not in the TotalSegmentator v2 class map" in failed["s0002"]
    assert failed["s0003"].startswith(str(src / "s0003" / "segmentations" / "liver.nii.gz"))
    assert "geometry differs" in failed["s0003"] and "spacing" in failed["s0003"]
    assert_case(dst, "s0001", good, np.full(SIZE, 5))
    assert not (dst / "imagesTr" / "s0002_0000.nii.gz").exists()
    assert load_dataset(dst).cases[0].case_id == "s0001"


def make_word(root: Path, n: int, ids=(1, 2, 3)) -> None:
    for i in range(1, n + 1):
        put(root / "imagesTr" / f"word_{i:04d}.nii.gz", fake_image(i))
        put(root / "labelsTr" / f"word_{i:04d}.nii.gz", fake_label(list(ids), i))


def test_bad_cases_are_listed_and_others_converted(tmp_path):
    root, dst = tmp_path / "WORD", tmp_path / "out"
    make_word(root, 5)
    put(root / "labelsTr" / "word_0002.nii.gz", fake_label([1]), OTHER_GEOMETRY)  # grid mismatch
    put(root / "labelsTr" / "word_0003.nii.gz", fake_label([1, 40]))  # id outside the class map
    (root / "imagesTr" / "word_0004.nii.gz").write_bytes(b"not a nifti")  # corrupt image
    (root / "labelsTr" / "word_0005.nii.gz").unlink()  # missing label
    summary = get_converter("word")(root, dst, progress=False)
    assert summary.done == ["word_0001"]
    failed = dict(summary.failed)
    assert sorted(failed) == ["word_0002", "word_0003", "word_0004", "word_0005"]
    assert failed["word_0002"].startswith(str(root / "labelsTr" / "word_0002.nii.gz"))
    assert "label ids [40] are not in the word class map" in failed["word_0003"]
    assert failed["word_0004"].startswith(str(root / "imagesTr" / "word_0004.nii.gz"))
    assert failed["word_0005"].startswith(str(root / "labelsTr" / "word_0005.nii.gz"))
    assert all("\n" not in message for message in failed.values())
    assert sorted(p.name for p in (dst / "imagesTr").iterdir()) == ["word_0001_0000.nii.gz"]
    assert sorted(p.name for p in (dst / "labelsTr").iterdir()) == ["word_0001.nii.gz"]
    assert dataset_json(dst)["numTraining"] == 1


def test_resume_skips_done_cases_and_limit_subset(tmp_path):
    root, dst = tmp_path / "WORD", tmp_path / "out"
    make_word(root, 3)
    first = get_converter("word")(root, dst, limit=2, progress=False)
    assert first.done == ["word_0001", "word_0002"] and dataset_json(dst)["numTraining"] == 2
    stamp = (dst / "imagesTr" / "word_0001_0000.nii.gz").stat().st_mtime_ns
    second = get_converter("word")(root, dst, progress=False)
    assert second.skipped == ["word_0001", "word_0002"] and second.done == ["word_0003"]
    assert (dst / "imagesTr" / "word_0001_0000.nii.gz").stat().st_mtime_ns == stamp
    assert dataset_json(dst)["numTraining"] == 3
    # a partial subset run keeps counting every complete case on disk
    third = get_converter("word")(root, dst, subset=["word_0003"], resume=False, progress=False)
    assert third.done == ["word_0003"] and dataset_json(dst)["numTraining"] == 3
    assert len(load_dataset(dst).cases) == 3


def test_parallel_workers_and_float_labels(tmp_path):
    root, dst = tmp_path / "WORD", tmp_path / "out"
    make_word(root, 3)
    float_label = put(root / "labelsTr" / "word_0002.nii.gz", fake_label([1, 2], 2).astype(np.float32))
    put(root / "labelsTr" / "word_0003.nii.gz", np.full(SIZE, 0.5, np.float32))
    summary = get_converter("word")(root, dst, workers=2, progress=False)
    assert sorted(summary.done) == ["word_0001", "word_0002"]
    [(case_id, message)] = summary.failed
    assert case_id == "word_0003"
    assert message.startswith(f"{root / 'labelsTr' / 'word_0003.nii.gz'}: label map holds non-integer values")
    assert "0.5..0.5" in message
    assert_case(dst, "word_0002", fake_image(2), float_label.astype(np.uint8))


def test_class_subset_is_remapped_dense(tmp_path):
    root, dst = tmp_path / "WORD", tmp_path / "out"
    make_word(root, 1, ids=(1, 3, 8))
    get_converter("word")(root, dst, keep_classes=["pancreas", "kidney_left"], progress=False)
    meta = dataset_json(dst)
    assert meta["labels"] == {"background": 0, "kidney_left": 1, "pancreas": 2}
    assert meta["official_label_ids"] == {"1": 3, "2": 8}
    source = fake_label([1, 3, 8], 1)
    out = read_image(dst / "labelsTr" / "word_0001.nii.gz").array
    np.testing.assert_array_equal(out, np.select([source == 3, source == 8], [1, 2], 0))
    # resuming into that folder with another class list is refused
    with pytest.raises(InputError, match="other labels"):
        get_converter("word")(root, dst, progress=False)


def test_helpers_validate_options():
    cases = [SourceCase(f"c{i}", Path(f"c{i}.nii.gz"), None) for i in range(4)]
    assert [c.case_id for c in select_cases(cases, ["c3", "c1"], limit=1)] == ["c1"]
    with pytest.raises(InputError, match="unknown case ids: zz"):
        select_cases(cases, ["zz"])
    with pytest.raises(InputError, match="unknown class names"):
        dense_class_map({1: "liver"}, ["lung"])
    out, lut = dense_class_map({2: "a", 5: "b"})
    assert out == {1: "a", 2: "b"} and lut.tolist() == [0, 0, 1, 0, 0, 2]
    with pytest.raises(InputError, match="source folder not found"):
        get_converter("verse")("/nonexistent/verse", "/tmp/never", progress=False)


def test_cli_convert(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["convert", "--help"])
    assert result.exit_code == 0
    assert all(fmt in result.output for fmt in FORMATS)
    root, dst = tmp_path / "WORD", tmp_path / "out"
    make_word(root, 2)
    result = runner.invoke(app, ["convert", "word", str(root), str(dst)])
    assert result.exit_code == 0, result.output
    assert dataset_json(dst)["numTraining"] == 2
    (root / "labelsTr" / "word_0002.nii.gz").unlink()
    result = runner.invoke(app, ["convert", "word", str(root), str(tmp_path / "out2")])
    assert result.exit_code == 1 and "word_0002" in result.output


@pytest.mark.shared_data
def test_real_totalsegmentator_subject_matches_the_multilabel_file(shared_data, tmp_path):
    """example_ct_sm + example_seg_fast/ form one TotalSegmentator subject; merged == example_seg_fast."""
    ts = shared_data / "totalsegmentator"
    subject = tmp_path / "src" / "s0001"
    subject.mkdir(parents=True)
    (subject / "ct.nii.gz").symlink_to(ts / "example_ct_sm.nii.gz")
    (subject / "segmentations").symlink_to(ts / "example_seg_fast", target_is_directory=True)
    dst = tmp_path / "out"
    summary = get_converter("totalsegmentator")(tmp_path / "src", dst, progress=False)
    assert summary.done == ["s0001"] and not summary.failed
    merged = nib.load(dst / "labelsTr" / "s0001.nii.gz")
    reference = nib.load(ts / "example_seg_fast.nii.gz")
    assert merged.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(merged.dataobj), np.asarray(reference.dataobj))
    np.testing.assert_allclose(merged.affine, reference.affine, atol=1e-4)
    image = nib.load(dst / "imagesTr" / "s0001_0000.nii.gz")
    np.testing.assert_array_equal(
        np.asarray(image.dataobj), np.asarray(nib.load(ts / "example_ct_sm.nii.gz").dataobj)
    )
    assert len(np.unique(np.asarray(merged.dataobj))) == 41  # 40 structures + background
    assert load_dataset(dst).classes[117] == "costal_cartilages"


# --- TotalSegmentator releases: v1 (104 classes) and v2 (117), detected from the mask names ----------


def one_slab(k: int) -> np.ndarray:
    mask = np.zeros(SIZE, np.uint8)
    mask[:, :, k] = 1
    return mask


def test_totalsegmentator_v1_tree_converts_with_104_classes_in_the_papers_order(tmp_path):
    src, dst = tmp_path / "ts_v1", tmp_path / "out"
    masks = {"liver": one_slab(0), "heart_myocardium": one_slab(1), "face": one_slab(2)}
    image = write_totalseg_subject(src, "s0001", masks | {"urinary_bladder": one_slab(3)})
    write_totalseg_subject(src, "s0002", {"spleen": one_slab(0)}, seed=2)  # no release-specific name
    (src / "meta.csv").write_text("image_id;age;gender;institute;study_type;split\n"
                                  "s0001;60;m;A;ct;train\ns0002;70;f;B;ct;val\n")  # fmt: skip
    summary = get_converter("totalsegmentator")(src, dst, progress=False)
    assert summary.done == ["s0001", "s0002"] and not summary.failed
    meta = dataset_json(dst)
    v1 = load_class_map("totalsegmentator_v1")
    assert len(v1) == 104 and meta["labels"] == {"background": 0} | {name: i for i, name in v1.items()}
    assert list(meta["labels"])[1:] == list(v1.values())  # TotalSegmentator's own (the paper's) order
    assert (v1[1], v1[7], v1[44], v1[93], v1[104]) == (
        "spleen", "aorta", "heart_myocardium", "face", "urinary_bladder",
    )  # fmt: skip
    assert meta["label_set"] == "v1" and "detected from mask names" in meta["label_set_chosen"]
    assert "951f07b9721404f5a4306236358d1d7cab1e3610" in meta["class_source"]
    expected = np.stack([np.full(SIZE[:2], i, np.uint8) for i in (5, 44, 93, 104)], axis=-1)
    assert_case(dst, "s0001", image, expected)
    assert any("TotalSegmentator v1" in note for note in summary.notes)


def test_totalsegmentator_v2_tree_is_detected_and_keeps_117_classes(tmp_path):
    src, dst = tmp_path / "ts_v2", tmp_path / "out"
    image = write_totalseg_subject(src, "s0001", {"heart": one_slab(1), "skull": one_slab(2)})
    summary = get_converter("totalsegmentator")(src, dst, progress=False)
    assert summary.done == ["s0001"]
    meta = dataset_json(dst)
    assert len(meta["labels"]) == 118 and meta["label_set"] == "v2"
    assert "heart.nii.gz, skull.nii.gz" in meta["label_set_chosen"]
    v2 = load_class_map("totalsegmentator")
    ids = {name: i for i, name in v2.items()}
    expected = np.zeros(SIZE, np.uint8)
    expected[:, :, 1], expected[:, :, 2] = ids["heart"], ids["skull"]
    assert_case(dst, "s0001", image, expected)


def test_totalsegmentator_subject_mixing_releases_fails_naming_the_odd_files(tmp_path):
    src, dst = tmp_path / "ts", tmp_path / "out"
    write_totalseg_subject(src, "s0001", {"face": one_slab(0), "heart_atrium_left": one_slab(1)})
    mixed = {"face": one_slab(0), "skull": one_slab(1), "sternum": one_slab(2)}
    write_totalseg_subject(src, "s0002", mixed, seed=2)
    summary = get_converter("totalsegmentator")(src, dst, progress=False)
    assert summary.done == ["s0001"] and dataset_json(dst)["label_set"] == "v1"
    message = dict(summary.failed)["s0002"]
    assert message.startswith(str(src / "s0002" / "segmentations" / "skull.nii.gz"))
    assert "mixes TotalSegmentator releases" in message
    assert "skull.nii.gz, sternum.nii.gz" in message and "face.nii.gz" in message
    assert not (dst / "imagesTr" / "s0002_0000.nii.gz").exists()
    result = CliRunner().invoke(app, ["convert", "totalsegmentator", str(src), str(tmp_path / "cli")])
    assert result.exit_code == 1 and "skull.nii.gz" in result.output


def test_totalsegmentator_tree_with_both_releases_is_refused_before_any_work(tmp_path):
    src, dst = tmp_path / "ts", tmp_path / "out"
    write_totalseg_subject(src, "s0001", {"face": one_slab(0)})
    write_totalseg_subject(src, "s0002", {"skull": one_slab(0)})
    with pytest.raises(InputError, match="both TotalSegmentator releases") as err:
        get_converter("totalsegmentator")(src, dst, progress=False)
    assert "s0001 is v1 (face.nii.gz)" in str(err.value) and "s0002 is v2 (skull.nii.gz)" in str(err.value)
    assert not dst.exists()
    # forcing a release converts what fits it and names the rest
    summary = get_converter("totalsegmentator")(src, dst, label_set="v2", progress=False)
    assert summary.done == ["s0002"]
    assert "v1-only TotalSegmentator masks face.nii.gz in a v2 conversion" in dict(summary.failed)["s0001"]
    assert "--classes v1" in dict(summary.failed)["s0001"]
    assert dataset_json(dst)["label_set_chosen"] == "forced with --classes v2"


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """The real console entry point (InputError -> one line on stderr, exit code 2)."""
    command = [sys.executable, "-c", "from organdetr.cli import main; main()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, path: Path, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), proc.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_meta_csv_row_without_split_is_one_line_naming_the_row(tmp_path):
    src, dst = tmp_path / "ts", tmp_path / "out"
    write_totalseg_subject(src, "s0001", {"liver": one_slab(0)})
    write_totalseg_subject(src, "s0002", {"liver": one_slab(0)})
    (src / "meta.csv").write_text("image_id;age;split\ns0001;60;train\ns0002;70\n")
    proc = run_cli("convert", "totalsegmentator", src, dst)
    assert_one_line_error(proc, src / "meta.csv", "row 3", "'s0002;70'", "no 'split' value")
    assert not dst.exists()
    (src / "meta.csv").write_text("image_id;age;split\ns0001;60;train\ns0002;70;tset\n")
    with pytest.raises(InputError, match=r"row 3 .*split 'tset' is not one of train, val, test"):
        get_converter("totalsegmentator")(src, dst, progress=False)
    assert not dst.exists()


def test_convert_into_an_existing_file_is_refused_before_any_work(tmp_path):
    root = tmp_path / "WORD"
    make_word(root, 1)
    target = tmp_path / "dataset.nii.gz"
    target.write_bytes(b"precious")
    proc = run_cli("convert", "word", root, target)
    assert_one_line_error(proc, target, "is a file")
    assert target.read_bytes() == b"precious"
    with pytest.raises(InputError, match="is a file, so the output folder"):
        get_converter("word")(root, target / "sub", progress=False)
    with pytest.raises(InputError, match="inside the source folder"):
        get_converter("abdomenct1k")(tmp_path, tmp_path / "converted", progress=False)


# --- AbdomenCT-1K label sets and trees of the wrong kind ---------------------------------------------


def test_abdomenct1k_13_organ_release_and_the_authors_5_class_subset(tmp_path):
    src = tmp_path / "FLARE22Train"
    image = put(src / "images" / "FLARE22_Tr_0001_0000.nii.gz", fake_image(1))
    label = put(src / "labels" / "FLARE22_Tr_0001.nii.gz", fake_label(list(range(1, 14)), 1))
    with pytest.raises(InputError, match=r"label ids \[5, 6, 7, 8, 9, 10, 11, 12, \.\.\. \(9 ids\)\]") as err:
        get_converter("abdomenct1k")(src, tmp_path / "four", progress=False)  # default: organs4
    assert "--classes organs13" in str(err.value) and not (tmp_path / "four").exists()

    get_converter("abdomenct1k")(src, tmp_path / "thirteen", label_set="organs13", progress=False)
    meta = dataset_json(tmp_path / "thirteen")
    assert meta["label_set"] == "organs13" and len(meta["labels"]) == 14
    assert (meta["labels"]["kidney_right"], meta["labels"]["kidney_left"]) == (2, 13)
    assert_case(tmp_path / "thirteen", "FLARE22_Tr_0001", image, label)

    keep = ["liver", "kidney_right", "spleen", "pancreas", "kidney_left"]
    get_converter("abdomenct1k")(
        src, tmp_path / "five", label_set="organs13", keep_classes=keep, progress=False
    )
    assert dataset_json(tmp_path / "five")["labels"] == {"background": 0} | {
        n: i for i, n in enumerate(keep, 1)
    }


def nnunet_tree(root: Path, case_ids: list[str], with_json: bool = True) -> None:
    for i, case_id in enumerate(case_ids):
        put(root / "imagesTr" / f"{case_id}_0000.nii.gz", fake_image(i))
        put(root / "labelsTr" / f"{case_id}.nii.gz", fake_label([1, 2], i))
    if with_json:
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))


def test_abdomenct1k_pointed_at_an_nnunet_folder_fails_in_one_line(tmp_path):
    src, dst = tmp_path / "Dataset001_Phantom", tmp_path / "out"
    nnunet_tree(src, ["phantom_0000", "phantom_0001"])
    proc = run_cli("convert", "abdomenct1k", src, dst)
    assert_one_line_error(proc, src / "dataset.json", "already an nnU-Net raw dataset")
    assert not dst.exists()
    # without its dataset.json the label maps are what the layout calls images: refused by content
    (src / "dataset.json").unlink()
    proc = run_cli("convert", "abdomenct1k", src, dst)
    label_as_image = src / "labelsTr" / "phantom_0000.nii.gz"  # "<case>_0000": looks like an image name
    assert_one_line_error(proc, label_as_image, "is not an image", "like a label map")
    assert not dst.exists()


def test_a_ct_among_the_masks_is_refused(tmp_path):
    src, dst = tmp_path / "AbdomenCT-1K", tmp_path / "out"
    for i in (1, 2):
        put(src / "Image" / f"Case_0000{i}_0000.nii.gz", fake_image(i))
        put(src / "Mask" / f"Case_0000{i}.nii.gz", fake_image(10 + i))  # a CT where the mask should be
    with pytest.raises(SourceMismatchError, match="negative values .* CT intensities") as err:
        get_converter("abdomenct1k")(src, dst, progress=False)  # the first case fails the run
    assert err.value.path == src / "Mask" / "Case_00001.nii.gz" and not dst.exists()
    put(src / "Mask" / "Case_00001.nii.gz", fake_label([1, 2, 3, 4]))
    summary = get_converter("abdomenct1k")(src, dst, progress=False)  # later cases fail on their own
    assert summary.done == ["Case_00001"] and "CT intensities" in dict(summary.failed)["Case_00002"]


def test_check_is_image_tells_images_from_label_maps():
    rng = np.random.default_rng(0)
    check_is_image(Path("ct.nii.gz"), rng.integers(-1024, 2000, (40, 40, 40)).astype(np.int16))
    check_is_image(Path("mr.nii.gz"), rng.gamma(2.0, 100.0, (40, 40, 40)).astype(np.float32))
    mr_uint = rng.integers(0, 600, (80, 80, 80)).astype(np.uint16)  # sampled, not fully scanned
    check_is_image(Path("mr.nii.gz"), mr_uint)
    labels = rng.choice([0, 1, 2, 117], (80, 80, 80)).astype(np.float32)
    with pytest.raises(SourceMismatchError, match=r"mask.nii.gz: is not an image: it holds only 4 distinct"):
        check_is_image(Path("mask.nii.gz"), labels)
    with pytest.raises(SourceMismatchError, match="blank"):
        check_is_image(Path("blank.nii.gz"), np.zeros((8, 8, 8), np.int16))


def test_cli_label_set_and_keep_options(tmp_path):
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["convert", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--keep" in help_text and "organs13" in help_text and "v1 (104 classes)" in help_text
    assert "Organ-DETR paper" in help_text and "low confidence" in help_text
    root = tmp_path / "WORD"
    make_word(root, 1)
    result = runner.invoke(app, ["convert", "word", str(root), str(tmp_path / "a"), "--classes", "v1"])
    assert result.exit_code == 2 and "--keep" in result.output
    result = runner.invoke(
        app, ["convert", "abdomenct1k", str(root), str(tmp_path / "a"), "--classes", "liver"]
    )
    assert result.exit_code == 2 and "organs4" in result.output
    result = runner.invoke(app, ["convert", "word", str(root), str(tmp_path / "b"), "--keep", "liver,spleen"])
    assert result.exit_code == 0, result.output
    assert dataset_json(tmp_path / "b")["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert not (tmp_path / "a").exists()
