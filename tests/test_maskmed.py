"""MaskMed: mask matcher, masked attention, FSAD, the network's shapes, config switches and the optimizer."""

from __future__ import annotations

import pytest
import torch

from organdetr.models import build_detector, detector_from_config
from organdetr.models.blocks.mask_head import MaskHead, attention_mask_from_logits
from organdetr.models.losses import matched_mask_losses
from organdetr.models.maskmed.config import MaskMedConfig
from organdetr.models.maskmed.criterion import MaskSetCriterion, segments_from_labels
from organdetr.models.maskmed.fsad import FSADTransformer
from organdetr.models.maskmed.masked_decoder import MaskedQueryLayer
from organdetr.models.maskmed.matcher import MaskMatcher, mask_matching_cost
from organdetr.models.maskmed.network import MaskMedDetector, build_maskmed, semantic_logits
from organdetr.models.segmentation_detector import SegmentationDetector
from organdetr.training.config import load_config
from organdetr.training.optim import build_optimizer

TINY = MaskMedConfig(features=(4, 8, 16), d_model=12, nhead=2, dim_feedforward=16, n_points=2)


def _labels(size: int = 16) -> torch.Tensor:
    seg = torch.zeros((size,) * 3, dtype=torch.int64)
    seg[2:7, 2:7, 2:7] = 1
    seg[9:14, 3:8, 8:14] = 3
    return seg


def test_matcher_gives_every_ground_truth_mask_one_query():
    segments = segments_from_labels(_labels())
    assert segments["labels"].tolist() == [0, 1, 3]
    masks = segments["masks"].float()
    logits = torch.full((1, 6, 5), -4.0)
    # queries 4, 1 and 5 predict segments 0, 1, 2 exactly (right class, confident mask); 0, 2, 3 are noise
    pred_masks = torch.randn(1, 6, 16, 16, 16)
    for query, segment in ((4, 0), (1, 1), (5, 2)):
        pred_masks[0, query] = masks[segment] * 20 - 10
        logits[0, query, segments["labels"][segment]] = 4.0
    outputs = {"pred_logits": logits, "pred_masks": pred_masks}
    ((query_idx, target_idx),) = MaskMatcher()(outputs, [segments])
    assert query_idx.tolist() == [1, 4, 5] and target_idx.tolist() == [1, 0, 2]
    # a different grid (a coarse deep-supervision prediction): targets are resampled, still one each
    coarse = {"pred_logits": torch.randn(2, 6, 5), "pred_masks": torch.randn(2, 6, 8, 8, 8)}
    empty = {
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 16, 16, 16, dtype=torch.bool),
    }
    for (q, t), expected in zip(MaskMatcher()(coarse, [segments, empty]), (3, 0), strict=True):
        assert len(q) == len(set(q.tolist())) == expected and sorted(t.tolist()) == list(range(expected))


def test_mask_cost_prefers_the_right_mask_and_class():
    tgt = torch.zeros(2, 100)
    tgt[0, :50] = 1
    tgt[1, 50:] = 1
    masks = torch.stack([tgt[0] * 20 - 10, tgt[1] * 20 - 10])
    logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]])
    cost = mask_matching_cost(logits, masks, torch.tensor([0, 1]), tgt)
    assert cost[0, 0] < cost[0, 1] and cost[1, 1] < cost[1, 0]
    with pytest.raises(ValueError, match="NaN"):
        mask_matching_cost(logits, masks * float("nan"), torch.tensor([0, 1]), tgt)


def test_attention_mask_follows_the_previous_masks_and_opens_empty_ones():
    logits = torch.full((1, 3, 2, 2, 2), -5.0)
    logits[0, 0, 0, 0, 0] = 5.0  # query 0: one voxel (token 0)
    logits[0, 1, 1] = 5.0  # query 1: the i = 1 half (tokens 4..7)
    allowed = attention_mask_from_logits(logits)  # query 2: empty mask
    assert allowed.shape == (1, 3, 8)
    assert allowed[0, 0].tolist() == [True] + [False] * 7
    assert allowed[0, 1].tolist() == [False] * 4 + [True] * 4
    assert allowed[0, 2].all()


def test_masked_cross_attention_ignores_what_is_masked():
    torch.manual_seed(0)
    layer = MaskedQueryLayer(8, 2, 16).eval()
    queries, query_pos = torch.randn(1, 3, 8), torch.zeros(1, 3, 8)
    tokens, token_pos = torch.randn(1, 8, 8), torch.zeros(1, 8, 8)
    logits = torch.full((1, 3, 2, 2, 2), -5.0)
    logits[0, 0, 0, 0, 0] = 5.0
    logits[0, 1, 1] = 5.0
    mask = attention_mask_from_logits(logits)
    # self-attention mixes the queries, so compare the cross-attention step alone
    cross = layer.cross_attn
    out = cross(queries, tokens, tokens, mask)
    changed = tokens.clone()
    changed[0, 1:4] += 10.0  # tokens that queries 0 and 1 must not see; query 2 (empty mask) sees all
    out_changed = cross(queries, changed, changed, mask)
    assert torch.allclose(out[0, :2], out_changed[0, :2], atol=1e-6)
    assert not torch.allclose(out[0, 2], out_changed[0, 2], atol=1e-3)
    open_all = cross(queries, tokens, tokens, None)
    assert torch.allclose(out[0, 2], open_all[0, 2], atol=1e-6)  # an empty mask = unmasked attention
    assert layer(queries, query_pos, tokens, token_pos, mask).shape == (1, 3, 8)


def test_mask_head_is_a_dot_product_with_the_voxel_features():
    head = MaskHead(6)
    queries, features = torch.randn(2, 4, 6), torch.randn(2, 6, 3, 4, 5)
    masks = head(queries, features)
    assert masks.shape == (2, 4, 3, 4, 5)
    embed = head.mask_embed(queries)
    assert torch.allclose(masks[1, 2, 0, 1, 2], (embed[1, 2] * features[1, :, 0, 1, 2]).sum(), atol=1e-5)
    with pytest.raises(ValueError, match="MaskHead"):
        head(torch.randn(2, 4, 5), features)


def test_fsad_starts_as_identity_and_reads_full_resolution():
    torch.manual_seed(0)
    fsad = FSADTransformer((4, 8, 16), d_model=12, nhead=2, points=2, dim_feedforward=16, layers=1)
    feats = [torch.randn(1, 4, 16, 16, 16), torch.randn(1, 8, 8, 8, 8), torch.randn(1, 16, 4, 4, 4)]
    out = fsad(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert all(torch.equal(o, f) for o, f in zip(out, feats, strict=True))  # zero-initialised output proj
    torch.nn.init.normal_(fsad.output_proj.weight)
    base = fsad(feats)[-1]
    finest = [feats[0] + 1.0, *feats[1:]]  # change only the full-resolution features
    assert not torch.allclose(fsad(finest)[-1], base)  # the bottleneck reads them
    assert torch.equal(fsad(finest)[0], finest[0])


def test_semantic_logits_weight_masks_by_class_probabilities():
    pred_logits = torch.tensor([[[8.0, -8.0, -8.0], [-8.0, 8.0, -8.0]]])  # 2 queries: class 0, class 1
    pred_masks = torch.full((1, 2, 2, 1, 1), -8.0)
    pred_masks[0, 0, 0] = 8.0  # query 0 covers voxel 0, query 1 voxel 1
    pred_masks[0, 1, 1] = 8.0
    probs = semantic_logits(pred_logits, pred_masks).softmax(1)
    assert probs.shape == (1, 2, 2, 1, 1)
    assert probs[0, :, 0, 0, 0].argmax() == 0 and probs[0, :, 1, 0, 0].argmax() == 1
    assert torch.allclose(probs.sum(1), torch.ones(1, 2, 1, 1))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["maskmed.fsad=false"],
        ["maskmed.masked_attention=false", "maskmed.deep_supervision=false"],
        ["maskmed.queries_per_class=3", "maskmed.attention_levels=1"],
        ["maskmed.block=residual", "maskmed.norm=group"],
    ],
)
def test_decoupled_variants_train_and_segment(overrides):
    cfg = load_config("maskmed_tiny", ["maskmed.features=[4, 8, 16]", "maskmed.d_model=12", *overrides])
    detector = detector_from_config(cfg, 4, (16, 16, 16))
    assert isinstance(detector, MaskMedDetector)
    queries = cfg.maskmed.queries_per_class * 5
    out = detector.network(torch.randn(2, 1, 16, 16, 16))
    assert out["pred_logits"].shape == (2, queries, 6) and out["pred_masks"].shape == (2, queries, 16, 16, 16)
    levels = cfg.maskmed.attention_levels or 2
    assert len(out["aux_outputs"]) == levels
    assert out["aux_outputs"][0]["pred_masks"].shape[2:] == (8, 8, 8)  # the first read is the coarse level
    losses = detector.loss(
        torch.randn(2, 1, 16, 16, 16), [{"seg": _labels()}, {"seg": torch.zeros_like(_labels())}]
    )
    aux_terms = [k for k in losses if k.startswith("loss_dice_")]
    assert len(aux_terms) == (levels if cfg.maskmed.deep_supervision else 0)
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in detector.named_parameters() if "transformer.head.layers" in n)
    detector.eval()
    assert detector.segment(torch.randn(1, 1, 16, 16, 16)).shape == (1, 16, 16, 16)
    assert {"labels", "scores", "boxes"} <= set(detector.detect(torch.randn(1, 1, 16, 16, 16))[0])


def test_pointwise_baseline_is_the_same_unet_with_a_conv_head():
    decoupled = build_maskmed(TINY, 4)
    pointwise = build_maskmed(MaskMedConfig(**{**TINY.__dict__, "head": "pointwise", "fsad": False}), 4)
    assert type(pointwise) is SegmentationDetector and len(pointwise.network.transformer) == 0
    unet = sum(p.numel() for p in pointwise.network.backbone.parameters())
    assert unet == sum(p.numel() for p in decoupled.network.backbone.parameters())
    pointwise.train()
    out = pointwise.network(torch.randn(1, 1, 16, 16, 16))
    assert [o.shape[2:] for o in out] == [(16, 16, 16), (8, 8, 8)]  # deep supervision, finest first
    loss = pointwise.loss(torch.randn(1, 1, 16, 16, 16), [{"seg": _labels()}])["loss"]
    assert torch.isfinite(loss)


def test_build_refuses_input_sizes_the_unet_cannot_halve():
    cfg = load_config("maskmed_tiny")
    with pytest.raises(ValueError, match="divisible by 4"):
        build_detector("maskmed", cfg.model, cfg.matcher, cfg.loss, 3, (32, 30, 32), arch_cfg=cfg.maskmed)
    with pytest.raises(Exception, match="attention_levels"):
        load_config("maskmed_tiny", ["maskmed.attention_levels=5"])


def test_optimizer_gives_cnn_and_transformer_their_own_rates():
    cfg = load_config("maskmed_tiny", ["optim.lr=1e-3", "optim.transformer_lr_scale=0.1"])
    detector = detector_from_config(cfg, 3, (32, 32, 32))
    groups = {g["name"]: g for g in build_optimizer(detector, cfg.optim).param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-3)
    assert groups["transformer"]["lr"] == pytest.approx(1e-4)
    assert groups["transformer_no_decay"]["weight_decay"] == 0.0
    named = dict(detector.named_parameters())
    assert any(
        p is named["network.transformer.fsad.output_proj.weight"] for p in groups["transformer"]["params"]
    )
    assert sum(len(g["params"]) for g in groups.values()) == len(named)


def test_matched_mask_losses_are_zero_for_perfect_masks_and_keep_the_graph_without_pairs():
    masks = segments_from_labels(_labels())["masks"]
    pred = (masks.float() * 40 - 20)[None].requires_grad_()
    bce, dice = matched_mask_losses(pred, [(torch.arange(3), torch.arange(3))], [masks], 3.0)
    assert bce.item() < 1e-6 and dice.item() < 1e-3
    bce, dice = matched_mask_losses(pred, [(torch.zeros(0, dtype=torch.int64),) * 2], [masks], 1.0)
    assert bce.item() == 0.0 and bce.requires_grad
    criterion = MaskSetCriterion(5, deep_supervision=False)
    outputs = {"pred_logits": torch.randn(1, 3, 6, requires_grad=True), "pred_masks": pred}
    assert set(criterion(outputs, [{"seg": _labels()}])) == {"loss", "loss_class", "loss_mask", "loss_dice"}
