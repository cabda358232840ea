"""bf16 on the CPU: ``train.amp`` / predict precision, the measured choice, and what bf16 does to the loss.

The choice tests fake the timings (``_median_seconds`` / step functions that sleep by autocast state), so
they pass alike on CPUs with and without bf16 instructions; only the loss comparison runs real bf16 maths.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from _cache_factory import make_cache, save_random_checkpoint
from organdetr.inference.predictor import Predictor
from organdetr.models import detector_from_config
from organdetr.models.blocks.deformable_attention import MSDeformAttn3d
from organdetr.models.blocks.small_volume_conv import (
    SMALL_SIDE,
    SmallVolumeSafeConv3d,
    guard_small_volume_convs,
)
from organdetr.runtime import devices
from organdetr.runtime.devices import AmpChoice, autocast_dtype, choose_cpu_amp, cpu_bf16_capable
from organdetr.training.config import load_config
from organdetr.training.fit import fit

CPU = torch.device("cpu")


def _fake_timings(monkeypatch, fp32: float, bf16: float) -> list:
    """``_median_seconds`` that still runs the step once (under the autocast it was given) but reports
    ``fp32`` / ``bf16`` seconds; returns the list of dtypes it was called with."""
    calls = []

    def median_seconds(step_fn, steps, dtype):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            step_fn()
        calls.append(dtype)
        return bf16 if dtype is torch.bfloat16 else fp32

    monkeypatch.setattr(devices, "_median_seconds", median_seconds)
    return calls


# ----------------------------------------------------------------------------------------------------
# autocast_dtype, capability


def test_autocast_dtype_on_cpu():
    assert autocast_dtype("off", CPU) is None
    assert autocast_dtype("auto", CPU) is None  # auto on the CPU is decided by choose_cpu_amp
    assert autocast_dtype("bf16", CPU) is torch.bfloat16  # the user's explicit choice
    with pytest.warns(UserWarning, match="fp16 is not used on the CPU"):
        assert autocast_dtype("fp16", CPU) is None


def test_train_amp_off_from_the_command_line():
    assert load_config("tiny", ["train.amp=off"]).train.amp == "off"  # YAML reads a bare off as False


def test_cpu_bf16_capable_reads_flags(tmp_path, monkeypatch):
    monkeypatch.delenv(devices.CPU_BF16_ENV, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_bf16_capable(info)
    info.write_text("flags\t\t: fpu sse2 amx_tile amx_bf16\n")
    assert cpu_bf16_capable(info)
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_bf16_capable(info)
    assert not cpu_bf16_capable(tmp_path / "missing")  # non-Linux / unreadable
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    assert cpu_bf16_capable(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------
# choose_cpu_amp


def _sleepy_step(fp32_s: float, bf16_s: float):
    """A step that sleeps ``bf16_s`` under CPU bf16 autocast, else ``fp32_s``."""

    def step():
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        time.sleep(bf16_s if bf16 else fp32_s)

    return step


def test_choose_cpu_amp_without_bf16_instructions_does_not_measure(monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "0")
    calls = []
    choice = choose_cpu_amp(lambda: calls.append(1))
    assert choice == AmpChoice(None, None, "no bf16 instructions on this CPU")
    assert calls == []


def test_choose_cpu_amp_takes_bf16_only_when_clearly_faster(monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    fast = choose_cpu_amp(_sleepy_step(0.03, 0.01), steps=2)
    assert fast.dtype is torch.bfloat16 and fast.ratio > 2
    assert fast.describe().startswith("bf16 (measured ")
    slow = choose_cpu_amp(_sleepy_step(0.01, 0.03), steps=2)
    assert slow.dtype is None and slow.ratio < 1 and slow.name == "fp32"


def test_choose_cpu_amp_threshold(monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    _fake_timings(monkeypatch, fp32=1.10, bf16=1.0)  # 10 % faster: within noise, stays fp32
    assert choose_cpu_amp(lambda: None).dtype is None
    _fake_timings(monkeypatch, fp32=1.20, bf16=1.0)
    assert choose_cpu_amp(lambda: None).dtype is torch.bfloat16
    assert AmpChoice.from_dict(choose_cpu_amp(lambda: None).as_dict()).dtype is torch.bfloat16


# ----------------------------------------------------------------------------------------------------
# bf16 maths


def test_sampling_locations_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    attn = MSDeformAttn3d(d_model=16, n_levels=2, n_heads=2, n_points=2)
    query, reference = torch.randn(1, 5, 16), torch.rand(1, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        locations, _ = attn.sampling(query, reference, [(4, 4, 4), (2, 2, 2)])
        out = attn(query, reference, torch.randn(1, 72, 16), [(4, 4, 4), (2, 2, 2)])
    exact, _ = attn.sampling(query, reference, [(4, 4, 4), (2, 2, 2)])
    assert locations.dtype == torch.float32
    torch.testing.assert_close(locations, exact)
    assert torch.isfinite(out.float()).all()


def test_bf16_training_step_loss_matches_fp32():
    """Same tiny Organ-DETR, batch and denoising draws: the bf16 autocast loss is the fp32 one within bf16
    precision. Measured (AMD EPYC, avx512_bf16, 12 seeds at 64^3): matching-free terms (denoising,
    segmentation) differ by <= 0.08 %, the total by <= 3.4 % (a near-tied Hungarian matching may flip).
    64^3, so the deepest conv sees 4^3 voxels (torch's CPU bf16 Conv3d weight gradient is intermittently
    NaN on 1-2 voxel volumes)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = 64
    detector = detector_from_config(load_config("tiny"), 4, (size,) * 3).train()
    images = torch.randn(2, 1, size, size, size)
    seg = torch.zeros(size, size, size, dtype=torch.int64)
    boxes = []
    for c, (lo, hi) in enumerate([(4, 24), (28, 52), (12, 40), (40, 60)]):
        seg[lo:hi, lo:hi, lo:hi] = c + 1
        boxes.append(torch.tensor([(lo + hi) / 2] * 3 + [hi - lo] * 3) / size)
    target = {"labels": torch.arange(4), "boxes": torch.stack(boxes), "seg": seg}
    losses = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        torch.manual_seed(100)  # the same denoising queries
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            terms = detector.loss(images, [target, target])
        terms["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in detector.parameters() if p.grad is not None)
        detector.zero_grad(set_to_none=True)
        losses[name] = {k: float(v.detach()) for k, v in terms.items() if v.ndim == 0}
    fp32, bf16 = losses["fp32"], losses["bf16"]
    free = [k for k in fp32 if "_dn" in k or k == "loss_seg"]
    assert free
    free32, free16 = sum(fp32[k] for k in free), sum(bf16[k] for k in free)
    assert abs(free16 - free32) <= 0.01 * free32  # 12x the largest difference seen
    assert abs(bf16["loss"] - fp32["loss"]) <= 0.12 * fp32["loss"]  # 3.5x the largest seen (a flip)


# ----------------------------------------------------------------------------------------------------
# fit and predict


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """64^3: bf16 training of the tiny model stays clear of 1-2 voxel conv volumes (see above)."""
    return make_cache(tmp_path_factory.mktemp("cache"), num_cases=2, size=64)


def _cfg(cache, *extra):
    return load_config(
        "tiny",
        [
            f"data.cache_dir={cache}",
            "data.val_fraction=0",
            "train.steps=2",
            "train.log_every=1",
            "train.progress=false",
            "optim.warmup_steps=1",
            *extra,
        ],
    )


def _state(run):
    return json.loads((run / "last" / "state.json").read_text())


def test_fit_records_the_measured_choice(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    calls = _fake_timings(monkeypatch, fp32=1.24, bf16=1.0)
    run = fit(_cfg(cache, "train.amp=auto", "train.device=cpu"), tmp_path / "run")
    assert calls == [None, torch.bfloat16]  # the real step ran once per precision
    amp = _state(run)["amp"]
    assert amp == {"dtype": "bf16", "ratio": 1.24, "reason": "measured 1.24x over fp32 on this CPU"}


def test_fit_measurement_leaves_no_trace(cache, tmp_path, monkeypatch):
    """A run that measured and kept fp32 equals one that never measured (RNG, buffers, grads, data order)."""
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    calls = _fake_timings(monkeypatch, fp32=1.0, bf16=1.0)
    measured = fit(_cfg(cache, "train.amp=auto", "train.device=cpu"), tmp_path / "measured")
    assert len(calls) == 2
    assert _state(measured)["amp"]["dtype"] == "fp32" and _state(measured)["amp"]["ratio"] == 1.0
    plain = fit(_cfg(cache, "train.amp=off", "train.device=cpu"), tmp_path / "plain")
    assert _state(plain)["amp"] == {"dtype": "fp32", "ratio": None, "reason": "train.amp=off on cpu"}
    a, b = (load_file(str(r / "last" / "model.safetensors")) for r in (measured, plain))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [(r / "train_log.csv").read_text() for r in (measured, plain)]
    assert rows[0] == rows[1]


def test_predictor_without_bf16_instructions_stays_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "0")
    run = save_random_checkpoint(tmp_path / "run", {1: "liver", 2: "spleen"}, (32, 32, 32))
    predictor = Predictor.from_checkpoint(run, "cpu")
    predictor.detect_grids([np.zeros((32, 32, 32), np.float32)])
    assert predictor.amp_choice == AmpChoice(None, None, "no bf16 instructions on this CPU")


def test_predictor_measures_and_takes_bf16(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    calls = _fake_timings(monkeypatch, fp32=2.0, bf16=1.0)
    run = save_random_checkpoint(tmp_path / "run", {1: "liver", 2: "spleen"}, (32, 32, 32))
    predictor = Predictor.from_checkpoint(run, "cpu")
    grid = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    result = predictor.detect_grids([grid])[0]
    assert predictor.amp_choice.dtype is torch.bfloat16 and calls == [None, torch.bfloat16]
    assert np.isfinite(result["boxes"]).all() and result["boxes"].dtype == np.float32
    predictor.detect_grids([grid])
    assert len(calls) == 2  # measured once
    off = Predictor.from_checkpoint(run, "cpu", amp="off")
    off.detect_grids([grid])
    assert off.amp_choice.dtype is None and len(calls) == 2


def test_small_volume_convs_leave_cpu_autocast():
    """Convolutions on inputs with a side <= SMALL_SIDE voxels run in fp32 under CPU autocast (torch's bf16
    Conv3d weight gradient is intermittently non-finite there); larger ones stay bf16."""
    model = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1))
    guard_small_volume_convs(model)
    assert type(model[0]) is SmallVolumeSafeConv3d and "0.weight" in model.state_dict()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small = model(torch.randn(1, 4, SMALL_SIDE, 8, 8))
        large = model(torch.randn(1, 4, SMALL_SIDE + 1, 8, 8))
    assert small.dtype == torch.float32 and large.dtype == torch.bfloat16
    detector = detector_from_config(load_config("tiny"), 2, (32, 32, 32))
    assert not any(type(m) is nn.Conv3d for m in detector.modules())  # the registry guards every model
