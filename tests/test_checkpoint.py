"""Checkpoints: safetensors + weights_only state round trip, atomic swap, load_detector, bad files."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from organdetr.runtime.errors import InputError
from organdetr.training import checkpoint
from organdetr.training.checkpoint import (
    load_checkpoint,
    load_detector,
    read_state,
    resolve_checkpoint_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from organdetr.training.config import dump_config, load_config


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _train_step(model, opt):
    loss = model(torch.randn(3, 4)).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_round_trip_weights_optimizer_and_state(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train_step(model, opt)
    save_checkpoint(tmp_path / "last", model, {"step": 7, "best_metric": 0.5}, optimizer=opt)
    other = _model(seed=1)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path / "last", other, optimizer=other_opt)
    assert state["step"] == 7 and state["best_metric"] == 0.5
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    _train_step(model, opt)
    torch.manual_seed(3)
    _train_step(other, other_opt)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)  # the optimizer moments came back too


def test_rng_state_round_trip():
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_training_state_loads_with_weights_only(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    _train_step(model, opt)
    save_checkpoint(tmp_path / "ck", model, {"step": 1}, optimizer=opt)
    blob = torch.load(tmp_path / "ck" / "training_state.pt", weights_only=True)
    assert {"optimizer", "rng"} <= set(blob)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    save_checkpoint(tmp_path / "last", model, {"step": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.atomic, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "last", _model(seed=5), {"step": 2})
    assert json.loads((tmp_path / "last" / "state.json").read_text())["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary folder left


def test_interrupted_swap_is_recovered(tmp_path):
    save_checkpoint(tmp_path / "last", _model(), {"step": 3})
    (tmp_path / "last").rename(tmp_path / ".last.old")  # crash between the two renames
    assert resolve_checkpoint_dir(tmp_path) == tmp_path / ".last.old"


def test_corrupt_and_mismatched_weights_are_input_errors(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1})
    with pytest.raises(InputError, match="model.safetensors: weights do not fit"):
        load_checkpoint(tmp_path / "ck", nn.Linear(4, 2))
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ck", _model())
    with pytest.raises(InputError, match="not a checkpoint"):
        resolve_checkpoint_dir(tmp_path)
    with pytest.raises(InputError, match="no such run"):
        resolve_checkpoint_dir(tmp_path / "missing")


def test_load_detector_from_run_folder(tmp_path):
    from organdetr.models import build_detector

    cfg = load_config("tiny")
    plans = {"input_size": [32, 32, 32], "classes": {"1": "liver", "3": "spleen"}}
    det = build_detector(cfg.arch, cfg.model, cfg.matcher, cfg.loss, 2, (32, 32, 32))
    run = tmp_path / "run"
    save_checkpoint(run / "last", det, {"step": 5}, config_yaml=dump_config(cfg), plans=plans)
    loaded, loaded_cfg, loaded_plans = load_detector(run)
    assert loaded_cfg == cfg and loaded_plans == plans and not loaded.training
    for (name, a), (_, b) in zip(det.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(1, 1, 32, 32, 32)
    det.eval()
    torch.testing.assert_close(loaded.detect(x)[0]["boxes"], det.detect(x)[0]["boxes"])
    assert load_detector(run / "last" / "model.safetensors")[2] == plans  # a checkpoint file works too


def test_corrupt_checkpoint_is_named_and_the_previous_one_is_used(tmp_path):
    from organdetr.training.checkpoint import verify_checkpoint

    save_checkpoint(tmp_path / "last", _model(), {"step": 1})
    shutil.copytree(tmp_path / "last", tmp_path / "previous")
    save_checkpoint(tmp_path / "last", _model(seed=5), {"step": 2})
    (tmp_path / "previous").rename(tmp_path / ".last.old")  # as a swap leaves it until its clean-up
    weights = tmp_path / "last" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # same size, one bit pattern changed: only the checksum sees it
    weights.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="model.safetensors: checkpoint file does not match the SHA-256"):
        verify_checkpoint(tmp_path / "last")
    with pytest.warns(UserWarning, match="skipped a broken checkpoint"):
        assert resolve_checkpoint_dir(tmp_path, names=("last", ".last.old")) == tmp_path / ".last.old"
    (tmp_path / ".last.old" / "training_state.pt").unlink(missing_ok=True)
    (tmp_path / ".last.old" / "model.safetensors").unlink()
    with pytest.raises(InputError, match="last/model.safetensors: checkpoint file does not match"):
        resolve_checkpoint_dir(tmp_path, names=("last", ".last.old"))


def test_save_after_an_interrupted_swap_never_loses_the_last_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last", _model(), {"step": 3})
    (tmp_path / "last").rename(tmp_path / ".last.old")  # killed between the two renames
    real_replace = os.replace

    def dies_at_the_final_rename(src, dst):
        if Path(src).name.startswith(".last.tmp-"):
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dies_at_the_final_rename)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(tmp_path / "last", _model(seed=5), {"step": 4})
    assert read_state(resolve_checkpoint_dir(tmp_path))["step"] == 3  # still there, and verified
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    save_checkpoint(tmp_path / "last", _model(seed=5), {"step": 4})
    assert read_state(resolve_checkpoint_dir(tmp_path))["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
