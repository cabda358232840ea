"""What ``predict`` writes never takes the place of another file: issue 21, points 1, 2, 5, 6 and 9.

Inputs sharing a name get ids whose files collide with nothing, an output that is an input is refused before
anything is written, a full disk stops the batch, a dead writer's temporary is neither data nor kept, a
247-character file name is written, two runs into one folder share one MONAI datalist, and scaled NIfTI files
(what dcm2niix writes for CT) predict the boxes of their unscaled twins. A random tiny checkpoint and 32^3
scans: each test takes seconds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _cache_factory import CLASSES, save_random_checkpoint
from _cli import assert_refused, run_cli, snapshot
from organdetr.runtime.atomic import is_temp_name
from organdetr.runtime.locking import LOCK_NAME
from test_predict import ras_scan

GRID = (32, 32, 32)
PREDICT = ("--no-overlay", "--no-progress", "--device", "cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "run", CLASSES, GRID)


def _jsons(folder: Path) -> dict[str, dict]:
    files = [p for p in sorted(folder.glob("*.json")) if not is_temp_name(p.name)]
    return {p.name: json.loads(p.read_text()) for p in files}


def test_inputs_sharing_a_name_never_overwrite_each_other(tmp_path, capsys, checkpoint):
    """d1/a, d2/a, d3/a_2: three scans, three predictions (the renamed second may not take a_2's name)."""
    scans = [ras_scan(tmp_path / d / name, seed=n) for n, (d, name) in enumerate(
        [("d1", "a.nii.gz"), ("d2", "a.nii.gz"), ("d3", "a_2.nii.gz")]
    )]  # fmt: skip
    out = tmp_path / "pred"
    code, stdout, err = run_cli(capsys, "predict", checkpoint, *scans, "-o", out, *PREDICT)
    assert code == 0, err
    predictions = _jsons(out)
    assert sorted(predictions) == ["a.json", "a_2.json", "a_3.json"], sorted(predictions)
    images = {name: Path(p["image"]) for name, p in predictions.items()}
    assert images == {"a.json": scans[0], "a_3.json": scans[1], "a_2.json": scans[2]}
    assert "predicted 3 of 3" in stdout


def test_case_files_never_meet_another_cases_files(tmp_path, capsys, checkpoint):
    """With --format slicer, case ``x`` writes ``x_boxes.mrk.json``: the JSON of a scan named
    ``x_boxes.mrk`` would be that file. The planner renames the second case instead."""
    pytest.importorskip("slicerio")
    folder = tmp_path / "scans"
    first, second = ras_scan(folder / "x.nii.gz"), ras_scan(folder / "x_boxes.mrk.nii.gz", seed=1)
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, "predict", checkpoint, folder, "-o", out, "--format", "slicer", *PREDICT)
    assert code == 0, err
    assert json.loads((out / "x.json").read_text())["image"] == str(first)
    assert json.loads((out / "x_boxes.mrk_2.json").read_text())["image"] == str(second)
    assert "markups" in json.loads((out / "x_boxes.mrk.json").read_text())  # x's markups, not replaced


def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path, capsys, checkpoint):
    """-o the input folder with --save-box-mask: scan ``liver``'s mask would be the input ``liver_boxes``."""
    folder = tmp_path / "scans"
    ras_scan(folder / "liver.nii.gz")
    other = ras_scan(folder / "liver_boxes.nii.gz", seed=1)
    before = snapshot(tmp_path)
    result = run_cli(capsys, "predict", checkpoint, folder, "-o", folder, "--save-box-mask", *PREDICT)
    assert_refused(result, other, "is an input of this run", "choose another --out")
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith(LOCK_NAME)}
    assert after == before  # the input scan is untouched and nothing was written
    code, _, err = run_cli(capsys, "predict", checkpoint, folder, "-o", folder, *PREDICT)
    assert code == 0, err  # without the box masks nothing collides: predicting beside the scans is fine
    assert sorted(_jsons(folder)) == ["liver.json", "liver_boxes.json"]


def _ct_with_air(path: Path, seed: int) -> Path:
    """``ras_scan`` with air in front of the body, so predict's CT check (issue 22) prints no warning and the
    only stderr line is the one under test."""
    ras_scan(path, seed=seed)
    image = nib.load(path)
    array = np.asarray(image.dataobj).copy()
    array[:, :4, :] = -1000
    nib.save(nib.Nifti1Image(array, image.affine, image.header), path)
    return path


def test_a_full_disk_stops_the_batch_at_the_first_scan(tmp_path, capsys, checkpoint, monkeypatch):
    """The README promises a batch stops on a full disk (every later scan would fail the same way)."""
    import organdetr.runtime.atomic as atomic

    scans = [_ct_with_air(tmp_path / "scans" / f"s{n}.nii.gz", seed=n) for n in range(3)]
    out = tmp_path / "pred"
    real_write_bytes, calls = Path.write_bytes, []

    def full_disk(self, data):
        if self.parent == out:
            calls.append(self.name)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(atomic.Path, "write_bytes", full_disk)
    result = run_cli(capsys, "predict", checkpoint, *scans, "-o", out, *PREDICT)
    line = assert_refused(result, out / "s0.json", "disk full")
    assert "free" in line and len(calls) == 1, calls  # stopped at the first scan's JSON
    assert [p.name for p in out.iterdir() if p.name != LOCK_NAME] == []  # and left no temporary


def test_a_dead_writers_temporary_is_not_data_and_the_next_run_removes_it(tmp_path, capsys, checkpoint):
    """kill -9 mid-predict leaves ``.<case>.<pid>.<random>.tmp.json``; ``evaluate`` must not read it as a
    second prediction of the case, and the next ``predict`` into the folder removes it."""
    from _cache_factory import make_cache

    cache = make_cache(tmp_path / "cache", num_cases=1, size=32)
    out = tmp_path / "pred"
    out.mkdir()
    dead = subprocess_pid_that_exited()
    prediction = {"case_id": "case_000", "image": "x.nii.gz", "world_frame": "LPS", "detections": []}
    (out / "case_000.json").write_text(json.dumps(prediction))
    stale = out / f".case_000.{dead}.abcd1234.tmp.json"
    stale.write_text(json.dumps(prediction))
    live = out / f".case_001.{os.getpid()}.abcd1234.tmp.json"  # a live writer's: kept
    live.write_text("{")
    code, _, err = run_cli(capsys, "evaluate", out, cache, "-o", tmp_path / "report")
    assert code == 0, err  # no "duplicate case id": the temporary is invisible
    scan = ras_scan(tmp_path / "s.nii.gz")
    code, _, err = run_cli(capsys, "predict", checkpoint, scan, "-o", out, *PREDICT)
    assert code == 0, err
    assert not stale.exists() and live.exists()


def subprocess_pid_that_exited() -> int:
    """The pid of a process that has ended (a killed writer's)."""
    import subprocess
    import sys

    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_247_character_file_name_is_written(tmp_path, capsys, checkpoint):
    """A valid name near the 255-byte limit: the temporary name may not be the one that is too long."""
    stem = "c" * (247 - len(".nii.gz"))
    scan = ras_scan(tmp_path / "scans" / f"{stem}.nii.gz")
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, "predict", checkpoint, scan, "-o", out, "--save-box-mask", *PREDICT)
    assert code == 0, err
    assert (out / f"{stem}.json").is_file() and (out / f"{stem}_boxes.nii.gz").is_file()


def test_two_predicts_into_one_folder_share_one_datalist(tmp_path, capsys, checkpoint):
    pytest.importorskip("monai")
    out = tmp_path / "pred"
    for name in ("first", "second"):
        scan = ras_scan(tmp_path / "scans" / f"{name}.nii.gz")
        code, _, err = run_cli(capsys, "predict", checkpoint, scan, "-o", out, "--format", "monai", *PREDICT)
        assert code == 0, err
    datalist = json.loads((out / "monai_datalist.json").read_text())
    assert sorted(Path(item["image"]).name for item in datalist["validation"]) == [
        "first.nii.gz",
        "second.nii.gz",
    ]


# ----------------------------------------------------------------------------- scaled NIfTI (point 6)


def _hu_volume() -> tuple[np.ndarray, np.ndarray]:
    """``(HU int16 [40, 36, 30], affine)``: the RAS phantom of ``ras_scan`` with even HU (halvable)."""
    rng = np.random.default_rng(0)
    hu = (rng.normal(-100, 30, size=(40, 36, 30)) // 2 * 2).astype(np.int16)
    hu[10:25, 8:20, 5:20] = 60
    affine = np.diag([1.5, 1.2, 3.0, 1.0])
    affine[:3, 3] = (-30.0, -20.0, -50.0)
    return hu, affine


def _save(path: Path, stored: np.ndarray, affine: np.ndarray, slope: float, inter: float) -> Path:
    image = nib.Nifti1Image(stored, affine)
    image.header.set_data_dtype(stored.dtype)
    image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_scaled_nifti_predicts_the_boxes_of_its_unscaled_twin(tmp_path, capsys, checkpoint, ending):
    """uint16 + scl_inter -1024 (dcm2niix's CT) and int16 + scl_slope 0.5 hold the same HU as the plain
    int16 file: all three load and give the same boxes."""
    hu, affine = _hu_volume()
    folder = tmp_path / "scans"
    folder.mkdir()
    plain = _save(folder / f"plain{ending}", hu, affine, 1.0, 0.0)
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    shifted = _save(folder / f"uint16_inter{ending}", stored, affine, 1.0, -1024.0)
    halved = _save(folder / f"int16_slope{ending}", (hu * 2).astype(np.int16), affine, 0.5, 0.0)
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, "predict", checkpoint, plain, shifted, halved, "-o", out, *PREDICT)
    assert code == 0, err
    boxes = {
        name: [(d["label"], d["box_mm"], round(d["score"], 5)) for d in pred["detections"]]
        for name, pred in _jsons(out).items()
    }
    assert len(boxes) == 3 and boxes["plain.json"]
    assert boxes["uint16_inter.json"] == boxes["plain.json"] == boxes["int16_slope.json"]


def test_a_truncated_scaled_nifti_is_still_refused(tmp_path, capsys, checkpoint):
    """The size check reads the on-disk datatype: a uint16 file cut short is named as truncated."""
    hu, affine = _hu_volume()
    path = _save(tmp_path / "cut.nii", (hu.astype(np.int32) + 1024).astype(np.uint16), affine, 1.0, -1024.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    result = run_cli(capsys, "predict", checkpoint, path, "-o", tmp_path / "pred", *PREDICT)
    code, _, err = result
    assert code == 1 and f"{path}: header claims {hu.size * 2} bytes" in " ".join(err.split()), err
    shutil.rmtree(tmp_path / "pred", ignore_errors=True)
