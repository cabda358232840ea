"""benchmarks/bench_real_ct_gap.py: the flattened and piecewise-constant versions of a real scan."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gap():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_real_ct_gap")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_piecewise_and_flattened_images(gap):
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[2:6, 2:6, 2:6], labels[7:10, 3:8, 1:7] = 5, 40  # liver (an organ), a muscle (not one)
    image = rng.normal(-1000.0, 5.0, labels.shape).astype(np.float32)  # air
    image[1:11, 1:9, :] = rng.normal(-100.0, 10.0, (10, 8, 8))  # the unlabelled body
    image[labels == 5] = rng.normal(60.0, 15.0, (labels == 5).sum())
    image[labels == 40] = rng.normal(45.0, 15.0, (labels == 40).sum())
    table = {5: "liver", 40: "gluteus_maximus_left"}
    images = gap.real_grid_images(image, labels, table, {"liver"})
    med = gap.medians(image, labels, table)
    piecewise = images["piecewise_real_medians"]
    assert np.all(piecewise[labels == 5] == med["liver"]) and abs(med["liver"] - 60.0) < 8.0
    assert np.all(piecewise[labels == 40] == med["gluteus_maximus_left"])
    assert piecewise[0, 0, 0] == med["outside_body"] and piecewise[1, 1, 0] == med["body_unlabelled"]
    assert abs(med["outside_body"] + 1000.0) < 3.0 and abs(med["body_unlabelled"] + 100.0) < 5.0
    organs_flat = images["real_organs_flat"]
    assert np.all(organs_flat[labels == 5] == med["liver"])
    assert np.array_equal(organs_flat[labels != 5], image[labels != 5])  # only the organs change
    background_flat = images["real_background_flat"]
    assert np.array_equal(background_flat[labels > 0], image[labels > 0])
    assert background_flat[1, 1, 0] == med["body_unlabelled"] and background_flat[0, 0, 0] == image[0, 0, 0]
    assert np.array_equal(images["real"], image)
