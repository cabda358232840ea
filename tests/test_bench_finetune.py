"""benchmarks/bench_finetune.py: a smoke run of the fine-tuning benchmark (tiny preset, a few steps) - the
5-organ pretraining cache, the three runs, the summary, and a second call reusing the finished runs."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from organdetr.preprocessing.cache import list_cases, load_case
from organdetr.preprocessing.plans import class_map_from_plans, load_plans

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_finetune")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_steps_to_target(bench):
    curve = [{"step": 50, "mAP": 0.1}, {"step": 100, "mAP": 0.3}, {"step": 150, "mAP": 0.2}]
    assert bench.steps_to_target(curve, 0.25) == 100 and bench.steps_to_target(curve, 0.5) is None


def test_smoke_run(bench, tmp_path, capsys):
    args = ["--out", str(tmp_path), "--preset", "tiny", "--size", "32", "--cases", "5", "--steps", "4",
            "--pretrain-steps", "2", "--seeds", "0", "--val-points", "1"]  # fmt: skip
    summary = bench.main(args)
    (seed,) = summary["summary"]
    assert seed["finetune_budget"] == 2 and set(seed) >= {"target_mAP", "steps_to_target", "holds"}
    five = next((tmp_path / "pretrain").glob("cache*_5organs"))
    assert sorted(class_map_from_plans(load_plans(five)).values()) == sorted(bench.PRETRAIN_ORGANS)
    for case_id in list_cases(five):
        _, label, record = load_case(five, case_id)
        assert set(np.unique(label)) <= {0, 1, 2, 3, 5, 6}  # spleen, kidneys, liver, stomach
        assert {b["name"] for b in record["boxes"]} <= set(bench.PRETRAIN_ORGANS)
    (tuned,) = (tmp_path / "finetune" / "runs").iterdir()
    report = json.loads((tuned / "init_from.json").read_text())
    assert sorted(report["shared_classes"]) == sorted(bench.PRETRAIN_ORGANS)
    capsys.readouterr()
    again = bench.main(args)  # finished runs are read back, not retrained
    assert again["summary"] == summary["summary"]
    assert capsys.readouterr().out.count('"reused": true') == 3
