"""Fine-tuning (`train --init-from RUN`, `--freeze PART --freeze-steps N`): what loads, what is
re-initialised, class rows mapped by organ name, freezing, resume of a fine-tuned run, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from _cache_factory import CLASSES, make_cache, save_random_checkpoint
from _cli import run_cli
from organdetr.models import detector_from_config
from organdetr.preprocessing.plans import PreprocessConfig, make_plans
from organdetr.runtime.errors import InputError
from organdetr.training.checkpoint import save_checkpoint
from organdetr.training.config import dump_config, load_config
from organdetr.training.fit import fit
from organdetr.training.init_from import (
    CLASS_ROWS,
    LOADED,
    REINIT,
    class_dependent_tensors,
    init_from_run,
)

GRID = (32, 32, 32)
FIVE = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver"}
# ten organs, other label ids and order; spleen, kidneys and liver shared with FIVE (gallbladder too)
TEN = {
    1: "liver", 2: "aorta", 3: "kidney_left", 4: "kidney_right", 5: "pancreas", 6: "stomach",
    7: "spleen", 8: "gallbladder", 9: "duodenum", 10: "esophagus",
}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"), num_cases=2, size=32)


@pytest.fixture(scope="module")
def five_organ_run(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("five") / "run", FIVE, GRID)


def _ten_organ_detector():
    cfg = load_config("tiny")
    torch.manual_seed(1)
    detector = detector_from_config(cfg, len(TEN), GRID)
    axes = class_dependent_tensors(lambda k: detector_from_config(cfg, k, GRID), len(TEN), cfg.arch)
    return detector, axes


def test_class_dependent_tensors_are_found_with_their_layout():
    _, axes = _ten_organ_detector()
    names = set(axes)
    assert {"network.decoder.class_heads.0.weight", "network.proposal_head.class_head.bias"} <= names
    assert "network.label_embed.weight" in names and "network.query_content.weight" in names
    assert not any("backbone" in n or "encoder" in n for n in names)
    assert axes["network.decoder.class_heads.0.weight"].extra == 0
    label = axes["network.label_embed.weight"]  # K + 1: the padding slot last
    assert (label.per_class, label.extra, label.extra_first) == (1, 1, False)
    seg = axes["network.seg_heads.0.conv.2.weight"]  # K + 1: background first
    assert (seg.per_class, seg.extra, seg.extra_first) == (1, 1, True)
    assert axes["network.query_content.weight"].per_class == 3  # queries_per_class


def test_five_organ_run_into_ten_organ_model_copies_shared_class_rows(five_organ_run):
    old = load_file(five_organ_run / "last" / "model.safetensors")
    detector, axes = _ten_organ_detector()
    fresh = {k: v.clone() for k, v in detector.state_dict().items()}
    report = init_from_run(detector, "organdetr", TEN, five_organ_run, axes)
    new = detector.state_dict()
    status = {row["name"]: row["status"] for row in report.rows}
    # every class-free tensor loads exactly
    for name in new:
        if name not in axes:
            assert status[name] == LOADED, name
            torch.testing.assert_close(new[name], old[name], rtol=0, atol=0)
    assert set(report.shared_classes) == {"liver", "kidney_left", "kidney_right", "spleen", "gallbladder"}
    old_index = {name: i for i, name in enumerate(FIVE[k] for k in sorted(FIVE))}
    new_names = [TEN[k] for k in sorted(TEN)]
    head = "network.decoder.class_heads.1.weight"
    assert status[head] == CLASS_ROWS
    for i, organ in enumerate(new_names):
        expected = old[head][old_index[organ]] if organ in old_index else fresh[head][i]
        torch.testing.assert_close(new[head][i], expected, rtol=0, atol=0, msg=organ)
    seg = "network.seg_heads.0.conv.2.weight"  # background row 0, organ c at c + 1
    torch.testing.assert_close(new[seg][0], old[seg][0], rtol=0, atol=0)
    torch.testing.assert_close(new[seg][1 + new_names.index("spleen")], old[seg][1 + old_index["spleen"]])
    aorta = 1 + new_names.index("aorta")
    torch.testing.assert_close(new[seg][aorta], fresh[seg][aorta])
    label = "network.label_embed.weight"  # padding slot last
    torch.testing.assert_close(new[label][-1], old[label][-1], rtol=0, atol=0)
    # several rows per class: re-initialised whole
    assert status["network.query_content.weight"] == REINIT
    torch.testing.assert_close(new["network.query_content.weight"], fresh["network.query_content.weight"])


def test_same_classes_load_everything(five_organ_run):
    cfg = load_config("tiny")
    detector = detector_from_config(cfg, len(FIVE), GRID)
    axes = class_dependent_tensors(lambda k: detector_from_config(cfg, k, GRID), len(FIVE), cfg.arch)
    report = init_from_run(detector, "organdetr", FIVE, five_organ_run, axes)
    assert report.count(LOADED) == len(detector.state_dict()) and report.count(REINIT) == 0


def test_maskmed_run_into_organdetr_refuses_in_one_line(tmp_path, capsys, cache):
    """MaskMed's U-Net / transformer share no tensor name with Organ-DETR: refused, nothing written."""
    maskmed = save_random_checkpoint(tmp_path / "maskmed", CLASSES, GRID, "arch=maskmed")
    run = tmp_path / "ft"
    code, _, err = run_cli(
        capsys, "train", "tiny", "--cache", cache, "--output", run, "--init-from", maskmed,
        "--set", "train.steps=1", "--set", "data.val_fraction=0", "--set", "train.progress=false",
    )  # fmt: skip
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no tensor of this maskmed run matches the organdetr model" in lines[0]
    assert not run.exists()


def test_other_shapes_load_the_matching_blocks(tmp_path):
    """A run of another Organ-DETR shape (one decoder layer less, no segmentation heads): the blocks both
    have load, the extra decoder layer and the heads stay fresh."""
    other = save_random_checkpoint(
        tmp_path / "other", FIVE, GRID, "model.num_decoder_layers=1", "model.seg_heads=false"
    )
    detector, axes = _ten_organ_detector()
    report = init_from_run(detector, "organdetr", TEN, other, axes)
    status = {row["name"]: row["status"] for row in report.rows}
    assert status["network.backbone.stem.0.weight"] == LOADED
    assert status["network.decoder.layers.0.self_attn.q_proj.weight"] == LOADED
    assert status["network.decoder.layers.1.self_attn.q_proj.weight"] == REINIT
    assert status["network.seg_heads.0.conv.0.weight"] == REINIT


def test_init_from_with_resume_is_one_line_error(tmp_path, capsys, five_organ_run):
    code, _, err = run_cli(capsys, "train", "--resume", five_organ_run, "--init-from", five_organ_run)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--resume" in err


def test_unknown_freeze_part_is_one_line_error(tmp_path, capsys, cache, five_organ_run):
    code, _, err = run_cli(
        capsys, "train", "tiny", "--cache", cache, "--output", tmp_path / "r", "--init-from", five_organ_run,
        "--freeze", "trunk", "--freeze-steps", "2", "--set", "train.progress=false",
    )  # fmt: skip
    assert code == 2 and "--freeze trunk" in err and "backbone" in err


def _backbone(path):
    return {k: v for k, v in load_file(path / "last" / "model.safetensors").items() if ".backbone." in k}


def test_fine_tune_freezes_backbone_then_trains_it_and_resumes(tmp_path, capsys, cache, five_organ_run):
    """4-organ cache from a 5-organ run: backbone equal to the run's after 2 frozen steps (an interrupted
    run), then the resumed run trains it; init_from.json lists what loaded; resume does not reload."""
    run = tmp_path / "ft"
    code, _, err = run_cli(
        capsys, "train", "tiny", "--cache", cache, "--output", run, "--init-from", five_organ_run,
        "--freeze", "backbone", "--freeze-steps", "2", "--set", "train.steps=2",
        "--set", "data.val_fraction=0", "--set", "train.progress=false", "--set", "optim.warmup_steps=0",
    )  # fmt: skip
    assert code == 0, err
    assert "init-from" in err and "kidney_left" in err  # the rich table and its shared organs
    report = json.loads((run / "init_from.json").read_text())
    assert report["counts"]["loaded"] > 0 and report["counts"]["class rows copied"] > 0
    assert set(report["shared_classes"]) == {"liver", "kidney_left", "kidney_right", "spleen"}
    start = _backbone(five_organ_run)
    after_two = _backbone(run)
    assert after_two.keys() == start.keys()
    for key in start:
        torch.testing.assert_close(after_two[key], start[key], rtol=0, atol=0, msg=key)
    cfg = load_config(run / "config.yaml", ["train.steps=4"])
    assert cfg.finetune.freeze == ("backbone",) and cfg.finetune.freeze_steps == 2
    fit(cfg, run, resume=True)
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 4
    trained = _backbone(run)
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.endswith("weight"))


def test_freeze_steps_without_parts_is_a_config_error():
    with pytest.raises(InputError, match="go together"):
        load_config("tiny", ["finetune.freeze_steps=3"])


def test_ema_weights_are_preferred(tmp_path):
    """A run that kept EMA weights fine-tunes from them (as predict uses them), not from the raw weights."""
    cfg = load_config("tiny")
    detector = detector_from_config(cfg, len(FIVE), GRID)
    ema = AveragedModel(detector)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1.0)
    run = tmp_path / "ema_run"
    save_checkpoint(run / "last", detector, {"step": 1}, ema=ema, config_yaml=dump_config(cfg),
                    plans=make_plans(PreprocessConfig(input_size=GRID), FIVE), include_rng=False)  # fmt: skip
    fresh = detector_from_config(cfg, len(FIVE), GRID)
    axes = class_dependent_tensors(lambda k: detector_from_config(cfg, k, GRID), len(FIVE), cfg.arch)
    report = init_from_run(fresh, "organdetr", FIVE, run, axes)
    assert report.source.endswith("ema.safetensors")
    name = "network.backbone.stem.0.weight"
    torch.testing.assert_close(fresh.state_dict()[name], ema.module.state_dict()[name], rtol=0, atol=0)
