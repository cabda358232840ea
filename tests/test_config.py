"""TrainConfig: presets, strict YAML validation, --set overrides, round trip."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import yaml

from organdetr.models.config import PRESET_NAMES, model_preset
from organdetr.runtime.errors import InputError
from organdetr.training.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)


def test_every_preset_loads():
    assert {"tiny", "small", "paper", "detr", "seg2box"} <= set(PRESETS)
    for name in PRESETS:
        assert isinstance(load_config(name), TrainConfig)
    assert load_config("seg2box").arch == "seg2box"
    assert load_config("detr").model.decoder == "detr"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_load_and_match_model_presets(name):
    cfg = load_config(name)
    assert isinstance(cfg, TrainConfig)
    expected = asdict(model_preset(name))
    got = asdict(cfg.model)
    expected.pop("num_classes"), got.pop("num_classes")
    assert got == expected  # the YAML preset stays in sync with organdetr.models.model_preset


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "optim.lrr" in msg
    assert "lr" in msg.split("allowed keys")[1] and "weight_decay" in msg


def test_unknown_top_level_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer: {lr: 1}\n")
    with pytest.raises(InputError, match="unknown key 'optimizer'.*optim"):
        load_config(path)


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.lr=abc", "optim.lr: expected a number"),
        ("train.amp=fp8", "train.amp: 'fp8' is not one of"),
        ("model.backbone_channels=3", "expected a list"),
        ("data.batch_size=0", "batch_size must be >= 1"),
        ("train.epochs=1.5", "expected an integer"),
        ("matcher.kind=greedy", "is not one of"),
    ],
)
def test_bad_values_are_input_errors(override, match):
    with pytest.raises(InputError, match=match):
        load_config("tiny", [override])


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config(
        "tiny",
        [
            "optim.lr=3e-4",
            "data.val_cases=[a, b]",
            "model.kv_pool=[1,1,1]",
            "train.deterministic=true",
            "data.cache_dir=/x/y",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.val_cases == ["a", "b"]
    assert cfg.model.kv_pool == (1, 1, 1)
    assert cfg.train.deterministic is True
    assert cfg.data.cache_dir == "/x/y"


def test_override_syntax_errors():
    with pytest.raises(InputError, match="KEY.PATH=VALUE"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(InputError, match="is a value, not a section"):
        apply_overrides({"arch": "organdetr"}, ["arch.x=1"])


def test_dump_round_trips():
    cfg = load_config("small", ["optim.ema=true", "data.train_cases=[c1]"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_not_a_file_nor_preset(tmp_path):
    with pytest.raises(InputError, match="not a preset name"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(bad)
