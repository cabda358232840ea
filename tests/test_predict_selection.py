"""Which organs predict reports: the validated score threshold (issue 22, point 2), --organs, and the
warning / refusal for scans unlike the training scans (an MR into a CT model, point 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _cache_factory import CLASSES as CACHE_CLASSES
from _cache_factory import make_cache, phantom, save_random_checkpoint
from _cli import assert_refused, run_cli
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume
from organdetr.data.cache_dataset import CacheDataset
from organdetr.evaluation.coco import Detection, GroundTruth
from organdetr.evaluation.presence import presence_threshold, threshold_state
from organdetr.inference.predict import predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.inference.scan_checks import scan_mismatches
from organdetr.io.images import write_image
from organdetr.preprocessing.cache import write_case
from organdetr.preprocessing.intensity import intensity_percentiles
from organdetr.preprocessing.plans import PreprocessConfig, make_plans
from organdetr.preprocessing.resampling import preprocess_volume
from organdetr.runtime.atomic import write_json
from organdetr.training.config import load_config
from organdetr.training.fit import fit
from organdetr.training.validation import evaluate

CLASSES = {1: "liver", 2: "spleen", 5: "kidney_left"}
GRID = (32, 32, 32)
BOX = np.zeros(6)


def _pairs(scores: dict[tuple[str, str], float], present: set[tuple[str, str]]):
    detections = [Detection(c, k, s, BOX) for (c, k), s in scores.items()]
    return detections, [GroundTruth(c, k, BOX) for c, k in present]


def test_threshold_drops_organs_absent_from_validation_scans():
    """Bladder absent from two of four scans (scores 0.02, 0.30): the F1-best cut lies between 0.30 and the
    lowest present score 0.50, so both absent bladders go and every present organ stays."""
    cases, organs = ["a", "b", "c", "d"], ["liver", "spleen", "urinary_bladder"]
    scores = {(c, "liver"): 0.9 for c in cases} | {(c, "spleen"): 0.5 + 0.1 * n for n, c in enumerate(cases)}
    scores |= {("a", "urinary_bladder"): 0.6, ("b", "urinary_bladder"): 0.7}
    scores |= {("c", "urinary_bladder"): 0.02, ("d", "urinary_bladder"): 0.30}
    present = {(c, k) for c in cases for k in ("liver", "spleen")} | {
        ("a", "urinary_bladder"),
        ("b", "urinary_bladder"),
    }
    chosen = presence_threshold(*_pairs(scores, present), cases, organs)
    assert chosen.score == pytest.approx(0.40) and chosen.f1 == pytest.approx(1.0)
    assert chosen.absent == 2 and chosen.dropped_absent == 2 and chosen.recall == 1.0
    state = threshold_state(chosen.to_metrics())
    assert state["score"] == pytest.approx(0.40) and state["scans"] == 4 and "global" in state["rule"]


def test_threshold_is_zero_when_nothing_is_absent_and_trades_f1_otherwise():
    cases, organs = ["a", "b"], ["liver", "spleen"]
    scores = {("a", "liver"): 0.9, ("b", "liver"): 0.2, ("a", "spleen"): 0.7, ("b", "spleen"): 0.1}
    everything = {(c, k) for c in cases for k in organs}
    assert presence_threshold(*_pairs(scores, everything), cases, organs).score == 0.0
    # spleen absent in b and both organs absent in c; b's absent spleen (0.5) outscores b's present liver
    # (0.2): keeping the top four (F1 6/7) beats the top two (0.8) and all six (2/3)
    cases = ["a", "b", "c"]
    scores |= {("b", "spleen"): 0.5, ("c", "liver"): 0.15, ("c", "spleen"): 0.1}
    present = {("a", "liver"), ("a", "spleen"), ("b", "liver")}
    chosen = presence_threshold(*_pairs(scores, present), cases, organs)
    assert chosen.score == pytest.approx(0.175) and chosen.f1 == pytest.approx(6 / 7)
    assert chosen.dropped_absent == 2 and chosen.precision == pytest.approx(3 / 4)


class _FixedScores(nn.Module):
    """A detector whose k-th call returns fixed per-class scores (one box per class)."""

    def __init__(self, per_call: list[list[float]]):
        super().__init__()
        self.per_call, self.weight = list(per_call), nn.Parameter(torch.zeros(1))

    def detect(self, images):
        scores = torch.tensor(self.per_call.pop(0))
        boxes = torch.tensor([[4.0, 4.0, 4.0, 20.0, 20.0, 20.0]]).repeat(len(scores), 1)
        return [{"labels": torch.arange(len(scores)), "scores": scores, "boxes": boxes}]


def _cache_without_spleen_in(root: Path, missing: set[int], cases: int = 3) -> Path:
    """make_cache's phantoms, with the spleen (label 4) erased from the cases numbered in ``missing``."""
    cfg = PreprocessConfig(input_size=(32,) * 3, target_spacing=(1.5,) * 3)
    write_json(root / "plans.json", make_plans(cfg, CACHE_CLASSES))
    geometry = Geometry((32,) * 3, (1.5,) * 3, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for n in range(cases):
        image, labels = phantom(32, n)
        if n in missing:
            image[labels == 4], labels[labels == 4] = -800, 0
        grid_image, grid_label, record = preprocess_volume(
            Volume(image, geometry), cfg, Volume(labels, geometry), CACHE_CLASSES
        )
        write_case(root, f"case_{n:03d}", grid_image, grid_label, record)
    return root


def test_validation_picks_a_threshold_that_drops_the_absent_organ(tmp_path):
    """Through training's evaluate(): the scans without a spleen score it 0.05 and 0.2, the present organs
    0.45 and more; the stored threshold drops the absent spleens and keeps the rest."""
    dataset = CacheDataset(_cache_without_spleen_in(tmp_path / "cache", missing={1, 2}))
    per_call = [[0.9, 0.8, 0.7, 0.6], [0.9, 0.45, 0.7, 0.05], [0.8, 0.7, 0.6, 0.2]]  # spleen = class 3
    loader = [(image[None], [target]) for image, target in (dataset[i] for i in range(len(dataset)))]
    metrics = evaluate(_FixedScores(per_call), loader, dataset, torch.device("cpu"))
    state = threshold_state(metrics)
    assert 0.2 < state["score"] < 0.45 and state["absent"] == 2 and state["dropped_absent"] == 2
    assert state["f1"] == pytest.approx(1.0)


def test_fit_stores_the_threshold_and_predict_uses_it(tmp_path):
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    overrides = [
        f"data.cache_dir={cache}",
        "data.val_cases=[case_001]",
        "train.epochs=1",
        "train.progress=false",
    ]
    run = fit(load_config("tiny", overrides), tmp_path / "run")
    for name in ("best", "last"):
        stored = json.loads((run / name / "state.json").read_text())["score_threshold"]
        assert 0.0 <= stored["score"] <= 1.0 and stored["scans"] == 1 and stored["pairs"] == 4
    assert Predictor.from_checkpoint(run, "cpu").stored_score_threshold == stored
    reference = json.loads((run / "best" / "plans.json").read_text())["intensity"]  # the training scans'
    train_scan = intensity_percentiles(phantom(32, 0)[0])  # case_000, the one training case
    assert reference == {"cases": 1, **{k: [v, v] for k, v in train_scan.items()}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("run"), CLASSES, GRID)


def _ct(path: Path, size=(36, 32, 24)) -> Path:
    """A small synthetic CT in HU: air around a soft-tissue body with a bright block."""
    array = np.full(size, -1000, dtype=np.int16)
    array[4:-4, 4:-4, :] = 40
    array[10:20, 8:18, 5:15] = 200
    write_image(path, array, Geometry(size, (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    return path


def _with_stored_threshold(run: Path, tmp_path: Path, score: float) -> Path:
    """A copy of ``run`` whose checkpoint state says validation chose ``score``."""
    import shutil

    copy = tmp_path / "validated"
    shutil.copytree(run, copy)
    state_path = copy / "last" / "state.json"
    state = json.loads(state_path.read_text())
    state["score_threshold"] = {"score": score, "f1": 0.9, "scans": 5, "rule": "global"}
    state_path.write_text(json.dumps(state))
    return copy


def test_predict_uses_the_stored_threshold_and_old_runs_fall_back(tmp_path, checkpoint):
    scan = _ct(tmp_path / "ct.nii.gz")
    predict_scans(Predictor.from_checkpoint(checkpoint, "cpu"), [scan], tmp_path / "old", overlay=False,
                  progress=False)  # fmt: skip
    old = json.loads((tmp_path / "old" / "ct.json").read_text())
    assert old["score_threshold"]["source"] == "fallback" and old["score_threshold"]["score"] == 0.0
    assert len(old["detections"]) == 3 and any("no validated score threshold" in w for w in old["warnings"])
    scores = sorted(d["score"] for d in old["detections"])
    middle = round((scores[0] + scores[1]) / 2, 6)  # between the lowest two: drops exactly one organ
    validated = Predictor.from_checkpoint(_with_stored_threshold(checkpoint, tmp_path, middle), "cpu")
    predict_scans(validated, [scan], tmp_path / "new", overlay=False, progress=False)
    new = json.loads((tmp_path / "new" / "ct.json").read_text())
    assert new["score_threshold"]["source"] == "validation" and len(new["detections"]) == 2
    assert not any("threshold" in w for w in new["warnings"])
    predict_scans(validated, [scan], tmp_path / "option", score_threshold=0.0, overlay=False, progress=False)
    option = json.loads((tmp_path / "option" / "ct.json").read_text())
    assert option["score_threshold"]["source"] == "option" and len(option["detections"]) == 3


def test_cli_min_score_and_organs(tmp_path, checkpoint, capsys):
    scan = _ct(tmp_path / "ct.nii.gz")
    base = ["predict", str(checkpoint), str(scan), "--device", "cpu", "--no-overlay", "--no-progress"]
    code, out, _ = run_cli(capsys, *base, "-o", str(tmp_path / "a"), "--organs", "spleen,liver", "--format",
                           "monai", "--min-score", "0")  # fmt: skip
    assert code == 0 and "organs kept: score >= 0 (--score-threshold)" in out
    prediction = json.loads((tmp_path / "a" / "ct.json").read_text())
    assert sorted(d["label"] for d in prediction["detections"]) == ["liver", "spleen"]
    datalist = json.loads((tmp_path / "a" / "monai_datalist.json").read_text())
    assert sorted(datalist["validation"][0]["label"]) == [0, 1]  # label ids 1, 2 -> 0, 1 (no kidney: 4)
    refused = run_cli(capsys, *base, "-o", str(tmp_path / "b"), "--organs", "liver,pancreas")
    assert_refused(refused, "--organs", "pancreas", "kidney_left, liver, spleen")
    assert not (tmp_path / "b" / "ct.json").exists()


def test_mr_into_a_ct_model_is_warned_about(tmp_path, checkpoint, shared_data, capsys):
    mr = shared_data / "totalsegmentator" / "example_mr_sm.nii.gz"
    code, _, err = run_cli(capsys, "predict", str(checkpoint), str(mr), "-o", str(tmp_path / "out"),
                           "--device", "cpu", "--no-overlay", "--no-progress")  # fmt: skip
    assert code == 0 and "not CT in HU" in err
    prediction = json.loads((tmp_path / "out" / "example_mr_sm.json").read_text())
    assert any("not CT in HU" in w for w in prediction["warnings"])
    ct = shared_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    plans = make_plans(PreprocessConfig(input_size=GRID), CLASSES)
    from organdetr.io.images import read_image

    assert scan_mismatches(ct, intensity_percentiles(read_image(ct).array), plans) == []  # the real CT passes


def test_intensities_against_the_training_scans_range():
    """A model that stores its training scans' percentiles judges a scan against them (300 HU margin)."""
    plans = make_plans(PreprocessConfig(input_size=GRID), CLASSES)
    plans["intensity"] = {
        "p1": [-1024.0, -950.0],
        "p50": [-700.0, -100.0],
        "p99": [250.0, 900.0],
        "cases": 12,
    }
    like = {"p1": -1000.0, "p50": -400.0, "p99": 1100.0}
    assert scan_mismatches("scan.nii.gz", like, plans) == []
    padded = {"p1": -3024.0, "p50": -800.0, "p99": 1800.0}  # padding outside the FOV and a lot of bone: CT
    assert scan_mismatches("scan.nii.gz", padded, plans) == []
    scaled = {"p1": 0.0, "p50": 0.2, "p99": 1.0}  # a [0, 1]-normalised image: p1 far above the training's
    (line,) = scan_mismatches("scan.nii.gz", scaled, plans)
    assert "unlike the training scans (p1 0 HU; training p1 -1024..-950, p99 250..900 HU over 12" in line
    dark = {"p1": -1024.0, "p50": -1000.0, "p99": -600.0}  # nothing brighter than lung: a wrong rescale
    assert "(p99 -600 HU;" in scan_mismatches("scan.nii.gz", dark, plans)[0]
    mr_plans = {**plans, "normalization": {"scheme": "per_channel"}, "channels": ["T1"]}
    assert scan_mismatches("scan.nii.gz", scaled, mr_plans) == []  # not a CT model: nothing to say


def test_mr_dicom_series_is_refused_for_dicom_out_and_warned_about_without(tmp_path, checkpoint, capsys):
    from _dicom_factory import write_ct_series

    series, _ = write_ct_series(tmp_path / "mr_series", modality="MR")
    base = ["predict", str(checkpoint), str(series), "--device", "cpu", "--no-overlay", "--no-progress"]
    assert_refused(run_cli(capsys, *base, "-o", str(tmp_path / "dicom"), "--dicom-out"), series, "MR")
    assert not (tmp_path / "dicom" / "mr_series.json").exists()
    code, _, err = run_cli(capsys, *base, "-o", str(tmp_path / "plain"))
    prediction = json.loads((tmp_path / "plain" / "mr_series.json").read_text())
    assert (
        code == 0 and any("Modality is MR" in w for w in prediction["warnings"]) and "Modality is MR" in err
    )
