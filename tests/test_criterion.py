"""Tests for organdetr.models.organdetr.criterion: class, box, segmentation losses and their normalisation."""

from __future__ import annotations

import pytest
import torch

from organdetr.models.losses import dice_loss, downsample_labels
from organdetr.models.organdetr.criterion import LossConfig, build_criterion
from organdetr.models.organdetr.matcher import MatcherConfig, build_matcher

K = 3  # organ classes


def _criterion(kind: str = "hungarian", lam: float = 0.3, **loss_kwargs):
    return build_criterion(
        K, build_matcher(MatcherConfig(kind=kind, dqm_lambda=lam)), LossConfig(**loss_kwargs)
    )


def _target(labels: list[int], boxes: list[list[float]]) -> dict:
    return {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": torch.tensor(boxes).reshape(-1, 6)}


def _outputs(queries: int, seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(batch, queries, K + 1, generator=g, requires_grad=True),
        "pred_boxes": (torch.rand(batch, queries, 6, generator=g) * 0.4 + 0.3).requires_grad_(),
        "aux_outputs": [],
        "seg_logits": [],
    }


def test_perfect_boxes_give_zero_box_loss():
    box = [0.5, 0.4, 0.3, 0.2, 0.2, 0.1]
    out = _outputs(4)
    with torch.no_grad():
        out["pred_boxes"][0, 2] = torch.tensor(box)
        out["pred_logits"][0, 2] = torch.tensor([-9.0, 9.0, -9.0, -9.0])
    losses = _criterion()(out, [_target([1], [box])])
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)


def test_box_loss_normalised_by_matched_pairs_including_dqm_repeats():
    target = [_target([0, 2], [[0.3, 0.3, 0.3, 0.1, 0.1, 0.1], [0.7, 0.6, 0.5, 0.2, 0.2, 0.2]])]
    out = _outputs(10)
    for kind, lam in [("hungarian", 0.0), ("dqm", 0.3)]:
        criterion = _criterion(kind, lam, weight_bbox=1.0)
        indices = criterion.matcher(out, target)
        q, t = indices[0]
        expected_pairs = 2 * (1 if kind == "hungarian" else 1 + 2)  # eta = ceil(0.3 * 10 / 2) = 2
        assert len(q) == expected_pairs == criterion.num_pairs(10, target)
        l1 = (out["pred_boxes"][0, q] - target[0]["boxes"][t]).abs().sum() / expected_pairs
        assert criterion(out, target)["loss_bbox"].item() == pytest.approx(l1.item(), rel=1e-5)


def test_absent_organs_give_zero_box_loss_but_train_no_object():
    out = _outputs(5)
    losses = _criterion("dqm")(out, [_target([], [])])
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss_class"].item() > 0
    losses["loss"].backward()
    assert out["pred_logits"].grad.abs().sum() > 0
    assert torch.isfinite(losses["loss"])


def test_weights_scale_terms_and_total_is_sum():
    target = [_target([1], [[0.5, 0.5, 0.5, 0.2, 0.2, 0.2]])]
    out = _outputs(6)
    base = _criterion()(out, target)
    doubled = _criterion(weight_class=4.0, weight_bbox=10.0, weight_giou=10.0)(out, target)
    for name in ("loss_class", "loss_bbox", "loss_giou"):
        assert doubled[name].item() == pytest.approx(2 * base[name].item(), rel=1e-5)
    terms = sum(v for k, v in base.items() if k != "loss")
    assert base["loss"].item() == pytest.approx(terms.item(), rel=1e-6)


def test_no_object_weight_is_eos_coef():
    criterion = _criterion(eos_coef=0.25)
    assert criterion.empty_weight.tolist() == [1.0, 1.0, 1.0, 0.25]
    with pytest.raises(ValueError, match="eos_coef"):
        LossConfig(eos_coef=0.0)


def test_aux_losses_per_decoder_layer():
    out = _outputs(6)
    out["aux_outputs"] = [
        {k: out[k].detach().clone() for k in ("pred_logits", "pred_boxes")} for _ in range(2)
    ]
    target = [_target([0], [[0.5, 0.5, 0.5, 0.2, 0.2, 0.2]])]
    losses = _criterion()(out, target)
    assert {"loss_class_0", "loss_bbox_1", "loss_giou_1"} <= set(losses)
    assert losses["loss_class_0"].item() == pytest.approx(losses["loss_class"].item(), rel=1e-6)
    assert "loss_class_0" not in _criterion(aux_loss=False)(out, target)


def test_segmentation_loss_multiscale():
    seg = torch.zeros(8, 8, 8, dtype=torch.int64)
    seg[:4, :4, :4] = 2
    target = _target([1], [[0.25] * 6]) | {"seg": seg}
    out = _outputs(4)
    perfect = [
        torch.nn.functional.one_hot(downsample_labels(seg[None], (s, s, s)), K + 1).movedim(-1, 1) * 50.0
        for s in (8, 4, 2)
    ]
    out["seg_logits"] = [p.float().requires_grad_() for p in perfect]
    assert _criterion()(out, [target])["loss_seg"].item() == pytest.approx(0.0, abs=1e-4)
    out["seg_logits"] = [torch.zeros(1, K + 1, s, s, s, requires_grad=True) for s in (8, 4, 2)]
    losses = _criterion(weight_seg=2.0)(out, [target])
    assert losses["loss_seg"].item() > 1.0
    losses["loss"].backward()
    assert all(s.grad.abs().sum() > 0 for s in out["seg_logits"])
    out["seg_logits"] = [torch.zeros(1, K + 1, 8, 8, 8)]
    assert "loss_seg" not in _criterion()(out, [_target([1], [[0.25] * 6])])  # no "seg" in targets


def test_dice_and_downsampling_helpers():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    labels[0, :2] = 1
    logits = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() * 100
    assert dice_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-5)
    assert dice_loss(-logits, labels).item() == pytest.approx(1.0, abs=1e-3)
    small = downsample_labels(labels, (2, 2, 2))
    assert small.shape == (1, 2, 2, 2) and small.dtype == torch.int64
    assert small[0, 0].eq(1).all() and small[0, 1].eq(0).all()
