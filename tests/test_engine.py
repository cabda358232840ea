"""Engine: lr schedule, optimizer groups, a short fit with its outputs, exact resume, the CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from _cache_factory import make_cache  # tests/ is on sys.path (pytest rootdir import mode)
from organdetr.runtime.errors import InputError
from organdetr.training.config import OptimConfig, load_config
from organdetr.training.fit import fit
from organdetr.training.optim import build_optimizer, lr_factor

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"), num_cases=2, size=32)


def _cfg(cache, *extra):
    return load_config(
        "tiny",
        [
            f"data.cache_dir={cache}",
            "data.val_fraction=0",
            "train.epochs=3",
            "train.log_every=1",
            "train.progress=false",
            "optim.warmup_steps=2",
            *extra,
        ],
    )


def test_lr_schedule_shapes():
    cos = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_factor(s, 20, cos) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 20, cos) == pytest.approx(1.0)
    assert lr_factor(12, 20, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(20, 20, cos) == pytest.approx(0.1)
    step = OptimConfig(lr=1.0, warmup_steps=0, schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    assert [lr_factor(s, 100, step) for s in (0, 49, 50, 74, 75)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_optimizer_groups_backbone_lr_and_no_decay_on_norms():
    from organdetr.models import build_detector

    cfg = load_config("tiny", ["optim.backbone_lr_scale=0.1", "optim.lr=1e-3"])
    det = build_detector(cfg.arch, cfg.model, cfg.matcher, cfg.loss, 4, (32, 32, 32))
    opt = build_optimizer(det, cfg.optim)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] > 0
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in det.parameters() if p.requires_grad)


def test_fit_writes_run_folder(cache, tmp_path):
    run = fit(_cfg(cache, "train.epochs=2"), tmp_path / "run")
    for name in (
        "config.yaml",
        "plans.json",
        "train_log.csv",
        "curves.png",
        "last/model.safetensors",
        "last/state.json",
        "last/training_state.pt",
        "last/config.yaml",
    ):
        assert (run / name).is_file(), name
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["step"] == 4 and state["steps_per_epoch"] == 2
    rows = list(csv.DictReader((run / "train_log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "loss_class", "loss_bbox", "loss_giou", "loss_seg", "lr"} <= set(rows[0])
    assert load_config(run / "config.yaml") == _cfg(cache, "train.epochs=2")
    assert [p.name for p in run.glob(".*")] == [".organdetr.lock"]  # no temporary folders left behind


def test_resume_is_exact(cache, tmp_path):
    """Train 6 steps straight == train 3 (stop mid-epoch), resume, train 3 more: same weights."""
    extra = ("optim.ema=true", "augment.p_spatial=1.0")
    straight = fit(_cfg(cache, *extra), tmp_path / "straight")
    fit(_cfg(cache, *extra), tmp_path / "split", stop_at_step=3)
    assert json.loads((tmp_path / "split" / "last" / "state.json").read_text())["step"] == 3
    resumed = fit(_cfg(cache, *extra), tmp_path / "split", resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(straight / "last" / name), load_file(resumed / "last" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=f"{name}:{key}")
    rows = list(csv.DictReader((resumed / "train_log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # no duplicated rows after the resume


def test_resume_without_checkpoint_is_an_input_error(cache, tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        fit(_cfg(cache), tmp_path / "empty", resume=True)


def test_missing_cache_dir_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="data.cache_dir"):
        fit(load_config("tiny"), tmp_path / "run")


def test_cli_train_preset_and_resume(cache, tmp_path):
    from organdetr.cli import app

    run = tmp_path / "cli_run"
    args = [
        "train",
        "tiny",
        "--cache",
        str(cache),
        "--output",
        str(run),
        "--set",
        "train.epochs=1",
        "--set",
        "data.val_fraction=0",
        "--set",
        "train.progress=false",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "last" / "model.safetensors").is_file() and str(run) in result.output
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 4


def test_cli_unknown_key_is_one_line_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from organdetr.cli import main; main()",
            "train",
            "tiny",
            "--set",
            "optim.lrr=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "unknown key 'optim.lrr'" in proc.stderr and "Traceback" not in proc.stderr


def test_validation_scores_in_mm_and_keeps_best(cache, tmp_path, monkeypatch):
    """Validation goes through evaluate_detections with mm boxes; a spy records the call, fakes the mAP."""
    import types

    import numpy as np

    import organdetr.training.validation

    calls = []

    def evaluate_detections(detections, ground_truth, classes, *, max_detections=1, mode="coco"):
        calls.append((detections, ground_truth, classes, max_detections, mode))
        return types.SimpleNamespace(summary={"mAP": 0.1 * len(calls), "AP50": 0.5, "per_class": {}})

    monkeypatch.setattr(organdetr.training.validation, "evaluate_detections", evaluate_detections)
    run = fit(_cfg(cache, "data.val_cases=[case_001]", "train.epochs=2"), tmp_path / "run")
    assert len(calls) == 2
    detections, ground_truth, classes, max_det, mode = calls[-1]
    assert classes == ["liver", "kidney_left", "kidney_right", "spleen"] and max_det == 1 and mode == "coco"
    assert {d.case_id for d in detections} == {"case_001"} and len(detections) == 4  # one per class
    assert len(ground_truth) == 4
    record = json.loads((cache / "cases" / "case_001.json").read_text())
    lo_mm = np.min([b["box_mm"][:3] for b in record["boxes"]], axis=0) - 30
    hi_mm = np.max([b["box_mm"][3:] for b in record["boxes"]], axis=0) + 30
    for d in detections:  # boxes are in the scan's mm frame, not voxels of the grid
        assert (
            np.all(d.box_mm[:3] <= d.box_mm[3:])
            and np.all(d.box_mm[:3] >= lo_mm)
            and np.all(d.box_mm[3:] <= hi_mm)
        )
    rows = list(csv.DictReader((run / "val_log.csv").read_text().splitlines()))
    assert [float(r["mAP"]) for r in rows] == pytest.approx([0.1, 0.2])
    assert json.loads((run / "best" / "state.json").read_text())["best_step"] == 2


def test_validation_with_real_evaluator(cache, tmp_path):
    run = fit(_cfg(cache, "data.val_cases=[case_001]", "train.epochs=1"), tmp_path / "run")
    rows = list(csv.DictReader((run / "val_log.csv").read_text().splitlines()))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["mAP"]) <= 1.0
    assert (run / "best" / "model.safetensors").is_file()
