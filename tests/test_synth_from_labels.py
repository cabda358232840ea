"""From-label synthesis (issue 24): boxes from the deformed label map, the piecewise-constant image of fixed
intensities, the class-name mapping and its one-line refusal, determinism, and `synth --kind from-labels`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from _cache_factory import make_cache  # tests/ is on sys.path (pytest rootdir import mode)
from organdetr.cli import app, main
from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.geometry import Geometry
from organdetr.data.cache_dataset import CacheDataset
from organdetr.data.resynthesis import Resynthesis
from organdetr.datasets.nnunet import load_dataset, write_dataset_json
from organdetr.datasets.synthetic.appearance import OUTSIDE, AppearanceConfig
from organdetr.datasets.synthetic.from_labels import (
    FromLabelsConfig,
    sample_grid,
    structure_map,
    synthesize,
)
from organdetr.datasets.synthetic.from_labels_dataset import source_weights
from organdetr.datasets.synthetic.label_sources import (
    TARGET_CLASSES,
    LabelSource,
    UnknownStructureError,
    map_classes,
    phantom_label_source,
    read_label_source,
)
from organdetr.experiments.demo import DemoConfig
from organdetr.experiments.demo.real_ct import real_scan_truth, score_versus_truth
from organdetr.io.images import write_image
from organdetr.runtime.errors import InputError
from organdetr.training.config import DataConfig

runner = CliRunner(env={"COLUMNS": "200"})
CLASSES = {1: "liver", 2: "kidney_left", 3: "colon", 4: "vertebrae_L1", 5: "bladder"}
GEOMETRY = Geometry((28, 24, 20), (4.0, 4.0, 5.0), (-50.0, -40.0, 10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SMALL = dict(max_size=32, spacing_in_plane=(3.0, 5.0), spacing_slice=(4.0, 6.0))


def _label_map() -> np.ndarray:
    """Blocks of five structures; liver, kidney_left and bladder are model organs, colon and L1 background."""
    labels = np.zeros(GEOMETRY.size, np.uint8)
    labels[3:14, 4:16, 8:18] = 1
    labels[16:22, 12:18, 4:10] = 2
    labels[5:24, 2:6, 2:6] = 3
    labels[12:16, 18:22, 2:18] = 4
    labels[10:18, 6:12, 0:3] = 5
    return labels


@pytest.fixture
def source() -> LabelSource:
    return LabelSource("blocks", _label_map(), GEOMETRY, dict(CLASSES))


def test_boxes_equal_the_boxes_of_the_deformed_label_map(source):
    """The case's boxes are those of its own label map, and that map is the source's label map carried
    through the drawn motion (redrawn here from the same seed) with its names mapped onto the organs."""
    cfg = FromLabelsConfig(**SMALL, elastic_mm=(4.0, 6.0))
    case = synthesize(source, 11, cfg)
    own = boxes_from_labels(case.labels, case.geometry, TARGET_CLASSES, allow_empty=True)
    assert [b.to_dict() for b in case.boxes] == [b.to_dict() for b in own] and case.boxes
    rng = np.random.default_rng(11)
    structure_map(source, rng, cfg.body_margin_mm)  # the draws before the motion, in the same order
    geometry, coords = sample_grid(rng, source.geometry, cfg)
    moved = ndimage.map_coordinates(source.labels, coords, order=0, mode="constant", cval=0)
    organs = np.zeros(6, np.uint8)
    organs[[1, 2, 5]] = [5, 3, 21]  # liver, kidney_left, bladder -> TotalSegmentator ids; colon, L1 -> 0
    expected = boxes_from_labels(organs[moved], geometry, TARGET_CLASSES, allow_empty=True)
    assert geometry == case.geometry and np.array_equal(organs[moved], case.labels)
    assert [b.to_dict() for b in case.boxes] == [b.to_dict() for b in expected]


def test_scaling_scales_the_boxes(source):
    """Anatomy scaled by 1.25 about the source's centre (no rotation, stretch or field, whole field of view on
    the source's spacing): every organ's box grows by 1.25 in mm, within one voxel (5 mm) per side."""
    cfg = FromLabelsConfig(
        scale=(1.25, 1.25), stretch=0.0, rotate_deg=(0.0, 0.0, 0.0), elastic_mm=(0.0, 0.0),
        spacing_in_plane=(4.0, 4.0), spacing_slice=(5.0, 5.0), fov_k=(1.0, 1.0), fov_in_plane=(1.0, 1.0),
        off_centre=0.0,
    )  # fmt: skip
    case = synthesize(source, 3, cfg)
    before = {b.name: b.box_mm for b in boxes_from_labels(np.where(_label_map() == 1, 5, 0), GEOMETRY, None)}
    liver = next(b for b in case.boxes if b.name == "liver").box_mm
    size_before = before["label_5"][3:] - before["label_5"][:3]
    assert np.all(np.abs((liver[3:] - liver[:3]) - 1.25 * size_before) <= 2 * 5.0 + 1e-6)
    assert not np.allclose(liver[3:] - liver[:3], size_before, atol=8.0)


def test_fixed_intensities_give_the_piecewise_constant_volume(source):
    """On the source's own grid with fixed intensities the image is exactly hu[structure of each voxel]."""
    hu = {
        OUTSIDE: -1000.0,
        "body_unlabelled": -100.0,  # unused: this source labels its own body (body_from_labels=False)
        "liver": 60.0,
        "kidney_left": 150.0,
        "colon": -40.0,
        "vertebrae_L1": 400.0,
        "bladder": 5.0,
    }
    source = LabelSource("blocks", _label_map(), GEOMETRY, dict(CLASSES), body_from_labels=False)
    case = synthesize(source, 0, FromLabelsConfig.identity(AppearanceConfig(fixed_hu=hu)))
    lookup = np.array([hu[OUTSIDE], *(hu[CLASSES[i]] for i in range(1, 6))], np.float32)
    assert case.geometry == GEOMETRY
    assert np.array_equal(case.image, lookup[_label_map()])
    assert np.array_equal(case.labels, np.array([0, 5, 3, 0, 0, 21], np.uint8)[_label_map()])


def test_body_split_gives_air_and_fat_their_own_structures(source):
    """label 0 near the labelled structures is body (inside), far from them outside the body."""
    hu = {"outside_body": -1000.0, "body_unlabelled": -100.0} | {n: 50.0 for n in CLASSES.values()}
    cfg = FromLabelsConfig(**{**FromLabelsConfig.identity().to_dict(), "body_margin_mm": (8.0, 8.0)} | {
        "appearance": AppearanceConfig(fixed_hu=hu)})  # fmt: skip
    image = synthesize(source, 0, cfg).image
    assert image[0, 0, 19] == -1000.0 and image[2, 10, 12] == -100.0  # corner: air; 4 mm from the liver: fat


def test_same_seed_same_case(source):
    cfg = FromLabelsConfig(**SMALL)
    a, b, c = synthesize(source, 5, cfg), synthesize(source, 5, cfg), synthesize(source, 6, cfg)
    assert (
        np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.geometry == b.geometry
    )
    assert a.geometry != c.geometry or not np.array_equal(a.image, c.image)


def test_class_mapping_by_name_and_one_line_refusal():
    mapping = map_classes({1: "liver", 7: "bladder", 9: "colon", 12: "inferior_vena_cava"})
    assert mapping.target == {1: 5, 7: 21, 9: 0, 12: 63}
    with pytest.raises(UnknownStructureError) as err:
        map_classes({1: "liver", 2: "livr"}, "maps/case.nii.gz")
    assert (
        "\n" not in str(err.value)
        and str(err.value).startswith("maps/case.nii.gz: label 2")
        and "livr" in str(err.value)
    )
    with pytest.raises(UnknownStructureError, match="kidney_left"):
        map_classes({3: "kidney"}, "amos.nii.gz")


def test_phantom_source_keeps_its_tissues():
    source = phantom_label_source(4)
    names = set(source.classes.values())
    assert {"liver", "tissue_fat", "tissue_cortical_bone"} <= names and not source.body_from_labels
    case = synthesize(source, 1, FromLabelsConfig(**SMALL))
    assert {b.name for b in case.boxes} <= set(TARGET_CLASSES.values()) and case.image.dtype == np.float32


def test_real_totalsegmentator_maps(shared_data):
    """TS-A's 117-class map (header table) gives the ten organs; the MR map's total_mr names are known too."""
    ts = read_label_source(shared_data / "totalsegmentator" / "example_seg_fast_force_split.nii.gz")
    assert sorted(n for i, n in ts.classes.items() if ts.mapping.target[i]) == sorted(TARGET_CLASSES.values())
    mr = read_label_source(shared_data / "totalsegmentator" / "example_seg_mr.nii.gz")
    assert "intervertebral_discs" in mr.classes.values() and mr.mapping.target[5] == 5
    case = synthesize(ts, 0, FromLabelsConfig(**SMALL))
    assert len(case.boxes) >= 3 and max(case.geometry.size) <= 32


def _labels_tr(root, classes):
    (root / "labelsTr").mkdir(parents=True)
    write_image(root / "labelsTr" / "a.nii.gz", _label_map(), GEOMETRY)
    write_dataset_json(root, classes, 1, name="src")
    return root / "labelsTr"


def test_cli_synth_from_labels_writes_a_dataset(tmp_path):
    labels_tr = _labels_tr(tmp_path / "src", CLASSES)
    out = tmp_path / "Dataset950_FromLabels"
    args = ["synth", "--kind", "from-labels", str(labels_tr), str(out), "--cases", "2", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    dataset = load_dataset(out)
    assert len(dataset.cases) == 2 and dataset.classes == TARGET_CLASSES
    assert json.loads((out / "dataset.json").read_text())["synthesis"]["kind"] == "from-labels"
    assert "from-labels" in runner.invoke(app, ["synth", "--help"]).output


def test_real_share_weights_the_file_maps_against_the_phantoms():
    labels = _label_map()
    files = [LabelSource(f"f{i}", labels, GEOMETRY, dict(CLASSES), path=Path(f"f{i}")) for i in range(2)]
    phantoms = [LabelSource(f"ph{i}", labels, GEOMETRY, dict(CLASSES)) for i in range(3)]
    weights = source_weights(files + phantoms, 0.6)
    assert weights == pytest.approx((0.3, 0.3, 0.4 / 3, 0.4 / 3, 0.4 / 3))
    assert source_weights(files + phantoms, None) is None and source_weights(files, 0.6) is None
    with pytest.raises(ValueError, match="real_share"):
        source_weights(files + phantoms, 1.5)


def test_cli_synth_real_share_draws_every_case_from_the_label_maps(tmp_path):
    labels_tr = _labels_tr(tmp_path / "src", CLASSES)
    out = tmp_path / "Dataset951_FromLabels"
    args = ["synth", "--kind", "from-labels", str(labels_tr), str(out), "--cases", "3"]
    args += ["--phantom-sources", "2"]
    result = runner.invoke(app, [*args, "--real-share", "1"])
    assert result.exit_code == 0, result.output
    synthesis = json.loads((out / "dataset.json").read_text())["synthesis"]
    assert synthesis["real_share"] == 1.0 and len(synthesis["sources"]) == 3
    assert all(case["source"] == "a" for case in synthesis["cases"])
    assert runner.invoke(app, [*args[:4], str(tmp_path / "x"), "--real-share", "2"]).exit_code == 2


def test_cli_synth_from_labels_bad_name_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    labels_tr = _labels_tr(tmp_path / "src", CLASSES | {3: "colonn"})
    out = tmp_path / "out"
    monkeypatch.setattr(
        sys, "argv", ["organdetr", "synth", "--kind", "from-labels", str(labels_tr), str(out)]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "a.nii.gz: label 3" in err and "colonn" in err
    assert not out.exists()


def test_real_scan_truth_for_every_scan_of_the_pack(shared_data):
    """TotalSegmentator's boxes of the organs each real scan holds (the bench's pseudo ground truth); the
    truth scored against itself is perfect."""
    organs = set(TARGET_CLASSES.values())
    expected = {
        "example_ct.nii.gz": organs,
        "example_ct_dicom": {"liver", "spleen", "stomach", "pancreas", "aorta", "inferior_vena_cava"},
        "example_mr_sm.nii.gz": organs - {"urinary_bladder"},
    }
    for name, names in expected.items():
        truth = real_scan_truth(shared_data, shared_data / "totalsegmentator" / name, organs)
        assert {t["label"] for t in truth} == names, name
    detections = [{"label": t["label"], "score": 0.9, "box_mm": t["box_mm"]} for t in truth]
    summary = score_versus_truth("mr", detections, truth).summary
    assert summary["AP50"] == 1.0 and summary["center_error_mm_median"] == 0.0


def test_demo_data_option(tmp_path):
    """`demo --data from-labels` names its training data, takes the phantoms' plan; a bad kind is refused."""
    cfg = DemoConfig.quick(out_dir=tmp_path, data="from-labels")
    assert "label maps" in cfg.data_text() and "phantoms' plan" in cfg.grid_text()
    assert "TS-A, where found, for 50% of the cases" in cfg.data_text()
    with pytest.raises(InputError, match="--data must be one of phantom, from-labels"):
        DemoConfig(out_dir=tmp_path, data="labels")
    with pytest.raises(InputError, match="real_share"):
        DemoConfig(out_dir=tmp_path, data="from-labels", real_share=1.5)


def test_cache_resynthesis_paints_the_cached_labels(tmp_path):
    """`data.synthesis: appearance`: with fixed intensities every organ voxel of the sample gets its organ's
    normalised HU and the background its bin's; p=0 leaves the cached image; a random draw is reproducible
    from the key, stays in [0, 1] and differs from the cached image."""
    cache = make_cache(tmp_path, num_cases=1, size=16)
    hu = {"outside_body": -1000.0, "body_unlabelled": -50.0, "muscle": 60.0, "vertebrae": 500.0}
    hu |= {"liver": 100.0, "kidney_left": 150.0, "kidney_right": 120.0, "spleen": 80.0}
    fixed = CacheDataset(cache, synthesis=Resynthesis(1.0, AppearanceConfig(fixed_hu=hu)))
    image, target = fixed[(0, 3)]
    low, high = fixed.plans["hu_window"]
    seg = target["seg"].numpy()
    for dense, name in enumerate(fixed.class_names, start=1):
        assert np.allclose(image[0].numpy()[seg == dense], np.clip((hu[name] - low) / (high - low), 0, 1))
    cached, _ = CacheDataset(cache)[(0, 3)]
    assert torch.equal(CacheDataset(cache, synthesis=Resynthesis(0.0))[(0, 3)][0], cached)
    drawn = CacheDataset(cache, synthesis=Resynthesis(1.0))
    a, b = drawn[(0, 5)][0], drawn[(0, 5)][0]
    assert torch.equal(a, b) and not torch.equal(a, cached) and 0.0 <= float(a.min()) <= float(a.max()) <= 1.0
    with pytest.raises(ValueError, match="data.synthesis must be"):
        DataConfig(synthesis="labels")
