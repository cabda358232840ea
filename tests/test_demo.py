"""organdetr.experiments.demo / `organdetr demo --quick`: the README's main command, end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from organdetr.cli import app
from organdetr.experiments.demo import find_shared_data, summary_markdown
from organdetr.experiments.demo import real_ct as demo_module


def test_summary_markdown_headline_row():
    text = summary_markdown(
        {"mAP": 0.5, "AP50": 0.75, "AP75": float("nan"), "mAR": 0.6, "center_error_mm_median": 3.25}
    )
    lines = text.splitlines()
    assert lines[0] == "| mAP | AP50 | AP75 | mAR | median centre error (mm) |"
    assert lines[2] == "| 0.500 | 0.750 | - | 0.600 | 3.2 |"


def test_find_shared_data_env_and_absent(tmp_path, monkeypatch):
    pack = tmp_path / "pack"
    (pack / "totalsegmentator").mkdir(parents=True)
    (pack / "totalsegmentator" / "example_ct.nii.gz").write_bytes(b"")
    monkeypatch.setenv(demo_module.SHARED_DATA_ENV, str(pack))
    monkeypatch.chdir(tmp_path)
    assert find_shared_data() == pack.resolve()
    monkeypatch.setattr(demo_module, "REAL_CT_CANDIDATES", ("no/such/scan.nii.gz",))
    assert find_shared_data() is None


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = out / "report"
    for name in ("REPORT.md", "metrics.md", "metrics.csv", "metrics.json", "pr_curves.png", "loss_curve.png"):
        assert (report / name).is_file(), name
    assert list((report / "overlays").glob("*.png"))
    metrics = json.loads((report / "metrics.json").read_text())
    assert "mAP" in metrics["summary"] and metrics["held_out_cases"] >= 1
    assert len(metrics["per_class"]) >= 1 and metrics["train_steps"] == 60  # --quick: a fixed 60 steps
    rows = set(metrics["comparison"])
    assert {"Organ-DETR", "seg2box", "prior (mean box, mm)", "prior (mean box, field of view)"} <= rows
    assert {"present_mean", "absent_mean"} <= set(metrics["absent_organ_scores"])
    assert (out / "run_seg2box" / "last" / "model.safetensors").is_file()
    assert sorted((out / "predictions_seg2box").glob("*_seg.nii.gz"))  # the baseline segments
    predictions = sorted((out / "predictions").glob("*.json"))
    assert len(predictions) == metrics["held_out_cases"]
    text = (report / "REPORT.md").read_text()
    assert "held-out" in text and ("does not find real organs well" in text or "Skipped" in text)
    assert "| seg2box |" in text and "| prior (mean box, mm) |" in text
    assert (out / "run" / "last" / "model.safetensors").is_file()
    # two threads: seg2box trained beside Organ-DETR in a second process, its console in its run folder
    assert "beside it, in a second process, seg2box" in result.output
    assert (out / "run_seg2box" / "train_console.log").is_file()
    assert "trained side by side in two processes" in text and "| train_seg2box |" in text
    last_lines = result.output.strip().splitlines()[-4:]
    assert any(str(report / "REPORT.md") in line for line in last_lines)


def test_thread_split_gives_the_baseline_a_third_of_two_or_more_threads():
    from organdetr.experiments.demo.training import thread_split

    assert thread_split(2, concurrent=True) == (1, 1)
    assert thread_split(6, concurrent=True) == (4, 2) and thread_split(4, concurrent=True) == (3, 1)
    assert thread_split(1, concurrent=True) is None  # one thread: one after the other
    assert thread_split(8, concurrent=False) is None


def test_demo_sequential_trains_one_model_after_the_other(tmp_path):
    from organdetr.experiments.demo import DemoConfig, run_demo

    lines: list[str] = []
    cfg = DemoConfig.quick(out_dir=tmp_path / "demo", concurrent=False, steps=4, cases=4, progress=False)
    result = run_demo(cfg, echo=lines.append)
    text = "\n".join(lines)
    assert "3/7 training Organ-DETR" in text and "4/7 training seg2box" in text
    assert "second process" not in text
    assert {"train", "train_seg2box"} <= set(result.timings) and "train_Organ-DETR" not in result.timings
    assert (tmp_path / "demo" / "run_seg2box" / "last" / "model.safetensors").is_file()


def test_demo_rejects_bad_arguments(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--cases", "2", "--out", str(tmp_path / "d")])
    assert result.exit_code != 0
    assert not (tmp_path / "d" / "report").exists()


def test_train_config_takes_the_demo_budget_optimiser_and_split(tmp_path):
    from organdetr.experiments.demo.run import DemoConfig
    from organdetr.experiments.demo.training import train_config

    cfg = DemoConfig(out_dir=tmp_path, lr=5e-4, grad_clip=2.0, batch_size=2, steps=30, warmup_steps=50)
    cases = ["a", "b", "c", "d"]
    train_cfg = train_config(cfg, tmp_path / "cache", cases, "tiny")
    assert train_cfg.optim.lr == 5e-4 and train_cfg.optim.grad_clip == 2.0
    assert train_cfg.optim.warmup_steps == 3  # at most 10 % of the 30 steps
    assert train_cfg.train.steps == 30 and train_cfg.train.device == "cpu"  # a step budget, not minutes
    assert train_cfg.data.train_cases == cases and train_cfg.data.val_cases == []
    seg = train_config(cfg, tmp_path / "cache", cases, "seg2box", cfg.baseline_overrides)
    assert seg.arch == "seg2box" and seg.train.steps == 30 and seg.optim.lr == 5e-4  # same budget
    # the demo's baseline: the narrow U-Net on the 2x pooled grid (measured as strong, cheaper), said so
    from organdetr.experiments.demo.report import _stride_text

    assert seg.seg2box.input_stride == 2 and seg.seg2box.features == (8, 8, 16, 32, 64, 8)
    assert "average-pooled 2x" in _stride_text(cfg)
    assert _stride_text(DemoConfig.quick(out_dir=tmp_path)) == ""  # 32^3: BasicUNet needs the full grid


def test_demo_config_rejects_bad_budgets(tmp_path):
    from organdetr.experiments.demo import DemoConfig
    from organdetr.runtime.errors import InputError

    with pytest.raises(InputError, match="steps"):
        DemoConfig(out_dir=tmp_path, steps=0)
    with pytest.raises(InputError, match="threads"):
        DemoConfig(out_dir=tmp_path, threads=0)
