"""Issue 25: the backbone registry (``model.backbone``: conv | mednext_v2 | primus | resenc) under Organ-DETR,
seg2box and MaskMed; MedNeXt-v2's GRN against a naive one; ``--init-from`` a plain backbone weight file.

``resenc`` and ``primus`` come from the optional ``dynamic-network-architectures`` (``backbones`` extra):
their cases skip where it does not import. Primus also needs timm and einops; timm imports torchvision, which
Primus never calls: where torchvision is missing, Primus is imported with a stand-in
(:mod:`_torchvision_standin`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _cache_factory import make_cache, save_random_checkpoint
from _cli import run_cli
from _torchvision_standin import enable_primus
from organdetr.inference.export import export_checkpoint, load_session, onnx_detect
from organdetr.models import build_detector, model_preset
from organdetr.models.blocks import backbones
from organdetr.models.blocks.backbone import Backbone3d
from organdetr.models.blocks.backbones import build_feature_pyramid, build_segmentation_unet, check_backbone
from organdetr.models.blocks.backbones.mednext_v2 import GRN3d, MedNeXtBlock
from organdetr.models.blocks.backbones.primus import SimpleFeaturePyramid3d
from organdetr.models.config import build_backbone
from organdetr.models.maskmed.config import MaskMedConfig
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.matcher import MatcherConfig
from organdetr.runtime.errors import InputError
from organdetr.training.checkpoint import load_detector
from organdetr.training.init_from import init_from_weights
from organdetr.training.init_weights import match_prefixes, read_weight_file

torch.set_num_threads(1)
NUM_CLASSES = 2
GRID = (32, 32, 32)
CLASSES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


NEEDS = {
    "mednext_v2": True,
    "resenc": _available("dynamic_network_architectures.building_blocks.residual_encoders"),
    "primus": enable_primus(),  # without torchvision: imported with a stand-in (_torchvision_standin)
}
KINDS = [
    pytest.param(
        k, marks=pytest.mark.skipif(not ok, reason=f"{k}: dynamic-network-architectures (timm) missing")
    )
    for k, ok in NEEDS.items()
]


def _targets(size: int) -> list[dict]:
    seg = torch.zeros(size, size, size, dtype=torch.int64)
    seg[2:10, 4:12, 6:14] = 1
    seg[16:28, 16:24, 8:20] = 2
    boxes = torch.tensor([[6, 8, 10, 8, 8, 8], [22, 20, 14, 12, 8, 12]], dtype=torch.float32) / size
    return [{"labels": torch.tensor([0, 1]), "boxes": boxes, "seg": seg}]


def _detector(arch: str, kind: str, grid=GRID, **model):
    cfg = model_preset("tiny", backbone=kind, **model)
    arch_cfg = MaskMedConfig(features=(8, 16, 32, 64)) if arch == "maskmed" else None
    return build_detector(arch, cfg, MatcherConfig(), LossConfig(), NUM_CLASSES, grid, arch_cfg=arch_cfg)


def test_grn_matches_a_naive_loop():
    """GRN3d against the ConvNeXt-V2 definition written out per sample and channel (float64, 1e-10)."""
    torch.manual_seed(0)
    grn = GRN3d(5).double()
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64)
    want = torch.empty_like(x)
    for b in range(2):
        norms = [float(np.sqrt((x[b, c].numpy() ** 2).sum())) for c in range(5)]
        mean = sum(norms) / 5
        for c in range(5):
            n = norms[c] / (mean + 1e-6)
            want[b, c] = grn.gamma[0, c, 0, 0, 0] * x[b, c] * n + grn.beta[0, c, 0, 0, 0] + x[b, c]
    torch.testing.assert_close(grn(x), want, rtol=0, atol=1e-10)
    fresh = GRN3d(5)  # gamma = beta = 0: the identity
    torch.testing.assert_close(fresh(x.float()), x.float())


@pytest.mark.parametrize("resample,kernel,size", [("", 3, 8), ("down", 5, 4), ("up", 3, 16)])
def test_mednext_block_shapes(resample, kernel, size):
    block = MedNeXtBlock(6, 12, ratio=2, kernel=kernel, resample=resample)
    assert block(torch.randn(1, 6, 8, 8, 8)).shape == (1, 12, size, size, size)


def test_conv_is_the_default_and_keeps_its_parameter_names():
    """Existing checkpoints load: ``conv`` builds the same Backbone3d with the same names as before."""
    cfg = model_preset("tiny")
    assert cfg.backbone == "conv"
    built = build_backbone(cfg)
    assert isinstance(built, Backbone3d) and built.strides == cfg.strides
    direct = Backbone3d(1, 8, (8, 16, 32), 1, 3, 4)
    assert list(built.state_dict()) == list(direct.state_dict())
    with pytest.raises(ValueError, match="model.backbone must be one of"):
        model_preset("tiny", backbone="swin")
    with pytest.raises(ValueError, match="backbone_size"):
        check_backbone("resenc", "XXL")


@pytest.mark.parametrize("kind", ["resenc", "primus"])
def test_a_missing_optional_package_is_a_config_error(monkeypatch, kind):
    """Without dynamic-network-architectures (or timm) the model section itself is refused, naming the
    extra, before anything is built (the config loader turns it into a one-line InputError, exit 2)."""
    monkeypatch.setattr(backbones, f"{kind.upper()}_AVAILABLE", False)
    with pytest.raises(ValueError, match=r"needs the optional package .*organdetr\[backbones\]"):
        model_preset("tiny", backbone=kind)
    model_preset("tiny", backbone="mednext_v2")  # own code: always there


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid,stages", [(32, 3), (64, 4)])
def test_pyramid_gives_the_strides_and_channels_the_encoder_expects(kind, grid, stages):
    """``stages`` stages, all returned (the encoder's levels + fine_level's finer one): strides 4, 8, ...
    as ModelConfig.strides."""
    channels = (8, 16, 32, 64)[:stages]
    cfg = model_preset(
        "tiny", backbone=kind, backbone_channels=channels, num_levels=stages - 1, kv_pool=(1,) * (stages - 1)
    )
    pyramid = build_feature_pyramid(kind, "S", 1, stages, stages, (grid,) * 3)
    assert pyramid.strides == (4, 8, 16, 32)[:stages] and pyramid.strides[1:] == cfg.strides
    with torch.no_grad():
        maps = pyramid(torch.randn(1, 1, grid, grid, grid))
    for m, stride, channels in zip(maps, pyramid.strides, pyramid.out_channels, strict=True):
        assert m.shape == (1, channels, grid // stride, grid // stride, grid // stride)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["organdetr", "seg2box", "maskmed"])
def test_every_architecture_trains_two_steps_on_every_backbone(arch, kind):
    """32^3: builds, the loss is finite and two AdamW steps change the backbone's weights."""
    torch.manual_seed(0)
    detector = _detector(arch, kind).train()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    optim = torch.optim.AdamW(detector.parameters(), lr=1e-3)
    images = torch.randn(1, 1, *GRID)
    for _ in range(2):
        losses = detector.loss(images, _targets(32))
        total = sum(losses.values())
        assert torch.isfinite(total)
        optim.zero_grad()
        total.backward()
        optim.step()
    changed = [
        k for k, v in detector.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert len(changed) > len(before) // 2
    detector.eval()
    with torch.no_grad():
        assert len(detector.detect(images)) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_64_cube_organdetr_and_seg2box_forward(kind):
    with torch.no_grad():
        out = _detector("organdetr", kind, (64, 64, 64)).eval()(torch.randn(1, 1, 64, 64, 64))
        assert out["pred_boxes"].shape[-1] == 6
        logits = _detector("seg2box", kind, (64, 64, 64)).eval()(torch.randn(1, 1, 64, 64, 64))
    assert logits.shape == (1, NUM_CLASSES + 1, 64, 64, 64)


def test_simple_feature_pyramid_reaches_every_stride_from_the_token_map():
    """Primus's pyramid on its own (no Transformer needed): stride 8 tokens -> strides 1 .. 32."""
    pyramid = SimpleFeaturePyramid3d(48, (1, 2, 4, 8, 16, 32), (8, 8, 16, 16, 32, 32))
    maps = pyramid(torch.randn(1, 48, 4, 4, 4))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (8, 32, 32, 32), (8, 16, 16, 16), (16, 8, 8, 8), (16, 4, 4, 4), (32, 2, 2, 2), (32, 1, 1, 1)
    ]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_export_of_organdetr_on_the_backbone(tmp_path, kind):
    """``organdetr export`` (DETR-style detectors only) works on the new backbones; ONNX Runtime's boxes are
    PyTorch's to 1e-4 voxels."""
    run = save_random_checkpoint(tmp_path / "run", CLASSES, GRID, f"model.backbone={kind}")
    session = load_session(export_checkpoint(run, tmp_path / "m.onnx"))
    detector, _, _ = load_detector(run, "cpu")
    images = np.random.default_rng(1).random((1, 1, *GRID), dtype=np.float32)
    with torch.no_grad():
        want = detector.detect(torch.from_numpy(images))[0]
    got = onnx_detect(session, images)[0]
    assert torch.equal(got["labels"], want["labels"])
    assert float((got["boxes"] - want["boxes"]).abs().max()) < 1e-4


def test_match_prefixes_strips_a_common_prefix():
    model = {"network.backbone.stem.weight": torch.zeros(2, 3), "network.backbone.stages.0.w": torch.zeros(4)}
    source = {"module.encoder.stem.weight": torch.ones(2, 3), "module.encoder.stages.0.w": torch.ones(4),
              "module.head.w": torch.ones(1)}  # fmt: skip
    p, q, pairs = match_prefixes(model, source)
    assert (p, q) == ("module.encoder.", "network.backbone.")
    assert pairs == {"network.backbone.stem.weight": "module.encoder.stem.weight",
                     "network.backbone.stages.0.w": "module.encoder.stages.0.w"}  # fmt: skip


def test_init_from_a_pretrained_backbone_file(tmp_path):
    """A MedNeXt pyramid's weights saved alone (torch state dict, prefixed as another code base would) load
    into Organ-DETR's backbone; everything else stays fresh; garbage is a one-line InputError."""
    torch.manual_seed(3)
    pretrained = build_feature_pyramid("mednext_v2", "S", 1, 3, 3)
    torch.save(
        {"state_dict": {f"encoder.{k}": v for k, v in pretrained.state_dict().items()}}, tmp_path / "b.pt"
    )
    detector = _detector("organdetr", "mednext_v2")
    report = init_from_weights(detector, "organdetr", tmp_path / "b.pt")
    loaded = detector.network.backbone.state_dict()
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert report.count("loaded") == len(pretrained.state_dict())
    assert report.count("re-initialised") == len(detector.state_dict()) - len(pretrained.state_dict())
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    assert set(read_weight_file(tmp_path / "other.safetensors")) == {"x"}
    with pytest.raises(InputError, match="no tensor of this file matches"):
        init_from_weights(detector, "organdetr", tmp_path / "other.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable weight file"):
        read_weight_file(tmp_path / "bad.pt")


def test_train_init_from_weight_file_cli(tmp_path, capsys):
    """``train --init-from backbone.safetensors``: one step runs and init_from.json records the loaded
    backbone tensors."""
    cache = make_cache(tmp_path / "cache", num_cases=2, size=32)
    pretrained = build_feature_pyramid("mednext_v2", "S", 1, 3, 3)
    save_file(
        {f"model.{k}": v.contiguous() for k, v in pretrained.state_dict().items()},
        str(tmp_path / "w.safetensors"),
    )
    run = tmp_path / "ft"
    code, _, err = run_cli(
        capsys, "train", "tiny", "--cache", cache, "--output", run, "--init-from", tmp_path / "w.safetensors",
        "--set", "model.backbone=mednext_v2", "--set", "train.steps=1", "--set", "data.val_fraction=0",
        "--set", "train.progress=false",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((run / "init_from.json").read_text())
    assert report["counts"]["loaded"] == len(pretrained.state_dict())


@pytest.mark.parametrize("kind", [k for k in KINDS if k.values[0] != "mednext_v2"])
def test_init_from_a_dynamic_network_architectures_checkpoint(tmp_path, kind):
    """A whole segmentation network of the package (nnU-Net's ResidualEncoderUNet saved as nnU-Net does,
    under ``network_weights``; Primus as safetensors): its encoder / Transformer tensors load into
    Organ-DETR's backbone of the same size by name (prefix ``""`` -> ``network.backbone.``), its decoder
    stays unused."""
    torch.manual_seed(4)
    segmenter = build_segmentation_unet(kind, "S", 1, 3, GRID)
    weights = {k: v.contiguous() for k, v in segmenter.state_dict().items()}
    if kind == "resenc":
        torch.save({"network_weights": weights}, tmp_path / "w.pth")
        path = tmp_path / "w.pth"
    else:
        save_file(weights, str(tmp_path / "w.safetensors"))
        path = tmp_path / "w.safetensors"
    detector = _detector("organdetr", kind)
    report = init_from_weights(detector, "organdetr", path)
    assert report.source_arch == "weights (prefix '' -> 'network.backbone.')"
    trunk = "encoder." if kind == "resenc" else ("down_projection.", "eva.")
    expected = [k for k in weights if k.startswith(trunk)]
    assert report.count("loaded") == len(expected) > 0
    state = detector.state_dict()
    for key in expected:
        torch.testing.assert_close(state[f"network.backbone.{key}"], weights[key], rtol=0, atol=0)
