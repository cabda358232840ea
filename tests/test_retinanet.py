"""RetinaNet baseline (MONAI RetinaNet behind the Detector protocol) on tiny volumes."""

from __future__ import annotations

import pytest
import torch

from organdetr.models import build_detector, model_preset
from organdetr.models.baselines.retinanet import RetinaNetAdapter, RetinaNetConfig, build_retinanet
from organdetr.models.blocks.retina import rank_within_class
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.matcher import MatcherConfig

SIZE = (32, 32, 32)


def _targets() -> list[dict]:
    return [
        {
            "labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.25, 0.2, 0.3], [0.65, 0.6, 0.5, 0.4, 0.3, 0.35]]),
        },
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 6)},  # no organ at all
    ]


@pytest.fixture(scope="module")
def detector() -> RetinaNetAdapter:
    torch.manual_seed(0)
    return build_detector("retinanet", model_preset("tiny"), MatcherConfig(), LossConfig(), 3, SIZE)


def test_build_detector_dispatches_to_retinanet(detector):
    assert isinstance(detector, RetinaNetAdapter)
    # every weight lives once, under .network (the MONAI detector object is not a submodule)
    assert all(name.startswith("network.") for name in detector.state_dict())
    assert sum(p.numel() for p in detector.parameters()) == sum(
        p.numel() for p in detector.network.parameters()
    )


def test_targets_become_monai_voxel_xyzxyz(detector):
    images = torch.zeros(2, 1, *SIZE)
    converted = detector.monai_targets(images, _targets())
    # centre 0.3, size 0.25 on a 32 grid -> (0.3 - 0.125) * 32 = 5.6 ... (0.3 + 0.125) * 32 = 13.6
    torch.testing.assert_close(converted[0]["boxes"][0, [0, 3]], torch.tensor([5.6, 13.6]))
    assert converted[1]["boxes"].shape == (0, 6) and converted[0]["labels"].tolist() == [0, 2]


def test_loss_is_finite_weighted_and_trains(detector):
    detector.train()
    images = torch.randn(2, 1, *SIZE)
    losses = detector.loss(images, _targets())
    assert set(losses) == {"loss", "loss_class", "loss_bbox"}
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    torch.testing.assert_close(losses["loss"], losses["loss_class"] + losses["loss_bbox"])
    losses["loss"].backward()
    grads = [p.grad for p in detector.network.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    detector.zero_grad(set_to_none=True)


def test_loss_works_even_in_eval_mode(detector):
    detector.eval()  # the engine may compute a validation loss with the detector in eval mode
    losses = detector.loss(torch.randn(2, 1, *SIZE), _targets())
    assert torch.isfinite(losses["loss"])


def test_detect_returns_top1_per_class_sorted_on_input_grid(detector):
    detector.eval()
    results = detector.detect(torch.randn(2, 1, *SIZE))
    assert len(results) == 2
    for res in results:
        labels, scores, boxes = res["labels"], res["scores"], res["boxes"]
        assert labels.dtype == torch.int64 and boxes.shape == (len(labels), 6)
        assert len(set(labels.tolist())) == len(labels)  # at most one per class
        assert set(labels.tolist()) <= {0, 1, 2}
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.all(boxes >= 0) and torch.all(boxes <= 32)
        assert torch.all(boxes[:, 3:] >= boxes[:, :3])
    assert not detector.training


def test_detect_can_keep_all_nms_survivors():
    torch.manual_seed(0)
    det = build_retinanet(model_preset("tiny"), 3, SIZE, RetinaNetConfig(detections_per_class=None))
    det.eval()
    res = det.detect(torch.randn(1, 1, *SIZE))[0]
    assert len(res["labels"]) > 3  # many boxes per class survive NMS on an untrained net


def test_rank_within_class():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    assert rank_within_class(labels).tolist() == [0, 0, 1, 0, 1, 2]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        build_retinanet(model_preset("tiny"), 3, (30, 32, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_retinanet(model_preset("tiny", d_model=36, nhead=2), 3, SIZE)
    with pytest.raises(ValueError):
        RetinaNetConfig(anchor_shapes=((4, 4),))
