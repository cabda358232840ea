"""Cross-validation: `organdetr split` (nnU-Net v2 splits_final.json), `train --fold k`, out-of-fold
prediction and its evaluation, and the splits file read by nnU-Net v2 itself (where an interpreter with
nnunetv2 exists)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _cache_factory import CLASSES, phantom, save_random_checkpoint
from _cli import assert_refused, run_cli
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume
from organdetr.data.cache_dataset import split_cases
from organdetr.data.splits import SPLITS_FILE, crossval_splits
from organdetr.io.images import write_image
from organdetr.preprocessing.cache import list_cases, write_case
from organdetr.preprocessing.plans import PreprocessConfig, make_plans
from organdetr.preprocessing.resampling import preprocess_volume
from organdetr.runtime.atomic import write_json
from organdetr.runtime.errors import InputError

SIZE = 32
NUM_CASES = 7


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A 7-case phantom cache whose records name their original scans (NIfTI files beside it)."""
    root = tmp_path_factory.mktemp("cv")
    cfg = PreprocessConfig(input_size=(SIZE,) * 3, target_spacing=(1.5,) * 3)
    cache = root / "cache"
    write_json(cache / "plans.json", make_plans(cfg, CLASSES))
    geometry = Geometry((SIZE,) * 3, (1.5,) * 3, (-20.0, 10.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for n in range(NUM_CASES):
        image, labels = phantom(SIZE, n)
        path = root / "images" / f"case_{n:03d}_0000.nii.gz"
        path.parent.mkdir(exist_ok=True)
        write_image(path, image, geometry)
        grid, grid_labels, record = preprocess_volume(
            Volume(image, geometry), cfg, Volume(labels, geometry), CLASSES
        )
        record["image"] = str(path)
        write_case(cache, f"case_{n:03d}", grid, grid_labels, record)
    return cache


def test_folds_validate_every_case_exactly_once_and_never_train_on_it():
    ids = [f"c{n:02d}" for n in range(23)]
    splits = crossval_splits(ids, 5)
    assert len(splits) == 5
    val = [c for fold in splits for c in fold["val"]]
    assert sorted(val) == ids  # each case in exactly one val fold
    assert sorted(len(f["val"]) for f in splits) == [4, 4, 5, 5, 5]
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == ids
    assert crossval_splits(ids[::-1], 5) == splits  # order of the input does not matter
    assert crossval_splits(ids, 5, seed=1) != splits


def test_split_cli_writes_the_file_atomically_and_keeps_a_different_one(cache, capsys):
    code, out, err = run_cli(capsys, "split", cache, "--folds", "5")
    assert code == 0, err
    path = cache / SPLITS_FILE
    splits = json.loads(path.read_text())
    assert splits == crossval_splits(list_cases(cache), 5)
    assert sorted(c for fold in splits for c in fold["val"]) == list_cases(cache)  # each case validated once
    assert all(not set(f["train"]) & set(f["val"]) for f in splits)  # never trained on where validated
    assert "7 cases in 5 folds" in out
    assert run_cli(capsys, "split", cache, "--folds", "5")[0] == 0  # the same split again: fine
    assert_refused(run_cli(capsys, "split", cache, "--folds", "3"), path, "different splits", "--overwrite")
    assert json.loads(path.read_text()) == splits
    assert_refused(run_cli(capsys, "split", cache, "--folds", "8"), cache, "8 folds need at least 8 cases")
    assert run_cli(capsys, "split", cache, "--folds", "3", "--overwrite")[0] == 0
    assert len(json.loads(path.read_text())) == 3
    assert run_cli(capsys, "split", cache, "--folds", "5", "--overwrite")[0] == 0


def test_train_fold_uses_the_folds_cases_and_refuses_a_fold_that_does_not_exist(cache, capsys):
    run_cli(capsys, "split", cache, "--folds", "5", "--overwrite")
    splits = json.loads((cache / SPLITS_FILE).read_text())
    train, val = split_cases(list_cases(cache), 0.2, 0, cache_dir=cache, fold=3)
    assert (train, val) == (splits[3]["train"], splits[3]["val"])
    with pytest.raises(InputError, match="exclude each other"):
        split_cases(list_cases(cache), 0.2, 0, val_cases=["case_000"], cache_dir=cache, fold=0)
    out = cache.parent / "run_fold9"
    result = run_cli(capsys, "train", "tiny", "--cache", cache, "--fold", "9", "-o", out)
    assert_refused(result, cache / SPLITS_FILE, "fold 9 does not exist", "5 folds")
    assert not out.exists()


@pytest.fixture(scope="module")
def fold_runs(cache, tmp_path_factory) -> Path:
    """Five random tiny runs, one per fold, as `train --fold k` leaves them (config.yaml with data.fold)."""
    write_json(cache / SPLITS_FILE, crossval_splits(list_cases(cache), 5))
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("cv_runs")
    for k in range(5):
        save_random_checkpoint(
            runs / f"fold_{k}", CLASSES, (SIZE,) * 3, f"data.fold={k}", f"data.cache_dir={cache}"
        )
    return runs


def test_out_of_fold_predicts_each_case_once_with_the_model_that_did_not_train_on_it(
    cache, fold_runs, capsys
):
    oof = cache.parent / "oof"
    code, out, err = run_cli(
        capsys, "predict", "--folds", fold_runs, "--out-of-fold", "-o", oof, "--no-overlay",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    splits = json.loads((cache / SPLITS_FILE).read_text())
    files = sorted(p.stem for p in oof.glob("*.json"))
    assert files == list_cases(cache)  # every case exactly once
    for k, fold in enumerate(splits):
        for case in fold["val"]:
            model = json.loads((oof / f"{case}.json").read_text())["model"]
            assert model["checkpoint"] == str(fold_runs / f"fold_{k}")
    code, out, err = run_cli(capsys, "evaluate", oof, cache, "-o", oof / "evaluation")
    assert code == 0, err
    metrics = json.loads((oof / "evaluation" / "metrics.json").read_text())
    assert "mAP" in json.dumps(metrics)


def test_out_of_fold_refuses_a_missing_fold_and_folds_ensemble_new_scans(cache, fold_runs, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for k in (0, 1, 2, 4):
        (partial / f"fold_{k}").symlink_to(fold_runs / f"fold_{k}")
    result = run_cli(
        capsys, "predict", "--folds", partial, "--out-of-fold", "-o", tmp_path / "o", "--device", "cpu"
    )
    assert_refused(result, partial, "no run of fold(s) 3")
    scan = Path(json.loads((cache / "cases" / "case_000.json").read_text())["image"])
    code, out, err = run_cli(
        capsys, "predict", "--folds", fold_runs, scan, "-o", tmp_path / "ens", "--no-overlay",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "5 model(s) x 1 view(s)" in out
    model = json.loads((tmp_path / "ens" / "case_000.json").read_text())["model"]
    assert [m["run"] for m in model["members"]] == [str(fold_runs / f"fold_{k}") for k in range(5)]
    assert model["tta"]["used"] is False
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(
        run_cli(capsys, "predict", "--folds", empty, scan, "-o", tmp_path / "e"), empty, "no fold runs"
    )


# ----------------------------------------------------------------------------- nnU-Net v2 reads the file

NNUNET_CHECK = r"""
import json, sys
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.crossval_split import generate_crossval_split

folder, case_ids = sys.argv[1], json.loads(sys.argv[2])
splits = load_json(folder + "/splits_final.json")

class Dataset:  # nnU-Net's dataset class, holding the same dataset's case identifiers
    def __init__(self, *args, **kwargs):
        self.identifiers = case_ids

class Trainer:  # what nnUNetTrainer.do_split reads from self
    dataset_class = Dataset
    preprocessed_dataset_folder = preprocessed_dataset_folder_base = folder
    folder_with_segs_from_previous_stage = None
    log = []
    def print_to_log_file(self, *args, **kwargs):
        self.log.append(" ".join(map(str, args)))

result = []
for fold in range(len(splits)):
    trainer = Trainer()
    trainer.fold = fold
    train, val = nnUNetTrainer.do_split(trainer)
    result.append({"train": [str(c) for c in train], "val": [str(c) for c in val], "log": trainer.log})
own = generate_crossval_split(sorted(case_ids), seed=12345, n_splits=5)
own = [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in own]
print(json.dumps({"folds": result, "nnunet_own_split": own}))
"""


def nnunet_python() -> str | None:
    """An interpreter that imports nnunetv2: this one, $ORGANDETR_NNUNET_PYTHON, or /tmp/nnunet-venv."""
    candidates = [sys.executable, os.environ.get("ORGANDETR_NNUNET_PYTHON"), "/tmp/nnunet-venv/bin/python"]
    for python in filter(None, candidates):
        if shutil.which(python) or Path(python).is_file():
            probe = subprocess.run([python, "-c", "import nnunetv2"], capture_output=True, check=False)
            if probe.returncode == 0:
                return python
    return None


def test_nnunet_v2_reads_the_splits_file_for_the_same_dataset(cache, capsys):
    """nnU-Net v2's own loader and trainer split logic take the file: every fold gives our train / val lists
    with no warning, and nnU-Net's own 5-fold split of the dataset is the same file."""
    python = nnunet_python()
    if python is None:
        pytest.skip("no interpreter with nnunetv2 (pip install nnunetv2, or set ORGANDETR_NNUNET_PYTHON)")
    assert run_cli(capsys, "split", cache, "--folds", "5", "--overwrite")[0] == 0
    ids = list_cases(cache)
    proc = subprocess.run(
        [python, "-c", NNUNET_CHECK, str(cache), json.dumps(ids)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = json.loads((cache / SPLITS_FILE).read_text())
    assert [{"train": f["train"], "val": f["val"]} for f in answer["folds"]] == ours
    for fold in answer["folds"]:
        log = " ".join(fold["log"])
        assert "Using splits from existing split file" in log and "WARNING" not in log and "random" not in log
    assert answer["nnunet_own_split"] == ours
    assert np.array_equal(sorted(c for f in ours for c in f["val"]), ids)
