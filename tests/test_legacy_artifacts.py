"""Runs and caches written before the package redesign still load, verify, predict the same and resume.

``tests/fixtures/legacy_v0_1`` was written by commit 29f0e0a (the last commit of the old flat layout) with the
released CLI, in an empty folder::

    organdetr synth phantom --cases 3 --seed 0
    organdetr preprocess phantom cache --size 32 32 32
    organdetr train tiny --cache cache -o run --set train.epochs=2 --set data.val_fraction=0.34 \\
        --set train.progress=false

(``run/tensorboard`` and the lock files removed), and ``expected_detections.json`` holds what that commit's
``load_detector("run")`` detected on the cached images of ``phantom_0000`` and ``phantom_0002``. Nothing in a
run or a cache names a Python module, so moving modules must leave all of this working.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.data.cache_dataset import CacheDataset
from organdetr.preprocessing.cache import list_cases, load_case, verify_cases
from organdetr.preprocessing.plans import load_plans
from organdetr.training.checkpoint import load_detector

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v0_1"


@pytest.fixture()
def legacy_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture (runs take locks and resume writes checkpoints)."""
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_legacy_cache_verifies_and_loads():
    cache = LEGACY / "cache"
    plans = load_plans(cache)
    cases = list_cases(cache)
    assert cases == ["phantom_0000", "phantom_0001", "phantom_0002"]
    records = verify_cases(cache, cases, plans)  # checksums, shapes and dtypes recorded by the old writer
    image, label, record = load_case(cache, "phantom_0000")
    assert len(records) == 3
    assert image.shape == label.shape == (32, 32, 32) and record["boxes"]
    image_tensor, target = CacheDataset(cache, cases, augment=None)[0]
    assert tuple(image_tensor.shape[-3:]) == (32, 32, 32) and len(target["labels"]) == len(record["boxes"])
    assert plans["input_size"] == [32, 32, 32]


def test_legacy_run_detects_what_it_detected_before():
    detector, cfg, plans = load_detector(LEGACY / "run")
    expected = json.loads((LEGACY / "expected_detections.json").read_text())
    assert cfg.arch == "organdetr" and plans["input_size"] == [32, 32, 32]
    for case_id, before in expected.items():
        image, _, _ = load_case(LEGACY / "cache", case_id)
        with torch.no_grad():
            now = detector.detect(torch.from_numpy(np.array(image))[None, None].float())[0]
        # compared per organ, so that two near-equal scores swapping places on another CPU do not matter
        labels_now, labels_before = now["labels"].numpy(), np.asarray(before["labels"])
        now_by_organ, before_by_organ = np.argsort(labels_now), np.argsort(labels_before)
        assert labels_now[now_by_organ].tolist() == labels_before[before_by_organ].tolist()
        for key, atol in (("scores", 1e-5), ("boxes", 1e-3)):
            expected = np.asarray(before[key])[before_by_organ]
            np.testing.assert_allclose(now[key].numpy()[now_by_organ], expected, rtol=1e-4, atol=atol)


def test_legacy_run_resumes(legacy_copy: Path, monkeypatch):
    monkeypatch.chdir(legacy_copy)  # the run's config names its cache relative to where it was trained
    result = CliRunner().invoke(app, ["train", "--resume", "run", "--set", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    state = json.loads((legacy_copy / "run" / "last" / "state.json").read_text())
    assert state["step"] == 6  # two steps per epoch: the old run's 4 steps, then one more epoch
