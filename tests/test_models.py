"""Tests for organdetr.models: presets, network shapes, encoders, gradients, Detector protocol."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from organdetr.core.boxes.ops import box_iou_3d
from organdetr.models import PRESET_NAMES, build_detector, build_model, model_preset
from organdetr.models.blocks.position import sine_position_3d
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.matcher import MatcherConfig
from organdetr.training.config import load_config

torch.set_num_threads(2)
NUM_CLASSES = 4


def _targets(batch: int, size: int) -> list[dict]:
    seg = torch.zeros(size, size, size, dtype=torch.int64)
    seg[2:10, 4:12, 6:14] = 1  # class 0
    seg[16:28, 16:24, 8:20] = 3  # class 2
    boxes = torch.tensor([[6, 8, 10, 8, 8, 8], [22, 20, 14, 12, 8, 12]], dtype=torch.float32) / size
    return [{"labels": torch.tensor([0, 2]), "boxes": boxes, "seg": seg} for _ in range(batch)]


def _tiny_detector(**overrides):
    cfg = model_preset("tiny", **overrides)
    return build_detector("organdetr", cfg, MatcherConfig(), LossConfig(), NUM_CLASSES, (32, 32, 32))


def test_presets_exist_and_validate():
    assert set(PRESET_NAMES) >= {"tiny", "small", "paper"}
    assert model_preset("small", 7).num_classes == 7
    assert model_preset("tiny", 3, num_queries=5).num_queries == 5
    with pytest.raises(ValueError, match="unknown model preset"):
        model_preset("huge", 3)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        model_preset("tiny", 3, n_queries=5)
    with pytest.raises(ValueError, match="encoder"):
        model_preset("tiny", 3, encoder="swin")
    with pytest.raises(ValueError, match="decoder"):
        model_preset("tiny", 3, decoder="conditional")
    with pytest.raises(ValueError, match="class_head"):
        model_preset("tiny", 3, class_head="relu")
    with pytest.raises(ValueError, match="kv_pool"):
        model_preset("tiny", 3, kv_pool=(1, 1))


def test_two_stage_query_count_follows_the_classes():
    cfg = model_preset("tiny", NUM_CLASSES, queries_per_class=3)
    assert cfg.queries_for(NUM_CLASSES) == 12
    assert model_preset("tiny", NUM_CLASSES, two_stage=False, num_queries=7).queries_for(NUM_CLASSES) == 7
    assert model_preset("tiny", NUM_CLASSES, decoder="detr", num_queries=9).queries_for(NUM_CLASSES) == 9


VARIANTS = {
    "deformable-two-stage": {},
    "deformable-learned-refs": {"two_stage": False},
    "deformable-no-denoising": {"denoising": False},
    "deformable-softmax": {"class_head": "softmax"},
    "detr": {"decoder": "detr", "class_head": "softmax", "two_stage": False, "denoising": False},
}


@pytest.mark.parametrize("encoder", ["msa", "deformable", "fpn", "single"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_output_shapes_train_and_eval(encoder, variant):
    cfg = model_preset("tiny", NUM_CLASSES, encoder=encoder, **VARIANTS[variant])
    net = build_model(cfg).train()
    out = net(torch.randn(2, 1, 32, 32, 32), _targets(2, 32))
    n = cfg.queries_for(NUM_CLASSES)
    c = NUM_CLASSES if cfg.class_head == "sigmoid" else NUM_CLASSES + 1
    assert net.class_activation == cfg.class_head
    assert out["pred_logits"].shape == (2, n, c)
    assert out["pred_boxes"].shape == (2, n, 6)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == cfg.num_decoder_layers - 1
    assert all(a["pred_logits"].shape == (2, n, c) for a in out["aux_outputs"])
    expected_levels = [32 // s for s in cfg.strides] if encoder != "single" else [32 // cfg.strides[-1]]
    assert [tuple(s.shape) for s in out["seg_logits"]] == [
        (2, NUM_CLASSES + 1, g, g, g) for g in expected_levels
    ]
    tokens = sum(g**3 for g in expected_levels)
    assert ("enc_outputs" in out) == (cfg.decoder == "deformable" and cfg.two_stage)
    if "enc_outputs" in out:
        assert out["enc_outputs"]["pred_logits"].shape == (2, tokens, NUM_CLASSES)
        assert out["enc_outputs"]["anchors"].shape == (tokens, 6)
    assert ("dn_outputs" in out) == (cfg.decoder == "deformable" and cfg.denoising)
    if "dn_outputs" in out:
        plan = out["dn_outputs"]["plan"]
        assert plan.pad == 2 and plan.groups == cfg.dn_number // 4
        assert len(out["dn_outputs"]["layers"]) == cfg.num_decoder_layers
        assert out["dn_outputs"]["layers"][-1]["pred_boxes"].shape == (2, plan.size, 6)
    net.eval()
    with torch.no_grad():
        plain = net(torch.randn(1, 1, 32, 32, 32), _targets(1, 32))
    assert plain["seg_logits"] == []  # seg heads off at inference
    assert "enc_outputs" not in plain and "dn_outputs" not in plain  # nothing training-only in eval


def test_seg_heads_can_be_disabled_entirely():
    net = build_model(model_preset("tiny", NUM_CLASSES, seg_heads=False)).train()
    assert len(net.seg_heads) == 0
    assert net(torch.randn(1, 1, 32, 32, 32))["seg_logits"] == []


@pytest.mark.parametrize("variant", ["deformable-two-stage", "detr"])
def test_eval_output_is_independent_of_batch_companions(variant):
    net = build_model(model_preset("tiny", NUM_CLASSES, **VARIANTS[variant])).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        both, alone = net(x), net(x[1:])
    torch.testing.assert_close(both["pred_boxes"][1:], alone["pred_boxes"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both["pred_logits"][1:], alone["pred_logits"], atol=1e-4, rtol=1e-4)


def test_denoising_queries_do_not_change_the_matching_outputs():
    """The attention mask keeps the matching queries blind to the denoising ones (they would read the
    answer): with and without denoising queries, the matching queries' outputs are identical."""
    torch.manual_seed(0)
    net = build_model(model_preset("tiny", NUM_CLASSES, seg_heads=False)).train()
    x = torch.randn(2, 1, 32, 32, 32)
    with_dn = net(x, _targets(2, 32))
    without = net(x)
    assert "dn_outputs" in with_dn and "dn_outputs" not in without
    torch.testing.assert_close(with_dn["pred_boxes"], without["pred_boxes"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(with_dn["pred_logits"], without["pred_logits"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder", ["msa", "deformable", "fpn", "single"])
@pytest.mark.parametrize("variant", ["deformable-two-stage", "deformable-learned-refs", "detr"])
def test_gradients_reach_every_parameter(encoder, variant):
    """After one optimizer step (the zero-initialised box deltas and attention offsets pass no gradient at
    step 0, by design), every parameter gets a gradient."""
    torch.manual_seed(0)
    detector = _tiny_detector(encoder=encoder, **VARIANTS[variant]).train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=1e-2)
    images = torch.randn(2, 1, 32, 32, 32)
    detector.loss(images, _targets(2, 32))["loss"].backward()
    optimizer.step()
    optimizer.zero_grad()
    losses = detector.loss(images, _targets(2, 32))
    expected = {"loss", "loss_class", "loss_bbox", "loss_giou", "loss_seg", "loss_class_0"}
    if variant == "deformable-two-stage":
        expected |= {"loss_class_enc", "loss_bbox_enc", "loss_class_dn", "loss_giou_dn_0"}
    assert expected <= set(losses)
    losses["loss"].backward()
    dead = [name for name, p in detector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if encoder == "single":  # the unused pyramid levels' projections legitimately get no gradient
        dead = [name for name in dead if not name.startswith("network.input_proj.")]
    assert dead == []


@pytest.mark.parametrize("variant", ["deformable-two-stage", "detr"])
def test_detect_protocol(variant):
    detector = _tiny_detector(**VARIANTS[variant]).eval()
    results = detector.detect(torch.randn(2, 1, 32, 32, 32))
    assert len(results) == 2
    for r in results:
        assert sorted(r["labels"].tolist()) == list(range(NUM_CLASSES))  # best query per class
        assert r["boxes"].shape == (NUM_CLASSES, 6)
        assert ((r["boxes"] >= 0) & (r["boxes"] <= 32)).all()
        assert (r["boxes"][:, 3:] >= r["boxes"][:, :3]).all()
        assert ((r["scores"] >= 0) & (r["scores"] <= 1)).all()
    assert isinstance(detector.network, torch.nn.Module)


def test_build_detector_rejects_bad_arguments():
    cfg = model_preset("tiny")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_detector("yolo", cfg, MatcherConfig(), LossConfig(), 3, (32, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        build_detector("organdetr", cfg, MatcherConfig(), LossConfig(), 3, (30, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        build_detector("organdetr", cfg, MatcherConfig(), LossConfig(), 0, (32, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        build_model(cfg)  # preset without classes


def test_small_preset_forward_shapes():
    cfg = model_preset("small", NUM_CLASSES)
    net = build_model(cfg).eval()
    n_params = sum(p.numel() for p in net.parameters())
    assert 1_000_000 < n_params < 4_000_000
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32, 32))
    assert out["pred_boxes"].shape == (1, cfg.queries_for(NUM_CLASSES), 6)


def test_demo_preset_adds_the_stride_4_fine_level_to_the_decoder_memory():
    cfg = dataclasses.replace(load_config("demo").model, num_classes=NUM_CLASSES)
    assert cfg.fine_level and cfg.strides == (8, 16, 32)
    net = build_model(cfg).train()
    out = net(torch.randn(1, 1, 64, 64, 64), _targets(1, 64))
    grids = [16, 8, 4, 2]  # the fine stride-4 stage first, then the encoded strides 8 / 16 / 32
    assert [tuple(s.shape[2:]) for s in out["seg_logits"]] == [(g, g, g) for g in grids]
    assert out["enc_outputs"]["pred_logits"].shape == (1, sum(g**3 for g in grids), NUM_CLASSES)
    out["pred_logits"].sum().backward()  # the decoder samples the fine level: its fusion gets gradients
    assert net.fine_proj[0].weight.grad.abs().sum() > 0
    assert net.fine_smooth[0].weight.grad.abs().sum() > 0


def test_paper_preset_constructs_and_runs_reduced_input():
    cfg = model_preset("paper", 20)
    assert cfg.strides == (8, 16, 32)
    net = build_model(cfg).eval()
    n_params = sum(p.numel() for p in net.parameters())
    assert 20_000_000 < n_params < 80_000_000
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 64, 64))  # reduced input; the paper size is benchmarked instead
    assert out["pred_logits"].shape == (1, 3 * 20, 20)  # two-stage: 3 proposals per class, sigmoid


def test_sine_position_encoding_is_unique_per_voxel():
    pos = sine_position_3d((4, 5, 6), 32)
    assert pos.shape == (1, 32, 4, 5, 6)
    flat = pos[0].flatten(1).t()  # [120, 32]
    assert torch.cdist(flat, flat).add(torch.eye(120) * 1e3).min() > 1e-3
    with pytest.raises(ValueError, match="too small"):
        sine_position_3d((2, 2, 2), 4)


@pytest.mark.slow
def test_tiny_detector_overfits_one_scan():
    """End to end: DQM training localises two cubic 'organs' (IoU > 0.8) and scores them above absent ones."""
    torch.manual_seed(0)
    size = 32
    images = torch.zeros(1, 1, size, size, size)
    images[0, 0, 2:10, 4:12, 6:14] = 1.0
    images[0, 0, 16:28, 16:24, 8:20] = -1.0
    images += 0.1 * torch.randn_like(images)
    targets = _targets(1, size)
    detector = _tiny_detector()
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(120):
        loss = detector.loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), 1.0)
        optimizer.step()
    result = detector.eval().detect(images)[0]
    by_class = {
        int(c): (s.item(), b)
        for c, s, b in zip(result["labels"], result["scores"], result["boxes"], strict=True)
    }
    gt = {0: torch.tensor([2.0, 4, 6, 10, 12, 14]), 2: torch.tensor([16.0, 16, 8, 28, 24, 20])}
    for cls, box in gt.items():
        iou = box_iou_3d(by_class[cls][1][None], box[None])[0][0, 0].item()
        assert iou > 0.8, f"class {cls}: IoU {iou:.2f}"
    assert min(by_class[0][0], by_class[2][0]) > max(by_class[1][0], by_class[3][0])


def test_too_few_queries_for_the_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="num_queries=4 < num_classes=6"):
        build_detector(
            "organdetr",
            model_preset("tiny", num_queries=4, two_stage=False),
            MatcherConfig(),
            LossConfig(),
            6,
            (32,) * 3,
        )


@pytest.mark.parametrize(
    ("encoder", "variant"),
    [
        ("msa", "deformable-two-stage"),
        ("deformable", "deformable-two-stage"),
        ("fpn", "detr"),
        ("single", "detr"),
    ],
)
def test_tiny_network_traces_to_onnx(encoder, variant, tmp_path):
    """Guards ONNX-friendliness (no data-dependent control flow / scipy in forward); outputs match torch."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Outputs(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):
            out = self.net(images)
            return out["pred_logits"], out["pred_boxes"]

    wrapper = Outputs(
        build_model(model_preset("tiny", NUM_CLASSES, encoder=encoder, **VARIANTS[variant])).eval()
    )
    images = torch.randn(1, 1, 32, 32, 32)
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (images,), str(path), dynamo=False, opset_version=20, input_names=["images"]
        )
    logits, boxes = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    with torch.no_grad():
        ref_logits, ref_boxes = wrapper(images)
    assert abs(logits - ref_logits.numpy()).max() < 1e-4
    assert abs(boxes - ref_boxes.numpy()).max() < 1e-4
