"""Profiling helpers on toy modules: FLOPs equal the analytic counts, latency and memory are sane."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from organdetr.experiments.profiling import (
    COUNTED_OPS,
    count_flops,
    count_parameters,
    measure_latency,
    peak_memory_bytes,
    profile_detector,
)


def test_count_parameters_counts_shared_once_and_trainable_filter():
    lin = nn.Linear(4, 3)  # 12 + 3
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(3, 2, bias=False))  # shared lin once, + 6
    assert count_parameters(model) == 15 + 6
    model[3].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 15


def test_conv3d_flops_match_analytic_count():
    conv = nn.Conv3d(3, 5, kernel_size=3, padding=1, stride=2)
    x = torch.randn(2, 3, 8, 10, 12)
    out_voxels = 4 * 5 * 6  # stride 2 with padding 1 halves each axis
    expected = 2 * 2 * 5 * 3 * 27 * out_voxels  # 2 FLOPs/MAC * batch * Cout * Cin * k^3 * output voxels
    flops = count_flops(conv, x)
    assert flops.total == expected
    assert set(flops.by_op) == {"aten.convolution"}


def test_linear_and_matmul_flops_match_analytic_count():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(5, 16)
    assert count_flops(model, x).total == 2 * 5 * (16 * 8 + 8 * 4)  # biases and ReLU are not counted
    a, b = torch.randn(2, 3, 7), torch.randn(2, 7, 4)
    assert count_flops(torch.bmm, a, b).total == 2 * 2 * 3 * 7 * 4
    assert "aten.mm" in COUNTED_OPS and "aten.convolution" in COUNTED_OPS


def test_measure_latency_is_interleaved_and_complete():
    calls: list[str] = []
    stats = measure_latency(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up each, then round-robin
    assert set(stats) == {"a", "b"}
    for s in stats.values():
        assert s.repeats == 3 and 0 <= s.min_s <= s.median_s <= s.max_s
    with pytest.raises(ValueError):
        measure_latency({"a": lambda: None}, repeats=0)


def test_peak_memory_counts_live_temporaries_not_inputs():
    nbytes = 16 * 2**20
    big = torch.ones(nbytes // 4)

    def temporaries():
        a = big * 2  # 16 MiB
        b = a + 1  # 32 MiB live at once
        del a
        c = b.sum()  # a is gone: peak stays 32 MiB
        return float(c)

    assert 2 * nbytes <= peak_memory_bytes(temporaries, "cpu") < 2.1 * nbytes
    assert peak_memory_bytes(lambda: big.view(-1)[:10], "cpu") == 0  # views of inputs allocate nothing
    assert peak_memory_bytes(lambda: torch.nn.functional.relu(big, inplace=True), "cpu") == 0


def test_profile_detector_uses_detect_and_restores_mode():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1)
            self.detect_calls = 0

        def forward(self, x):
            return self.conv(x)

        def detect(self, x):
            self.detect_calls += 1
            return self.conv(x)

    toy = Toy().train()
    prof = profile_detector(toy, (4, 4, 4))
    assert toy.training and toy.detect_calls >= 2
    assert prof.params == 4 and prof.flops == 2 * 2 * 1 * 64
    assert prof.to_dict()["input_size"] == [4, 4, 4]
