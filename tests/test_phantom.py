"""organdetr.datasets.synthetic.phantom: the synthetic abdomen (anatomy, HU, seeds) and `organdetr synth`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.datasets.synthetic.phantom import (
    PHANTOM_CLASSES,
    PhantomConfig,
    generate_case,
    generate_case_with_info,
    save_preview,
    write_synthetic_dataset,
)
from organdetr.datasets.synthetic.shapes import Grid, Superquadric, Tube
from organdetr.datasets.synthetic.writing import case_seeds
from organdetr.runtime.errors import InputError

IDS = {name: i for i, name in PHANTOM_CLASSES.items()}
SMALL = PhantomConfig(size=(48, 48, 48), spacing=(8.0, 8.0, 8.0))
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def cases():
    """Six full-size (96^3) cases of the fixed (abdomen-centred) field of view: every organ in view."""
    return [generate_case_with_info(seed, PhantomConfig.fixed()) for seed in range(6)]


@pytest.fixture(scope="module")
def varied_cases():
    """Thirty small cases of the default, varied field of view."""
    cfg = PhantomConfig(size=(32, 32, 32))
    return [generate_case_with_info(seed, cfg) for seed in range(30)]


def test_varied_field_of_view_draws_every_scan_range_and_cuts_organs(varied_cases):
    from organdetr.datasets.synthetic.phantom import SCAN_RANGES

    ranges = {info.scan_range for *_, info in varied_cases}
    assert ranges == set(SCAN_RANGES)
    for _, labels, geometry, info in varied_cases:
        assert geometry.size[:2] == (32, 32) and 8 <= geometry.size[2] <= 512
        assert abs(geometry.spacing[0] - geometry.spacing[1]) < 1e-6
        in_view = {name for name, i in IDS.items() if (labels == i).any()}
        if info.scan_range == "upper_abdomen":
            assert "urinary_bladder" not in in_view and "liver" in in_view or "liver" in info.missing
        if info.scan_range in ("thorax_abdomen_pelvis", "abdomen_pelvis") and "liver" not in info.missing:
            assert "liver" in in_view
    # organs absent from the field of view are common, not rare (what the detector must score low)
    absent = sum(len([n for n, i in IDS.items() if not (lab == i).any()]) for _, lab, _, _ in varied_cases)
    assert absent >= 30


def test_varied_field_of_view_moves_organs_in_world_and_grid_coordinates(varied_cases):
    """A position prior cannot solve it: the liver's centre spreads over decimetres in the scanner frame
    and over a large part of the normalised field of view."""
    world, fraction, extent = [], [], []
    for _, labels, geometry, _ in varied_cases:
        if (labels == IDS["liver"]).any():
            voxels = np.argwhere(labels == IDS["liver"])
            world.append(geometry.index_to_world(voxels.mean(axis=0)))
            fraction.append(voxels.mean(axis=0) / np.asarray(geometry.size))
            extent.append(np.ptp(voxels[:, 2]) / geometry.size[2])
    assert np.std(np.asarray(world)[:, 2]) > 60.0  # mm, superior-inferior
    assert np.ptp(np.asarray(fraction)[:, 2]) > 0.25  # of the field of view
    assert max(extent) > 2.5 * min(extent)  # a slab's liver fills it, a whole-trunk scan's does not
    fixed = [
        generate_case_with_info(seed, PhantomConfig.fixed(size=(32,) * 3, spacing=(12.0,) * 3))
        for seed in range(10)
    ]
    fixed_world = [g.index_to_world(np.argwhere(lab == IDS["liver"]).mean(axis=0)) for _, lab, g, _ in fixed]
    assert np.std(np.asarray(fixed_world)[:, 2]) < 25.0  # the old phantom: the liver always at one place


def centroid_mm(labels, geometry, name):
    index = np.argwhere(labels == IDS[name]).mean(axis=0)
    return geometry.index_to_world(index)


def test_class_map_uses_totalsegmentator_ids():
    assert PHANTOM_CLASSES == {
        1: "spleen",
        2: "kidney_right",
        3: "kidney_left",
        4: "gallbladder",
        5: "liver",
        6: "stomach",
        7: "pancreas",
        21: "urinary_bladder",
        52: "aorta",
        63: "inferior_vena_cava",
    }
    assert list(PHANTOM_CLASSES) == sorted(PHANTOM_CLASSES)


def test_same_seed_same_case_other_seed_other_case():
    a_image, a_labels, a_geometry = generate_case(7, SMALL)
    b_image, b_labels, b_geometry = generate_case(7, SMALL)
    c_image, _, _ = generate_case(8, SMALL)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert a_geometry == b_geometry
    assert not np.array_equal(a_image, c_image)


def test_types_geometry_and_hu_range(cases):
    for image, labels, geometry, _ in cases:
        assert image.dtype == np.int16 and labels.dtype == np.uint8
        assert image.shape == labels.shape == geometry.size == (96, 96, 96)
        assert geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert all(3.6 - 1e-6 <= s <= 4.4 + 1e-6 for s in geometry.spacing)
        centre = geometry.index_to_world((np.asarray(geometry.size) - 1) / 2.0)
        assert np.all(np.abs(centre) <= 20.0 + 1e-6)
        assert set(np.unique(labels)) <= {0, *PHANTOM_CLASSES}
        assert image.min() >= -1024 and image.max() <= 3071
        assert (image < -900).mean() > 0.1  # air around the body, gas, lung
        assert image.max() > 500  # bone


def test_every_organ_present_unless_drawn_missing_with_plausible_volume(cases):
    # adult volumes in cm^3, generously bracketed (clipping at the field of view shrinks some)
    ranges = {
        "liver": (700, 2800),
        "spleen": (20, 500),
        "kidney_right": (30, 350),
        "kidney_left": (30, 350),
        "gallbladder": (5, 120),
        "stomach": (80, 900),
        "pancreas": (20, 180),
        "urinary_bladder": (30, 700),
        "aorta": (30, 250),
        "inferior_vena_cava": (30, 250),
    }
    for _, labels, geometry, info in cases:
        voxel_cm3 = float(np.prod(geometry.spacing)) / 1000.0
        counts = np.bincount(labels.ravel(), minlength=64)
        for name, (low, high) in ranges.items():
            volume = counts[IDS[name]] * voxel_cm3
            if name in info.missing:
                assert volume == 0
            else:
                assert low <= volume <= high, (name, volume)


def test_each_organ_is_one_piece(cases):
    for _, labels, _, _ in cases:
        for label_id in np.unique(labels[labels > 0]):
            assert ndimage.label(labels == label_id)[1] == 1


def test_left_right_and_anterior_posterior_placement_in_lps(cases):
    for _, labels, geometry, info in cases:
        c = {n: centroid_mm(labels, geometry, n) for n in PHANTOM_CLASSES.values() if n not in info.missing}
        x, y, z = 0, 1, 2
        if "kidney_left" in c and "kidney_right" in c:
            assert c["kidney_left"][x] > c["kidney_right"][x]  # i / x increases toward patient Left
        assert c["liver"][x] < 0 < c["spleen"][x] if "spleen" in c else c["liver"][x] < 0
        assert c["stomach"][x] > 0
        assert c["aorta"][x] > c["inferior_vena_cava"][x]
        assert c["urinary_bladder"][z] < c["pancreas"][z] < c["liver"][z]  # k / z increases toward Superior
        assert c["pancreas"][y] < c["aorta"][y]  # pancreas in front of (anterior to) the aorta
        for kidney in ("kidney_left", "kidney_right"):
            if kidney in c:
                assert c[kidney][y] > c["aorta"][y]  # kidneys posterior


def test_organs_touch_in_some_cases(cases):
    def touching(labels, a, b):
        return bool((ndimage.binary_dilation(labels == IDS[a]) & (labels == IDS[b])).any())

    pairs = [("liver", "kidney_right"), ("stomach", "spleen"), ("liver", "gallbladder")]
    for a, b in pairs:
        assert any(touching(labels, a, b) for _, labels, _, _ in cases), (a, b)


def test_organ_intensities_match_ct(cases):
    for image, labels, _, info in cases:
        body = image > -500
        assert -130 < np.median(image[body & (labels == 0) & (image < -50)]) < -60  # fat
        liver = np.median(image[labels == IDS["liver"]])
        spleen = np.median(image[labels == IDS["spleen"]]) if "spleen" not in info.missing else None
        aorta = np.median(image[labels == IDS["aorta"]])
        if info.phase == "native":
            assert 45 < liver < 75 and 25 < aorta < 55
            assert spleen is None or 35 < spleen < 62
        else:
            assert 55 < liver < 135 and aorta > 120
        gas = image[labels == IDS["stomach"]]
        assert gas.min() < -500  # a gas pocket in the stomach


def test_missing_organs_follow_probabilities():
    cfg = PhantomConfig(
        size=(16, 16, 16), spacing=(24.0, 24.0, 24.0), missing={"gallbladder": 1.0, "spleen": 0.0}
    )
    for seed in range(3):
        _, labels, _, info = generate_case_with_info(seed, cfg)
        assert "gallbladder" in info.missing and "spleen" not in info.missing
        assert not np.any(labels == IDS["gallbladder"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="size"):
        PhantomConfig(size=(96, 96))
    with pytest.raises(ValueError, match="unknown organs"):
        PhantomConfig(missing={"brain": 0.5})
    with pytest.raises(ValueError, match="phases"):
        PhantomConfig(phases=("delayed",))
    with pytest.raises(ValueError, match="field_of_view"):
        PhantomConfig(field_of_view="wide")
    with pytest.raises(ValueError, match="scan_ranges"):
        PhantomConfig(scan_ranges=("head",))


def test_superquadric_and_tube_volumes_match_formulas():
    grid = Grid((64, 64, 64), (1.0, 1.0, 1.0), (-32.0, -32.0, -32.0))
    rng = np.random.default_rng(0)
    semi = np.array([20.0, 12.0, 8.0])
    (patch,) = Superquadric(np.zeros(3), semi, np.eye(3)).patches(grid, rng)
    assert (patch.f < 1).sum() == pytest.approx(4 / 3 * np.pi * semi.prod(), rel=0.03)
    points = np.stack([np.zeros(41), np.zeros(41), np.linspace(-20, 20, 41)], 1)
    mask = np.zeros(grid.size, dtype=bool)
    for part in Tube(points, np.full(41, 5.0)).patches(grid):  # chunks overlap: paint, don't sum
        mask[part.slices] |= part.f < 1
    i, j, k = np.meshgrid(*[np.arange(-32.0, 32.0)] * 3, indexing="ij")
    to_axis = np.sqrt(i**2 + j**2 + np.clip(np.abs(k) - 20, 0, None) ** 2)  # distance to the segment
    np.testing.assert_array_equal(mask, to_axis < 5.0)  # a capsule: 1 mm point spacing is exact here
    assert Superquadric(np.array([500.0, 0, 0]), semi, np.eye(3)).patches(grid, rng) == []


def test_case_seeds_are_stable_prefixes():
    assert case_seeds(3, 5)[:2] == case_seeds(3, 2)
    assert case_seeds(3, 2) != case_seeds(4, 2)


def test_written_dataset_loads_with_nnunet_reader_and_simpleitk(tmp_path):
    import SimpleITK as sitk

    from organdetr.datasets.nnunet import load_dataset

    root = write_synthetic_dataset(tmp_path / "Dataset900_Phantom", 2, seed=5, cfg=SMALL)
    dataset = load_dataset(root)
    assert dataset.classes == PHANTOM_CLASSES
    assert [c.case_id for c in dataset.cases] == ["phantom_0000", "phantom_0001"]
    image = sitk.ReadImage(str(dataset.cases[1].image))
    labels = sitk.ReadImage(str(dataset.cases[1].label))
    expected_image, expected_labels, geometry = generate_case(case_seeds(5, 2)[1], SMALL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), expected_image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels).transpose(2, 1, 0), expected_labels)
    np.testing.assert_allclose(image.GetSpacing(), geometry.spacing, atol=1e-4)
    record = json.loads((root / "dataset.json").read_text())["phantom"]
    assert record["seed"] == 5 and len(record["cases"]) == 2
    assert record["cases"][1]["seed"] == case_seeds(5, 2)[1]


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        write_synthetic_dataset(tmp_path, 1, cfg=SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_rewrites_an_earlier_phantom_dataset(tmp_path):
    write_synthetic_dataset(tmp_path / "ds", 2, seed=0, cfg=SMALL)
    write_synthetic_dataset(tmp_path / "ds", 2, seed=1, cfg=SMALL)
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["phantom"]["seed"] == 1
    with pytest.raises(InputError):  # fewer cases would leave stale ones behind
        write_synthetic_dataset(tmp_path / "ds", 1, cfg=SMALL)


def test_save_preview_writes_png(tmp_path):
    image, labels, geometry = generate_case(0, SMALL)
    path = save_preview(image, labels, tmp_path / "p.png", spacing=geometry.spacing, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_synth_with_workers_and_preview(tmp_path):
    out = tmp_path / "Dataset901_Phantom"
    result = runner.invoke(
        app,
        [
            "synth",
            str(out),
            "--cases",
            "2",
            "--size",
            "32",
            "32",
            "32",
            "--spacing",
            "12",
            "12",
            "12",
            "--workers",
            "2",
            "--seed",
            "3",
            "--preview",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "phantom_0000_0000.nii.gz",
        "phantom_0001_0000.nii.gz",
    ]
    assert (out / "preview.png").is_file()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


def test_cli_synth_rejects_bad_size(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--cases", "1", "--size", "4", "4", "4"])
    assert result.exit_code != 0
    assert not (tmp_path / "x").exists()
