"""Runs that collide and runs that die: two writers on one cache, ``kill -9`` mid-preprocess and
mid-checkpoint, ``--workers`` children of a killed parent. Real subprocesses, tiny phantoms."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _cache_factory import make_cache
from _procs import kill_parent_and_check_workers
from organdetr.preprocessing.cache import is_complete, list_cases, verify_case
from organdetr.preprocessing.plans import load_plans
from organdetr.runtime.atomic import is_temp_name
from test_preprocess import make_dataset

CLI = [sys.executable, "-c", "from organdetr.cli import main; main()"]


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if is_temp_name(p.name)]


def test_two_preprocess_runs_into_one_cache_never_mix(tmp_path):
    root = make_dataset(tmp_path / "raw", n_good=6)
    cache = tmp_path / "cache"
    runs = [
        subprocess.Popen(
            [*CLI, "preprocess", str(root), str(cache), "--size", size, size, "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
        )
        for size in ("16", "24")
    ]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    error = [line for line in loser.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and str(cache) in error[0], loser
    assert "being used by another organdetr process" in error[0] or "different settings" in error[0]
    plans = load_plans(cache)
    assert list_cases(cache) == [f"case_{i:02d}" for i in range(6)]
    for case_id in list_cases(cache):  # every case on the grid plans.json names, checksums intact
        assert verify_case(cache, case_id, plans=plans)["grid"]["size"] == plans["input_size"]


def test_kill_mid_preprocess_then_rerun_completes_and_cleans(tmp_path):
    root = make_dataset(tmp_path / "raw", n_good=8)
    cache = tmp_path / "cache"
    args = [*CLI, "preprocess", str(root), str(cache), "--size", "16", "16", "8"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace"
    )
    cases = cache / "cases"
    _wait_for(lambda: cases.is_dir() and any(cases.iterdir()), 120, "the first cache file", proc)
    time.sleep(random.uniform(0.0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (cases / ".case_05_label.k1ll3d.tmp.npy").write_bytes(b"half")  # what a killed writer leaves
    rerun = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    plans = load_plans(cache)
    assert list_cases(cache) == [f"case_{i:02d}" for i in range(8)]
    assert all(is_complete(cache, case_id, plans) for case_id in list_cases(cache))
    assert _temps(cache) == []


def test_preprocess_workers_die_with_their_parent(tmp_path):
    root = make_dataset(tmp_path / "raw", n_good=8)
    args = [
        *CLI,
        "preprocess",
        str(root),
        str(tmp_path / "cache"),
        "--size",
        "16",
        "16",
        "8",
        "--workers",
        "2",
    ]
    kill_parent_and_check_workers(args)


_TRAIN_FOREVER = """
import sys, torch
torch.set_num_threads(1)
from organdetr.training.config import load_config
from organdetr.training.fit import fit
fit(load_config("tiny", sys.argv[2:]), sys.argv[1])
"""


def test_kill_mid_checkpoint_then_resume_finds_a_verified_checkpoint(tmp_path):
    from organdetr.training.checkpoint import (
        load_checkpoint,
        read_state,
        resolve_checkpoint_dir,
        verify_checkpoint,
    )
    from organdetr.training.config import load_config
    from organdetr.training.fit import fit

    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    run = tmp_path / "run"
    overrides = [
        f"data.cache_dir={cache}",
        "data.val_fraction=0",
        "data.batch_size=2",
        "data.num_workers=0",
        "train.val_every=0",
        "train.progress=false",
        "train.log_every=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAIN_FOREVER, str(run), *overrides, "train.epochs=100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env=env,
    )
    # a checkpoint every step (2 cases, batch 2): kill while one is being written, at a random moment
    _wait_for(lambda: (run / "last" / "state.json").is_file(), 180, "the first checkpoint", proc)
    _wait_for(
        lambda: any(is_temp_name(p.name) for p in run.iterdir()), 60, "a checkpoint being written", proc
    )
    time.sleep(random.uniform(0.0, 0.02))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    ckpt = resolve_checkpoint_dir(run, names=("last", ".last.old"))  # complete and verified, or the old one
    saved = read_state(ckpt)
    step, per_epoch = int(saved["step"]), int(saved["steps_per_epoch"])
    assert per_epoch == 1 and step >= 1
    torch.set_num_threads(1)
    fit(load_config("tiny", [*overrides, f"train.epochs={step + 1}"]), run, resume=True)
    state = verify_checkpoint(run / "last")
    assert state["step"] == step + 1
    assert _temps(run) == [] and not (run / ".last.old").exists()
    assert json.loads((run / "last" / "state.json").read_text())["files"].keys() >= {"model.safetensors"}
    from organdetr.models import build_detector

    cfg = load_config("tiny", overrides)
    detector = build_detector(cfg.arch, cfg.model, cfg.matcher, cfg.loss, 4, (32, 32, 32))
    assert load_checkpoint(run, detector)["step"] == step + 1
