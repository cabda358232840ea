"""Files that lie, files that are not files, files organdetr did not write: issue 21, points 3, 4, 5, 7, 8, 9.

Each case is built on disk and run through the real entry point (``organdetr.cli.main``, in-process): a
refusal is exit code 2 and one ``error:`` line naming the file, with nothing written or changed. One run of
the ``tiny`` preset (one optimizer step on two 32^3 phantoms) is trained once for the module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from _cache_factory import CLASSES, make_cache, save_random_checkpoint
from _cli import assert_refused, run_cli, snapshot
from organdetr.runtime.atomic import file_sha256
from organdetr.runtime.errors import InputError
from organdetr.runtime.locking import LOCK_NAME, folder_lock
from organdetr.runtime.text import brief
from organdetr.training.config import load_config
from organdetr.training.fit import fit
from test_predict import ras_scan
from test_preprocess import make_dataset

GRID = (32, 32, 32)
TRAIN = ("--set", "train.steps=1", "--set", "train.progress=false", "--set", "data.val_fraction=0")


def unchanged(root: Path) -> dict:
    return {k: v for k, v in snapshot(root).items() if not k.endswith(LOCK_NAME)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """``(cache, run)``: a run of one optimizer step (``last/`` with its optimizer state)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    cache = make_cache(root / "cache", num_cases=2, size=32)
    cfg = load_config("tiny", [f"data.cache_dir={cache}", *TRAIN[1::2]])
    fit(cfg, root / "run")
    return cache, root / "run"


@pytest.fixture
def trained_copy(trained, tmp_path) -> tuple[Path, Path]:
    cache, run = trained
    shutil.copytree(cache, tmp_path / "cache")
    shutil.copytree(run, tmp_path / "run")
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace(str(cache), str(tmp_path / "cache")))
    return tmp_path / "cache", tmp_path / "run"


# ----------------------------------------------------------------------------- point 3: the user's file


def test_train_never_replaces_the_users_config(tmp_path, capsys, monkeypatch):
    """``train config.yaml -o .``: the run's resolved config would land on the user's commented file."""
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("# my experiment: keep these notes\narch: organdetr\ntrain:\n  steps: 1\n")
    before = unchanged(tmp_path)
    result = run_cli(capsys, "train", "config.yaml", "--cache", cache, "-o", ".")
    assert_refused(result, "config.yaml", "is not a config organdetr wrote", "give another --output")
    assert unchanged(tmp_path) == before


# ----------------------------------------------------------------------------- point 4: resume


def test_resume_refuses_a_cache_made_again_with_other_settings(trained_copy, capsys):
    """After ``preprocess --overwrite`` with another HU window, ``best/`` and ``last/`` would mix two
    preprocessings: resume names what changed and the way out."""
    cache, run = trained_copy
    plans = json.loads((cache / "plans.json").read_text())
    plans["hu_window"] = [-200.0, 300.0]
    (cache / "plans.json").write_text(json.dumps(plans))
    before = unchanged(run)
    result = run_cli(capsys, "train", "--resume", run)
    assert_refused(result, cache / "plans.json", "hu_window", "start a new run")
    assert unchanged(run) == before


def test_resume_with_other_optimizer_groups_is_one_line(trained_copy, capsys):
    """A training state whose parameter groups are not the optimizer's (here: the deformable offsets get
    their own rate since) is named in one line, not a ValueError traceback."""
    cache, run = trained_copy
    result = run_cli(capsys, "train", "--resume", run, "--set", "optim.offset_lr_scale=0.1")
    assert_refused(result, run / "last" / "training_state.pt", "does not fit this run's optimizer")


# ----------------------------------------------------------------------------- point 5: temporaries


def test_a_killed_writers_case_record_is_not_ground_truth(tmp_path, capsys):
    """``cases/.<case>.<pid>.<random>.tmp.json`` of a killed ``preprocess`` is not a case of the cache."""
    cache = make_cache(tmp_path / "cache", num_cases=1, size=32)
    record = json.loads((cache / "cases" / "case_000.json").read_text())
    ghost = cache / "cases" / ".ghost.99999999.abcd1234.tmp.json"
    ghost.write_text(json.dumps({**record, "case_id": "ghost"}))
    pred = tmp_path / "pred"
    pred.mkdir()
    prediction = {"case_id": "case_000", "image": "x.nii.gz", "world_frame": "LPS", "detections": []}
    (pred / "case_000.json").write_text(json.dumps(prediction))
    code, _, err = run_cli(capsys, "evaluate", pred, cache, "-o", tmp_path / "report")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["missing_predictions"] == [], report["missing_predictions"]


# ----------------------------------------------------------------------------- point 7: bounded messages


def _alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML that expand to 9**levels strings (each level aliases the last 9 times)."""
    parts = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, levels)]
    return "train:\n  epochs: [" + ", ".join(parts) + "]\n"


def test_a_yaml_alias_bomb_gives_a_short_line(tmp_path, capsys):
    """366 bytes gave a 9.1 MB error line (and 470 bytes a MemoryError): every value shown is bounded."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(7))  # 9**7 = 4.8 million strings (a 33 MB line) if printed in full
    cache = make_cache(tmp_path / "cache", num_cases=1, size=32)
    line = assert_refused(run_cli(capsys, "train", config, "--cache", cache, "-o", tmp_path / "run"), config)
    assert "train.epochs: expected an integer" in line and len(line) < 600, len(line)
    assert not (tmp_path / "run").exists()


def test_brief_is_bounded_for_any_value():
    nested: list = ["x" * 10_000]
    for _ in range(50):
        nested = [nested] * 9
    assert len(brief(nested)) <= 120 and len(brief("y" * 10**6)) <= 120
    assert brief("liver") == "'liver'" and brief([1, 2]) == "[1, 2]"


# ----------------------------------------------------------------------------- point 8: lying metadata


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "run", CLASSES, GRID)


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("target_spacing", [-1.5, 1.5, 1.5], "target_spacing must be 3 positive numbers"),
        ("input_size", [float("nan"), 32, 32], "cannot convert float NaN to integer"),
        ("hu_window", [1000.0, -1000.0], "hu_window must be (low, high) with low < high"),
    ],
)
def test_a_checkpoint_whose_plans_lie_is_refused(tmp_path, capsys, checkpoint, key, value, problem):
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run)
    plans_path = run / "last" / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans_path.write_text(json.dumps({**plans, key: value}))  # NaN written as JSON's NaN, as json.dumps does
    state_path = run / "last" / "state.json"  # a consistent lie: the checksums are made to match
    state = json.loads(state_path.read_text())
    state["files"]["plans.json"] = {"bytes": plans_path.stat().st_size, "sha256": file_sha256(plans_path)}
    state_path.write_text(json.dumps(state))
    scan = ras_scan(tmp_path / "ct.nii.gz")
    result = run_cli(capsys, "predict", run, scan, "-o", tmp_path / "pred", "--no-progress")
    assert_refused(result, plans_path, "plans.json is not valid", problem)
    assert not (tmp_path / "pred").exists()


def test_a_cache_with_nan_spacing_is_refused(tmp_path, capsys):
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    plans = json.loads((cache / "plans.json").read_text())
    (cache / "plans.json").write_text(json.dumps({**plans, "target_spacing": [float("nan"), 1.5, 1.5]}))
    result = run_cli(capsys, "train", "tiny", "--cache", cache, "-o", tmp_path / "run", *TRAIN)
    assert_refused(result, cache / "plans.json", "target_spacing must be 3 positive numbers")
    assert not (tmp_path / "run").exists()


def test_deeply_nested_json_is_one_line_everywhere(tmp_path, capsys):
    """100k nested brackets made Python's JSON parser raise RecursionError: the one reader names the file."""
    bomb = "[" * 100_000 + "]" * 100_000
    cache = make_cache(tmp_path / "cache", num_cases=1, size=32)
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "case_000.json").write_text(bomb)
    result = run_cli(capsys, "evaluate", pred, cache, "-o", tmp_path / "report")
    assert_refused(result, pred / "case_000.json", "nested too deep")
    (cache / "plans.json").write_text(bomb)
    result = run_cli(capsys, "train", "tiny", "--cache", cache, "-o", tmp_path / "run", *TRAIN)
    assert_refused(result, cache / "plans.json", "nested too deep")


# ----------------------------------------------------------------------------- point 9: the rest


def test_evaluate_does_not_block_on_a_fifo(tmp_path, capsys):
    """A FIFO named ``x.json`` among the predictions: refused as not a regular file, never opened."""
    cache = make_cache(tmp_path / "cache", num_cases=1, size=32)
    pred = tmp_path / "pred"
    pred.mkdir()
    fifo = pred / "x.json"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock() -> None:  # should the reader block, give it an end of file after a while
        if not done.wait(20):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()
    try:
        result = run_cli(capsys, "evaluate", pred, cache, "-o", tmp_path / "report")
    finally:
        done.set()
    assert_refused(result, fifo, "not a regular file")


def test_simpleitk_warnings_do_not_leak_before_the_dicom_error(tmp_path, capfd):
    """GDCM printed ``WARNING: In .../itkGDCMSeriesFileNames.cxx ... No Series were found`` on stderr before
    the one-line error; stderr must hold nothing but what organdetr says."""
    from organdetr.io.images import read_image
    from test_predict import write_dicom_series

    folder = write_dicom_series(tmp_path / "series")
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[:-100])
    capfd.readouterr()
    with pytest.raises(InputError, match="holds no DICOM series"):
        read_image(folder)
    out, err = capfd.readouterr()
    assert out + err == "", err


def test_a_full_disk_during_evaluate_leaves_no_half_report(tmp_path, capsys, monkeypatch):
    import organdetr.runtime.atomic as atomic

    cache = make_cache(tmp_path / "cache", num_cases=1, size=32)
    pred = tmp_path / "pred"
    pred.mkdir()
    prediction = {"case_id": "case_000", "image": "x.nii.gz", "world_frame": "LPS", "detections": []}
    (pred / "case_000.json").write_text(json.dumps(prediction))
    report = tmp_path / "report"
    real_write_bytes = Path.write_bytes

    def full_on_markdown(self, data):
        if self.name.endswith(".md"):  # the third file of the report
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(atomic.Path, "write_bytes", full_on_markdown)
    result = run_cli(capsys, "evaluate", pred, cache, "-o", report)
    assert_refused(result, report, "disk full")
    assert not report.exists() or sorted(p.name for p in report.iterdir()) == []


def test_a_readers_lock_refusal_names_its_pid(tmp_path, capsys):
    root = make_dataset(tmp_path / "raw")
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    with folder_lock(cache, exclusive=False, purpose="organdetr train"):  # a training run reads the cache
        result = run_cli(capsys, "preprocess", root, cache, "--size", "32", "32", "32", "--overwrite")
    line = assert_refused(result, cache, "is being used by another organdetr process")
    if Path("/proc/locks").is_file():
        assert f"pid {os.getpid()}" in line, line


def test_scaled_voxels_keep_their_values(tmp_path):
    """The scaled files of point 6 read as the HU they encode (``scl_slope`` / ``scl_inter`` applied)."""
    import nibabel as nib

    from organdetr.io.images import read_image

    hu = np.arange(-1000, 1000, 10, dtype=np.int16).reshape(10, 10, 2)
    image = nib.Nifti1Image((hu.astype(np.int32) + 1024).astype(np.uint16), np.eye(4))
    image.header.set_slope_inter(1.0, -1024.0)
    nib.save(image, tmp_path / "ct.nii.gz")
    assert np.array_equal(read_image(tmp_path / "ct.nii.gz").array, hu)
