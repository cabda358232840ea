"""The brain-tumour phantom: nested BraTS sub-regions, a grade the image decides, regions as declared."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from _brain_factory import SMALL, brain_cache
from organdetr.cli import app
from organdetr.data.cache_dataset import CacheDataset, region_table
from organdetr.data.properties import DataProperties
from organdetr.datasets.nnunet import load_dataset, parse_regions
from organdetr.datasets.synthetic.brain import CHANNEL_NAMES, generate_brain_case
from organdetr.preprocessing.cache import load_case
from organdetr.runtime.errors import InputError

T1, T1CE, T2, FLAIR = range(4)


@pytest.mark.parametrize("seed", range(6))
def test_sub_regions_are_nested_and_the_grade_shows_on_t1ce(seed):
    channels, labels, geometry, info = generate_brain_case(seed, SMALL)
    assert channels.shape == (4, 32, 32, 32) and labels.shape == (32, 32, 32)
    brain = channels[T1] > 0
    assert np.all(labels[~brain] == 0)  # skull-stripped: nothing outside the brain
    ratio = channels[T1CE].astype(float) / np.maximum(channels[T1], 1)
    assert (labels == 2).any() and (labels == 1).any()
    if info.grade == "HGG":  # enhancing rim around necrosis: bright on T1ce only
        rim, core = labels == 3, labels == 1
        assert rim.any()
        assert np.median(ratio[rim]) > 1.5 * np.median(ratio[labels == 2])
        i, j, k = np.argwhere(core).mean(0).round().astype(int)
        assert labels[i, j, k] == 1  # the necrosis sits in the middle of the rim
        assert np.median(channels[T1CE][core]) < 0.5 * np.median(channels[T1CE][rim])
    else:  # no enhancement anywhere: T1ce / T1 ~ the same everywhere
        assert not (labels == 3).any()
        assert np.median(ratio[labels == 1]) < 1.3 * np.median(ratio[labels == 2])
    edema, core = labels == 2, labels == 1
    assert np.median(channels[FLAIR][edema]) > 1.3 * np.median(channels[FLAIR][brain & (labels == 0)])
    assert np.median(channels[T2][core | edema]) > np.median(channels[T2][brain & (labels == 0)])


def test_same_seed_same_case():
    a, b = generate_brain_case(7, SMALL), generate_brain_case(7, SMALL)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[3] == b[3]


def test_synth_cli_writes_a_four_channel_dataset_with_regions_and_grades(tmp_path):
    out = tmp_path / "Dataset950_Brain"
    args = ["synth", str(out), "--kind", "brain-tumour", "--cases", "3", "--size", "32", "32", "32"]
    result = CliRunner().invoke(app, [*args, "--spacing", "6", "6", "6", "--preview"])
    assert result.exit_code == 0, result.output
    dataset = load_dataset(out)
    assert dataset.channels == list(CHANNEL_NAMES) and len(dataset.cases) == 3
    assert dataset.regions == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    recorded = json.loads((out / "dataset.json").read_text())["brain_phantom"]["cases"]
    assert {c.case_id: c.case_label for c in dataset.cases} == {c["case_id"]: c["grade"] for c in recorded}
    assert (out / "preview.png").stat().st_size > 10_000
    again = CliRunner().invoke(app, ["synth", str(out), "--kind", "brain-tumour", "--size-jitter", "0.1"])
    assert again.exit_code == 2 and "--size-jitter applies to --kind abdomen" in again.output


def test_region_labels_are_computed_as_declared(tmp_path):
    cache = brain_cache(tmp_path, cases=2)
    data = DataProperties.from_plans(CacheDataset(cache).plans)
    assert data.regions == {"WT": (0, 1, 2), "TC": (0, 2), "ET": (2,)}  # dense class indices
    ds = CacheDataset(cache)
    table = region_table(ds.classes, ds.regions)
    assert table.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]  # bg, NCR, ED, ET x WT, TC, ET
    for case_id in ds.case_ids:
        _, label, record = load_case(cache, case_id)
        masks = table[ds._dense_seg(label, case_id).numpy()]
        np.testing.assert_array_equal(masks[..., 0], np.isin(label, [1, 2, 3]))
        np.testing.assert_array_equal(masks[..., 1], np.isin(label, [1, 3]))
        np.testing.assert_array_equal(masks[..., 2], label == 3)
        assert record["case_label"] in ("LGG", "HGG")


def test_regions_are_validated(tmp_path):
    path = tmp_path / "dataset.json"
    classes = {1: "a", 2: "b"}
    assert parse_regions(path, {"all": [2, 1]}, classes) == {"all": (1, 2)}
    for bad, message in (
        ({"x": [3]}, "does not have"),
        ({"x": []}, "must list label ids"),
        ({"x": [1], "y": [1]}, "same label ids"),
        ([1, 2], "must map"),
    ):
        with pytest.raises(InputError, match=message):
            parse_regions(path, bad, classes)
