"""Every verb refuses what lies: exit code 2, one line naming the file, and nothing created or changed.

Each case is built on disk, then run through the real entry point (``organdetr.cli.main``, in-process for
speed). "Nothing changed" is checked on every file under the test folder (content hashes), the folder
locks (``.organdetr.lock``, bookkeeping only) aside.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from _bad_files import write_header_bomb, write_metaimage, write_nifti
from _cache_factory import CLASSES, make_cache, save_random_checkpoint
from _cli import assert_refused, assert_usage_error, run_cli, snapshot
from organdetr.runtime.locking import LOCK_NAME, folder_lock
from test_io import write_dicom_series
from test_predict import ras_scan
from test_preprocess import TINY, make_dataset

GRID = (32, 32, 32)


def flat(text: str) -> str:
    """Console text with rich's line wrapping undone."""
    return " ".join(text.split())


def unchanged(root: Path) -> dict:
    return {k: v for k, v in snapshot(root).items() if not k.endswith(LOCK_NAME)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "run", CLASSES, GRID)


@pytest.fixture
def cache(tmp_path) -> Path:
    return make_cache(tmp_path / "cache", num_cases=2, size=32)


@contextlib.contextmanager
def read_only(*folders: Path):
    """Make folders unwritable for real: ``chattr +i`` as root (who ignores permission bits), else chmod."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a folder read-only")
        for folder in folders:
            if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not supported on this file system")
        try:
            yield
        finally:
            for folder in folders:
                subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        return
    modes = {folder: folder.stat().st_mode for folder in folders}
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)


# ----------------------------------------------------------------------------- scans that lie


@pytest.mark.parametrize("name", ["bomb.nii.gz", "bomb.mha"])
def test_boxes_refuses_a_header_bomb(tmp_path, capsys, name):
    bomb = write_header_bomb(tmp_path / name)
    before = unchanged(tmp_path)
    result = run_cli(capsys, "boxes", bomb, "-o", tmp_path / "boxes.json")
    assert_refused(result, bomb, "header claims", "3906250000")
    assert unchanged(tmp_path) == before


@pytest.mark.parametrize("case", ["pixdim0", "shear"])
def test_boxes_refuses_impossible_geometry(tmp_path, capsys, case):
    if case == "pixdim0":
        path = write_nifti(tmp_path / "seg.nii.gz", (8, 7, 6), pixdim=(0.0, 1.0, 1.0))
        fragment = "pixdim [0, 1, 1]"
    else:
        path = write_metaimage(tmp_path / "seg.mha", TransformMatrix="1 0 0 0.5 1 0 0 0 1")
        fragment = "not orthonormal"
    before = unchanged(tmp_path)
    assert_refused(run_cli(capsys, "boxes", path, "-o", tmp_path / "b.csv"), path, fragment)
    assert unchanged(tmp_path) == before


def test_predict_refuses_a_dicom_series_with_a_missing_slice_unless_asked(tmp_path, capsys, checkpoint):
    from _bad_files import break_dicom_series
    from organdetr.core.geometry import Geometry

    geometry = Geometry((24, 20, 8), (1.5, 1.5, 3.0), (-20.0, -10.0, -50.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder = tmp_path / "series"
    hu = np.full(geometry.size, -1000, np.int16)  # air around a soft-tissue block: a CT in HU
    hu[4:20, 4:16, :] = 40
    write_dicom_series(folder, hu, geometry)
    break_dicom_series(folder, "gap")
    code, _, err = run_cli(capsys, "predict", checkpoint, folder, "-o", tmp_path / "pred", "--no-overlay")
    assert code == 1 and f"{folder}: DICOM series is not a regular grid (1 slice(s) missing" in flat(err)
    assert not (tmp_path / "pred" / "series.json").exists()
    args = [
        "predict",
        checkpoint,
        folder,
        "-o",
        tmp_path / "pred",
        "--no-overlay",
        "--resample-uneven-slices",
        "--score-threshold",  # no warning about the random model's missing validated threshold
        "0",
    ]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    prediction = json.loads((tmp_path / "pred" / "series.json").read_text())
    assert (
        len(prediction["warnings"]) == 1 and "resampled linearly onto 8 slices" in prediction["warnings"][0]
    )
    assert prediction["original"]["size"] == [24, 20, 8] and prediction["original"]["spacing"][2] == 3.0


# ----------------------------------------------------------------------------- outputs checked first


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, capsys, checkpoint):
    scan = ras_scan(tmp_path / "ct.nii.gz")
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    labels = tmp_path / "seg.nii.gz"
    shutil.copy(scan, labels)  # int16 HU >= -1000: negative ids, but -o is checked before reading
    dataset = make_dataset(tmp_path / "raw")
    before = unchanged(tmp_path)
    assert_refused(run_cli(capsys, "predict", checkpoint, scan, "-o", a_file), a_file, "is an existing file")
    assert_refused(run_cli(capsys, "export", checkpoint, a_folder), a_folder, "existing folder")
    assert_refused(run_cli(capsys, "boxes", labels, "-o", a_folder), a_folder, "existing folder")
    assert_refused(run_cli(capsys, "evaluate", a_folder, a_folder, "-o", a_file), a_file, "existing file")
    assert_refused(run_cli(capsys, "demo", "-o", a_file), a_file, "existing file")
    assert_refused(run_cli(capsys, "benchmark", "matching", "-o", a_file), a_file, "existing file")
    assert_refused(run_cli(capsys, "preprocess", dataset, a_file), a_file, "existing file")
    assert unchanged(tmp_path) == before


def test_option_values_are_refused(tmp_path, capsys, checkpoint):
    scan = ras_scan(tmp_path / "ct.nii.gz")
    before = unchanged(tmp_path)
    result = run_cli(capsys, "predict", checkpoint, scan, "-o", tmp_path / "p", "--score-threshold", "nan")
    assert_usage_error(result, "--score-threshold")
    assert_usage_error(run_cli(capsys, "demo", "--threads", "0", "-o", tmp_path / "d"), "--threads")
    result = run_cli(capsys, "benchmark", "matching", "--threads", "0", "-o", tmp_path / "b")
    assert_usage_error(result, "--threads")
    missing = tmp_path / "no_such_pack"
    assert_refused(
        run_cli(capsys, "demo", "--shared-data", missing, "-o", tmp_path / "d"), missing, "not found"
    )
    assert_refused(
        run_cli(capsys, "export", checkpoint, tmp_path / "m.onnx", "--opset", "3"), "--opset 3", "14.."
    )
    assert unchanged(tmp_path) == before


def test_evaluate_refuses_scores_and_label_ids_that_lie(tmp_path, capsys, cache):
    record = json.loads((cache / "cases" / "case_000.json").read_text())
    box = record["boxes"][0]
    good = {"label": box["name"], "label_id": box["label_id"], "score": 0.9, "box_mm": box["box_mm"]}
    for name, change, fragment in [
        ("score", {"score": 1.5}, "expected a number in [0, 1]"),
        ("nan", {"score": float("nan")}, "expected a number in [0, 1]"),
        ("label_id", {"label_id": 4}, "is label id 1 in the class map, but the detection says label_id 4"),
    ]:
        pred = tmp_path / f"pred_{name}"
        pred.mkdir()
        path = pred / "case_000.json"
        path.write_text(json.dumps({"case_id": "case_000", "detections": [{**good, **change}]}))
        before = unchanged(tmp_path)
        assert_refused(run_cli(capsys, "evaluate", pred, cache), path, fragment)
        assert unchanged(tmp_path) == before and not (pred / "evaluation").exists()


# ----------------------------------------------------------------------------- training inputs


def test_train_refuses_a_nan_learning_rate(tmp_path, capsys, cache):
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "tiny", "--cache", cache, "-o", run, "--set", "optim.lr=.nan")
    assert_refused(result, "tiny.yaml", "optim.lr: expected a finite number, got nan")
    assert not run.exists()


@pytest.mark.parametrize("damage", ["truncated", "nan"])
def test_train_names_a_broken_cache_file_before_training(tmp_path, capsys, cache, damage):
    image = cache / "cases" / "case_001_image.npy"
    if damage == "truncated":
        image.write_bytes(image.read_bytes()[:-1000])
        fragment = "array file has"
    else:  # same size, one NaN voxel: the checksum (and the NaN scan) catch it
        array = np.load(image)
        array[3, 4, 5] = np.nan
        np.save(image, array)
        fragment = "SHA-256"
    run = tmp_path / "run"
    before = unchanged(tmp_path)
    args = ["train", "tiny", "--cache", cache, "-o", run, "--set", "train.epochs=1"]
    assert_refused(run_cli(capsys, *args), image, fragment)
    assert not run.exists() and unchanged(tmp_path) == before


def test_nan_in_a_cache_without_checksums_is_named_at_load(tmp_path, cache):
    from organdetr.data.cache_dataset import CacheDataset
    from organdetr.preprocessing.cache import verify_cases
    from organdetr.preprocessing.plans import load_plans
    from organdetr.runtime.errors import InputError

    record_path = cache / "cases" / "case_001.json"
    record = json.loads(record_path.read_text())
    del record["arrays"]  # a record of an older organdetr
    record_path.write_text(json.dumps(record))
    image = cache / "cases" / "case_001_image.npy"
    array = np.load(image)
    array[0, 0, 0] = np.inf
    np.save(image, array)
    with pytest.raises(InputError, match=f"{image}: cached array holds 1 NaN/inf"):
        verify_cases(cache, ["case_000", "case_001"], load_plans(cache))
    with pytest.raises(InputError, match=f"{image}: cached image holds 1 NaN/inf"):
        CacheDataset(cache)[1]


def test_train_resume_refuses_a_pickled_training_state_in_one_line(tmp_path, capsys, cache):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    run = save_random_checkpoint(tmp_path / "run", CLASSES, GRID)
    shutil.copy(run / "last" / "config.yaml", run / "config.yaml")
    state = run / "last" / "training_state.pt"
    torch.save({"optimizer": Payload()}, state)
    before = unchanged(tmp_path)
    result = run_cli(capsys, "train", "--resume", run, "--cache", cache)
    assert_refused(result, state, "unsafe training state, refused")
    assert "unpickled code ran" not in result[1] + result[2]
    assert unchanged(tmp_path) == before


# ----------------------------------------------------------------------------- caches


def test_preprocess_redoes_a_truncated_case(tmp_path, capsys):
    from organdetr.preprocessing.cache import is_complete
    from organdetr.preprocessing.plans import load_plans

    root = make_dataset(tmp_path / "raw")
    cache = tmp_path / "cache"
    args = ["preprocess", root, cache, "--size", *map(str, TINY.input_size)]
    assert run_cli(capsys, *args)[0] == 0
    image = cache / "cases" / "case_01_image.npy"
    image.write_bytes(image.read_bytes()[:-64])  # the case JSON still exists: it must not count as done
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "1 preprocessed, 1 already there, 0 failed" in flat(err)
    assert all(is_complete(cache, c, load_plans(cache)) for c in ("case_00", "case_01"))


def test_preprocess_on_a_read_only_cache(tmp_path, capsys):
    root = make_dataset(tmp_path / "raw")
    cache = tmp_path / "cache"
    args = ["preprocess", root, cache, "--size", *map(str, TINY.input_size)]
    assert run_cli(capsys, *args)[0] == 0
    before = unchanged(tmp_path)
    with read_only(cache, cache / "cases"):  # complete: verified, nothing rewritten (plans.json included)
        code, _, err = run_cli(capsys, *args)
    assert code == 0 and "0 preprocessed, 2 already there" in flat(err) and unchanged(tmp_path) == before
    (cache / "cases" / "case_01.json").unlink()
    before = unchanged(tmp_path)
    with read_only(cache, cache / "cases"):
        assert_refused(run_cli(capsys, *args), cache, "cannot write the cache", "1 case(s) to preprocess")
    assert unchanged(tmp_path) == before


def test_preprocess_and_train_refuse_a_locked_folder(tmp_path, capsys, cache):
    root = make_dataset(tmp_path / "raw")
    before = unchanged(tmp_path)
    with folder_lock(cache, exclusive=False, purpose="organdetr train"):  # a training run reads the cache
        result = run_cli(capsys, "preprocess", root, cache, "--size", "32", "32", "32", "--overwrite")
        assert_refused(result, cache, "is being used by another organdetr process")
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run, exclusive=True, purpose="organdetr train"):
        result = run_cli(capsys, "train", "tiny", "--cache", cache, "-o", run, "--set", "train.epochs=1")
        assert_refused(result, run, f"(organdetr train, pid {os.getpid()}")
    assert unchanged(tmp_path) == before


def test_preprocess_stops_with_one_line_when_the_disk_is_full(tmp_path, capsys, monkeypatch):
    import numpy.lib.format

    import organdetr.runtime.atomic

    root = make_dataset(tmp_path / "raw")
    cache = tmp_path / "cache"

    def full_disk(fh, array, *args, **kwargs):
        fh.write(b"\x93NUMPY")  # a partial write, then numpy's short-write error (no errno)
        raise OSError("884736 requested and 400352 written")

    monkeypatch.setattr(numpy.lib.format, "write_array", full_disk)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(organdetr.runtime.atomic.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    result = run_cli(capsys, "preprocess", root, cache, "--size", *map(str, TINY.input_size))
    line = assert_refused(result, cache / "cases" / "case_00_image.npy", "disk full")
    assert "failed:" not in result[2] and "0.0 MiB free" in line  # the batch stopped at the first case
    assert sorted(p.name for p in (cache / "cases").iterdir()) == []  # no half-written file
