"""benchmarks/bench_convergence.py: the stopping rule, the resumable chunk loop (stub trainer), the report."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_convergence")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _curve(*maps, every=100):
    return [{"step": every * (i + 1), "mAP": m} for i, m in enumerate(maps)]


def test_stop_reason(bench):
    assert bench.stop_reason([], patience=200, cap=1000) is None
    assert bench.stop_reason(_curve(0.1, 0.2, 0.3), patience=200, cap=1000) is None
    assert bench.stop_reason(_curve(0.1, 0.3, 0.2), patience=200, cap=1000) is None  # best 100 steps ago
    assert bench.stop_reason(_curve(0.1, 0.3, 0.2, 0.25), patience=200, cap=1000) == "patience"
    assert bench.stop_reason(_curve(0.1, 0.3, 0.3, 0.3), patience=200, cap=1000) == "patience"  # a tie
    assert bench.stop_reason(_curve(0.1, 0.2, 0.3), patience=200, cap=300) == "cap"
    assert bench.best_point(_curve(0.1, 0.3, 0.3))["step"] == 200  # the first to reach the best


def test_parse_run(bench):
    assert bench.parse_run("organdetr:1") == bench.RunSpec("organdetr", 1, bench.DEFAULT_CAPS["organdetr"])
    assert bench.parse_run("seg2box@800") == bench.RunSpec("seg2box", 0, 800)
    assert bench.parse_run("retinanet", cap=400).cap == 400
    assert bench.parse_run("nnunet:2@500").name == "nnunet_seed2"
    backbone = bench.parse_run("seg2box+resenc.B:1")
    assert backbone.name == "seg2box+resenc.B_seed1"
    assert bench.recipe_of(backbone)[1][-2:] == ["model.backbone=resenc", "model.backbone_size=B"]
    assert bench.recipe_of(bench.parse_run("organdetr"))[1] == bench.RECIPES["organdetr"][1]
    tuned = bench.parse_run("organdetr+primus:0@960|optim.lr=3e-4")
    assert tuned.cap == 960 and tuned.name == "organdetr+primus_optim.lr=3e-4_seed0"
    assert bench.recipe_of(tuned)[1][-1] == "optim.lr=3e-4"  # after the recipe's lr: it wins
    with pytest.raises(ValueError, match="nnU-Net brings its own recipe"):
        bench.parse_run("nnunet:0|optim.lr=1")
    with pytest.raises(ValueError, match="nnU-Net brings its own network"):
        bench.parse_run("nnunet+mednext_v2")
    with pytest.raises(ValueError, match="unknown run kind"):
        bench.parse_run("yolo")


class StubTrainer:
    """A trainer whose mAP follows ``maps`` (one per chunk) and costs 2 CPU-s per step; ``die_at``: raise
    after training that step (a kill between training and recording)."""

    def __init__(self, maps, die_at=None):
        self.maps, self.die_at, self.calls = list(maps), die_at, []

    def __call__(self, step):
        self.calls.append(step)
        metrics = dict.fromkeys(("AP50", "AP75", "mAR", "mAP_10_50"), 0.0)
        metrics["mAP"] = self.maps[len(self.calls) - 1]
        if step == self.die_at:
            self.die_at = None
            raise KeyboardInterrupt
        return metrics, 2.0 * 100


def test_converge_patience_and_resume(bench, tmp_path):
    maps = [0.1, 0.3, 0.2, 0.25, 0.28, 0.9]
    trainer = StubTrainer(maps, die_at=300)
    with pytest.raises(KeyboardInterrupt):  # killed in the third chunk: two chunks are on disk
        bench.converge(tmp_path, trainer, chunk=100, patience=200, cap=1000, echo=lambda _: None)
    assert json.loads((tmp_path / "progress.json").read_text())["curve"][-1]["step"] == 200
    resumed = StubTrainer(maps[2:])
    progress = bench.converge(tmp_path, resumed, chunk=100, patience=200, cap=1000, echo=lambda _: None)
    assert resumed.calls == [300, 400]  # continues after the last recorded chunk, stops by patience
    assert progress["stopped"] == "patience"
    rows = bench.read_curve_csv(tmp_path / "curve.csv")
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert [r["cpu_s"] for r in rows] == [200, 400, 600, 800]  # cumulated across the restart
    assert rows[1]["mAP"] == 0.3
    # a finished run does no more work; more patience continues it; another chunk or cap is refused
    again = StubTrainer([])
    assert bench.converge(tmp_path, again, chunk=100, patience=200, cap=1000)["stopped"] == "patience"
    assert again.calls == []
    more = StubTrainer([0.28, 0.9])
    progress = bench.converge(tmp_path, more, chunk=100, patience=300, cap=1000, echo=lambda _: None)
    assert more.calls == [500] and progress["stopped"] == "patience"
    with pytest.raises(ValueError, match="chunk"):
        bench.converge(tmp_path, StubTrainer([]), chunk=50, patience=900, cap=1000)
    with pytest.raises(ValueError, match="cap"):
        bench.converge(tmp_path, StubTrainer([]), chunk=100, patience=900, cap=2000)


def test_converge_cap_and_unknown_cost(bench, tmp_path):
    calls = []

    def train_to(step):  # the second chunk was trained before a restart: its cost is unknown
        calls.append(step)
        return {k: step / 1000 for k in bench.METRICS}, (None if step == 200 else 50.0)

    progress = bench.converge(tmp_path, train_to, chunk=100, patience=1000, cap=250, echo=lambda _: None)
    assert calls == [100, 200, 250] and progress["stopped"] == "cap"  # the last chunk ends at the cap
    curve = progress["curve"]
    assert [r["cpu_s"] for r in curve] == [50.0, 100.0, 150.0]
    assert curve[1]["cpu_estimated"] is True  # charged the mean cost per step of the chunks before


def test_report(bench, tmp_path, capsys):
    for name, maps, cap in (("organdetr_seed0", (0.1, 0.2), 200), ("seg2box_seed0", (0.05, 0.04), 300)):
        folder = tmp_path / "runs" / name
        bench.converge(folder, StubTrainer(maps), chunk=100, patience=100, cap=cap, echo=lambda _: None)
    priors = {kind: {k: 0.01 for k in bench.METRICS} for kind in ("mm", "fov")}
    (tmp_path / "priors.json").write_text(json.dumps(priors))
    bench.main(["--out", str(tmp_path), "--report"])
    table = capsys.readouterr().out
    assert "| organdetr_seed0 | cap | 200 | 200 | 400 | 0.200 |" in table
    assert "| seg2box_seed0 | patience | 200 | 100 | 200 | 0.050 |" in table
    assert "| prior (mm) |" in table
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_smoke_run(bench, tmp_path, capsys):
    """The real path at toy scale: 6 phantoms at 32^3 (5 train / 1 held out), tiny model, 3-step chunks."""
    args = ["--out", str(tmp_path), "--runs", "organdetr:0@6", "--chunk", "3", "--patience", "3"]
    bench.main([*args, "--smoke", "--size", "32", "--cases", "6", "--test-cases", "2"])
    final = json.loads((tmp_path / "runs" / "organdetr_seed0" / "final.json").read_text())
    assert final["stopped"] in ("cap", "patience") and final["last"]["step"] in (3, 6)
    assert set(final["test_set"]["best"]["metrics"]) == set(bench.CONDITIONS)
    rows = bench.read_curve_csv(tmp_path / "runs" / "organdetr_seed0" / "curve.csv")
    assert rows[0]["step"] == 3 and rows[0]["cpu_s"] > 0
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "priors.json").is_file()
    assert "| organdetr_seed0 |" in capsys.readouterr().out
