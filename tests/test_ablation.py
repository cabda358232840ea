"""Ablation runner: suites, split, perturbed test caches, configs, reports, a micro suite end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from organdetr.experiments.ablation import (
    BenchmarkConfig,
    available_suites,
    build_train_config,
    load_suite,
    prepare_data,
    render_table,
    run_suite,
    split_case_ids,
    write_perturbed_cache,
)
from organdetr.preprocessing.cache import list_cases, load_case
from organdetr.runtime.errors import InputError

MICRO_SUITE = """
description: micro suite for tests
base: tiny
set: [model.num_queries=12]
variants:
  - {name: msa, set: [model.encoder=msa, matcher.kind=dqm]}
  - {name: retinanet, set: [arch=retinanet]}
  - {name: maskmed, set: [arch=maskmed, "maskmed.features=[4, 8, 16]", maskmed.d_model=12]}
  - {name: prior, prior: fov}
"""


def test_packaged_suites_parse_and_build_valid_configs(tmp_path):
    assert {"encoders", "matching", "baselines", "all"} <= set(available_suites())
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    cfg = BenchmarkConfig(iterations=10, cases=4)
    for name in available_suites():
        suite = load_suite(name)
        assert suite.variants and suite.description
        for variant in suite.variants:  # every override names a real config key
            build_train_config(suite, variant, 0, tmp_path, split, cfg)


def test_build_train_config_applies_variant_and_budget(tmp_path):
    suite = load_suite("baselines")
    split = {"train": ["a", "b", "c"], "val": ["d"], "test": ["e"]}
    cfg = BenchmarkConfig(iterations=10, cases=5, batch_size=2, val_points=2, seeds=(3,))
    variants = {v.name: v for v in suite.variants}
    detr = build_train_config(suite, variants["detr-decoder"], 3, tmp_path, split, cfg)
    assert detr.model.decoder == "detr" and detr.model.class_head == "softmax" and not detr.model.two_stage
    assert detr.train.seed == 3 and detr.data.train_cases == ["a", "b", "c"] and detr.data.val_cases == ["d"]
    assert detr.train.epochs * math.ceil(3 / 2) >= 10  # enough epochs for the step budget
    assert detr.model.num_queries == 30
    retina = build_train_config(suite, variants["retinanet"], 3, tmp_path, split, cfg)
    assert retina.arch == "retinanet"
    assert build_train_config(suite, variants["seg2box"], 3, tmp_path, split, cfg).arch == "seg2box"
    assert variants["prior-mm"].prior == "mm" and variants["prior-fov"].prior == "fov"


def test_bad_suites_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="packaged suite"):
        load_suite(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny\nvariants: []\n")
    with pytest.raises(InputError, match="non-empty"):
        load_suite(bad)
    bad.write_text("base: tiny\nvariants:\n  - {name: a, set: [model.encoder]}\n")
    with pytest.raises(InputError, match="KEY.PATH=VALUE"):
        load_suite(bad)
    bad.write_text("base: tiny\nvariants:\n  - {name: a, prior: inches}\n")
    with pytest.raises(InputError, match="prior"):
        load_suite(bad)
    bad.write_text("base: tiny\nvariants:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(InputError, match="unique"):
        load_suite(bad)
    bad.write_text("base: tiny\nvariantz: []\n")
    with pytest.raises(InputError, match="unknown key"):
        load_suite(bad)


def test_split_is_disjoint_complete_and_deterministic():
    ids = [f"case_{i:02d}" for i in range(10)]
    cfg = BenchmarkConfig(cases=10)
    split = split_case_ids(ids, cfg)
    assert split == split_case_ids(ids, cfg)
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == 10
    assert all(parts)
    with pytest.raises(ValueError):
        BenchmarkConfig(cases=2)


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchmarkConfig(iterations=3, cases=3, size=32, val_points=1, latency_repeats=1, threads=1)
    cache, split = prepare_data(out, cfg)
    return out, cfg, cache, split


def test_prepare_data_makes_a_split_cache(micro_data):
    _, cfg, cache, split = micro_data
    assert len(list_cases(cache)) == 3 and all(len(v) == 1 for v in split.values())
    image, label, record = load_case(cache, split["test"][0])
    assert image.shape == (32, 32, 32) and record["boxes"]


@pytest.mark.parametrize("kind", ["zoom+10%", "shift+10%"])
def test_perturbed_cache_moves_images_and_boxes_together(micro_data, tmp_path, kind):
    _, _, cache, split = micro_data
    case = split["test"][0]
    out = write_perturbed_cache(cache, tmp_path / "p", [case], kind)
    image0, label0, rec0 = load_case(cache, case)
    image1, label1, rec1 = load_case(out, case)
    assert image1.shape == image0.shape and not np.array_equal(image1, image0)
    boxes0 = {b["label_id"]: np.array(b["box_voxel"]) for b in rec0["boxes"]}
    boxes1 = {b["label_id"]: np.array(b["box_voxel"]) for b in rec1["boxes"]}
    assert boxes1 and set(boxes1) <= set(boxes0)
    for lid, box in boxes1.items():  # the recorded box is the transformed label's extent
        where = np.argwhere(np.asarray(label1) == lid)
        np.testing.assert_array_equal(box, np.concatenate([where.min(0), where.max(0) + 1]))
    if kind.startswith("shift"):  # content moved by +10 % of 32 voxels along every axis
        lid = max(boxes1, key=lambda k: np.prod(boxes1[k][3:] - boxes1[k][:3]))
        assert np.all(boxes1[lid][:3] > boxes0[lid][:3])
        # the truth (box_mm) is the exact box moved by 3.2 voxels, not the re-quantised label box
        mm0 = {b["label_id"]: np.array(b["box_mm"]) for b in rec0["boxes"]}
        mm1 = {b["label_id"]: np.array(b["box_mm"]) for b in rec1["boxes"]}
        direction = np.sign(np.diag(np.reshape(rec0["grid"]["direction"], (3, 3))))
        step = 3.2 * np.asarray(rec0["grid"]["spacing"]) * direction
        inside = [k for k in mm1 if np.all(boxes1[k][3:] < 32)]  # not clipped by the grid's far edge
        assert inside
        for k in inside:
            moved = np.sort(mm0[k].reshape(2, 3) + step, 0)
            np.testing.assert_allclose(np.sort(mm1[k].reshape(2, 3), 0), moved, atol=1e-3)
    else:  # zoom 1.1 enlarges the anatomy: the union of all organs grows
        lo = lambda b: np.min([v[:3] for v in b.values()], 0)  # noqa: E731
        hi = lambda b: np.max([v[3:] for v in b.values()], 0)  # noqa: E731
        assert np.prod(hi(boxes1) - lo(boxes1)) > np.prod(hi(boxes0) - lo(boxes0))
    assert (
        list_cases(out) == [case] and json.loads((out / "plans.json").read_text())["input_size"] == [32] * 3
    )


def test_render_table_formats_mean_std_and_missing():
    stat = lambda m, s=0.0: {"mean": m, "std": s}  # noqa: E731
    metrics = {m: stat(0.5, 0.1) for m in ("mAP", "AP50", "AP75", "mAR", "mAP_10_50")}
    cost = {
        "params": 2_000_000,
        "flops": 3e9,
        "peak_memory_bytes": 2**21,
        "latency": {"median_s": 0.05, "ratio_to_first": 1.0},
    }
    results = {
        "suite": "x",
        "description": "d",
        "command": "organdetr benchmark x",
        "machine": "m",
        "budget": {
            "cases": 4,
            "data_seed": 0,
            "size": 32,
            "iterations": 5,
            "batch_size": 2,
            "seeds": [0, 1],
            "latency_repeats": 3,
            "device": "cpu",
        },
        "split": {"train": 2, "val": 1, "test": 1},
        "variants": {
            "a": {
                "overrides": ["model.encoder=fpn"],
                "cost": cost,
                "test": {"clean": metrics, "zoom+10%": {**metrics, "mAP": stat(math.nan, math.nan)}},
            }
        },
        "runs": [{"variant": "a"}, {"variant": "a"}],
    }
    table = render_table(results)
    assert "| a | 0.500 ± 0.100 |" in table and "| 2.000 | 3.00 | 50.0 | 1.00 | 2.0 |" in table
    assert "n/a" in table and "`model.encoder=fpn`" in table and "2 seed(s)" in table


@pytest.mark.slow
def test_micro_suite_end_to_end(micro_data, tmp_path):
    out, cfg, _, _ = micro_data
    suite_file = tmp_path / "micro.yaml"
    suite_file.write_text(MICRO_SUITE)
    results = run_suite(suite_file, out, cfg, command="test", progress=False)
    assert set(results["variants"]) == {"msa", "retinanet", "maskmed", "prior"}
    prior = results["variants"].pop("prior")
    assert prior["cost"] is None and 0.0 <= prior["test"]["shift+10%"]["mAP"]["mean"] <= 1.0
    assert "| prior |" in (out / "table.md").read_text(encoding="utf-8")
    for v in results["variants"].values():
        assert set(v["test"]) == {"clean", "zoom+10%", "shift+10%"}
        assert 0.0 <= v["test"]["clean"]["mAP"]["mean"] <= 1.0
        assert v["cost"]["params"] > 0 and v["cost"]["flops"] > 0 and v["cost"]["latency"]["median_s"] > 0
    # a segmenting variant is scored on its label maps too, with the tolerance in the table
    seg = results["variants"]["maskmed"]["test"]["clean"]
    assert 0.0 <= seg["dice"]["mean"] <= 1.0 and seg["hd95_mm"]["mean"] > 0 and seg["nsd_tolerance_mm"] > 0
    assert "dice" not in results["variants"]["msa"]["test"]["clean"]
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "## Segmentation" in table and "| maskmed |" in table.split("## Segmentation")[1]
    # dense heads on every level cost far more than the DETR decoder: the counter must see it
    assert results["variants"]["retinanet"]["cost"]["flops"] > results["variants"]["msa"]["cost"]["flops"]
    for name in ("table.md", "results.json", "convergence.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["suite"] == "micro"
    assert all(r["curve"] for r in results["runs"] if r["variant"] != "prior")  # validation ran
    # a rerun reuses the finished runs instead of training again
    mtime = (out / "runs" / "msa-seed0" / "last").stat().st_mtime
    run_suite(suite_file, out, cfg, command="test", progress=False)
    assert (out / "runs" / "msa-seed0" / "last").stat().st_mtime == mtime
