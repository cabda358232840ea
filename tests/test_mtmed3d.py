"""MTMed3D: the MONAI blocks wired as Swin-UNETR, task subsets, task balancing, and an overfit run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _brain_factory import brain_cache
from organdetr.core.boxes.iou import paired_iou_3d
from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz
from organdetr.data.cache_dataset import CacheDataset, collate
from organdetr.data.properties import DataProperties
from organdetr.experiments.profiling import count_parameters
from organdetr.models import detector_from_config
from organdetr.models.config import ModelConfig
from organdetr.models.mtmed3d.balancing import TaskBalancer
from organdetr.models.mtmed3d.config import MTMed3DConfig
from organdetr.models.mtmed3d.heads import PANetBottomUp
from organdetr.models.mtmed3d.network import build_mtmed3d
from organdetr.training.config import load_config

GRID = (32, 32, 32)
DATA = DataProperties(4, {"WT": (0, 1, 2), "TC": (0, 2), "ET": (2,)}, ("LGG", "HGG"))


def tiny(**changes) -> MTMed3DConfig:
    base = load_config("mtmed3d_tiny").mtmed3d
    return MTMed3DConfig(**{**base.__dict__, **changes})


def build(data=DATA, **changes):
    torch.manual_seed(0)
    return build_mtmed3d(ModelConfig(in_channels=data.in_channels), tiny(**changes), 3, GRID, data)


def batch(n: int = 2):
    """Images ``[n, 4, 32^3]`` and targets with one nested tumour (dense classes 0, 1, 2)."""
    torch.manual_seed(1)
    images = torch.randn(n, 4, *GRID)
    seg = torch.zeros(GRID, dtype=torch.long)
    seg[6:22, 6:22, 6:22] = 2  # oedema (class 1)
    seg[9:19, 9:19, 9:19] = 3  # enhancing (class 2)
    seg[12:16, 12:16, 12:16] = 1  # necrosis (class 0)
    lo = torch.tensor([[12, 12, 12], [6, 6, 6], [9, 9, 9]], dtype=torch.float32)
    hi = torch.tensor([[16, 16, 16], [22, 22, 22], [19, 19, 19]], dtype=torch.float32)
    boxes = torch.cat([(lo + hi) / 2, hi - lo], 1) / 32
    targets = [
        {"labels": torch.arange(3), "boxes": boxes, "seg": seg, "case_label": torch.tensor(i % 2)}
        for i in range(n)
    ]
    return images, targets


def test_decoder_is_monai_swinunetr_wired_as_monai_does():
    from monai.networks.nets import SwinUNETR

    model = build(DataProperties(1, {}, ()), tasks=("seg",), norm="group")
    reference = SwinUNETR(
        in_channels=1, out_channels=4, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4,
        feature_size=12, norm_name=("group", {"num_groups": 4}),
    )  # fmt: skip
    reference.swinViT.load_state_dict(model.encoder.state_dict())
    missing, unexpected = reference.load_state_dict(
        {
            **{f"swinViT.{k}": v for k, v in model.encoder.state_dict().items()},
            **model.seg_decoder.state_dict(),
        }
    )
    assert not missing and not unexpected
    model.eval(), reference.eval()
    x = torch.randn(1, 1, *GRID)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["seg_logits"], reference(x))


def test_panet_adds_the_bottom_up_path():
    pan = PANetBottomUp(8, 3)
    pyramid = [torch.randn(1, 8, s, s, s) for s in (8, 4, 2)]
    out = pan(pyramid)
    assert [tuple(o.shape) for o in out] == [tuple(p.shape) for p in pyramid]
    assert torch.equal(out[0], pyramid[0]) and not torch.equal(out[2], pyramid[2])


@pytest.mark.parametrize("tasks", [("det",), ("seg",), ("cls",), ("det", "seg", "cls")])
def test_task_subsets_train_and_infer_what_they_have(tasks):
    model = build(tasks=tasks)
    images, targets = batch(1)
    losses = model.loss(images, targets)
    expected = {"det": {"loss_class", "loss_bbox"}, "seg": {"loss_seg"}, "cls": {"loss_case"}}
    terms = {k for k in losses if k.startswith("loss_") and k != "loss_balance"}
    assert terms == set().union(*(expected[t] for t in tasks))
    assert torch.isclose(losses["loss"], sum(losses[k] for k in [*terms, "loss_balance"]))
    losses["loss"].backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None  # the shared encoder serves every task
    model.eval()
    out = model.infer(images)
    assert ("seg" in out) == ("seg" in tasks) and ("case_probs" in out) == ("cls" in tasks)
    if "cls" in tasks:
        torch.testing.assert_close(out["case_probs"].sum(1), torch.ones(1))
    else:
        with pytest.raises(RuntimeError, match="classify"):
            model.classify(images)
    if "seg" not in tasks:
        with pytest.raises(RuntimeError, match="segment"):
            model.segment(images)
    detections = out["detections"]
    assert len(detections) == 1 and all(d["boxes"].shape[1:] == (6,) for d in detections)
    if tasks == ("cls",):
        assert all(len(d["labels"]) == 0 for d in detections)


def test_one_encoder_costs_less_than_three_single_task_models():
    multi = count_parameters(build(tasks=("det", "seg", "cls")))
    singles = [count_parameters(build(tasks=(t,))) for t in ("det", "seg", "cls")]
    encoder = count_parameters(build(tasks=("det",)).encoder)
    assert multi == sum(singles) - 2 * encoder  # the heads are the same; the encoder is counted once


def test_unlabelled_cases_do_not_count_for_classification():
    model = build(tasks=("cls",))
    images, targets = batch(1)
    for t in targets:
        t["case_label"] = torch.tensor(-1)
    loss = model.loss(images, targets)
    assert float(loss["loss_case"].detach()) == 0.0


def toy_losses(shared: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    """Task losses ``L_t = a_t * ||W||^2``: gradient norms ``2 a_t ||W||`` on the shared ``W``."""
    return {t: a * (shared**2).sum() for t, a in zip(("det", "seg", "cls"), (1.0, 4.0, 0.5), strict=True)}


def test_uncertainty_weighting_is_kendalls_formula():
    balancer = TaskBalancer(("det", "seg", "cls"), "uncertainty", (1.0, 2.0, 0.5), alpha=1.5)
    s = balancer.log_variance
    torch.testing.assert_close(torch.exp(-s.detach()), torch.tensor([1.0, 2.0, 0.5]))
    shared = torch.nn.Parameter(torch.ones(3))
    losses = toy_losses(shared)
    weighted, balance, weights = balancer.combine(losses, [shared])
    for i, task in enumerate(("det", "seg", "cls")):
        torch.testing.assert_close(weighted[task], torch.exp(-s[i]) * losses[task])
    torch.testing.assert_close(balance, s.sum())
    (sum(weighted.values()) + balance).backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    torch.testing.assert_close(s.grad, 1 - weights * torch.stack(list(losses.values())).detach())


def test_gradnorm_trains_the_weights_only_on_the_gradient_norm_loss():
    balancer = TaskBalancer(("det", "seg", "cls"), "gradnorm", (1.0, 1.0, 1.0), alpha=0.0)
    shared = torch.nn.Parameter(torch.ones(3))
    weighted, balance, _ = balancer.combine(toy_losses(shared), [shared])
    # G_t = w_t * 2 a_t ||W|| = 2 sqrt(3) a_t; alpha 0: every target is mean(G)
    grad_norms = 2 * math.sqrt(3) * torch.tensor([1.0, 4.0, 0.5])
    torch.testing.assert_close(balance, (grad_norms - grad_norms.mean()).abs().sum())
    (sum(weighted.values()) + balance).backward()
    torch.testing.assert_close(shared.grad, 2 * (1.0 + 4.0 + 0.5) * torch.ones(3))  # the weighted sum only
    expected = torch.sign(grad_norms - grad_norms.mean()) * grad_norms  # d|w n - target| / dw, w = 1
    torch.testing.assert_close(balancer.task_weight.grad, expected)
    with torch.no_grad():  # a step lowers the weight of the task whose gradients dominate
        balancer.task_weight -= 0.01 * balancer.task_weight.grad
    balancer.combine(toy_losses(shared), [shared])  # renormalised to sum to the number of tasks
    w = balancer.task_weight.detach()
    assert math.isclose(float(w.sum()), 3.0, rel_tol=1e-6) and w[1] < w[0] and w[1] < 1.0


def test_gradnorm_in_the_model_reports_weights():
    model = build(balancing="gradnorm")
    images, targets = batch(1)
    losses = model.loss(images, targets)
    assert {"weight_det", "weight_seg", "weight_cls"} <= set(losses)
    assert float(losses["loss_balance"].detach()) > 0
    losses["loss"].backward()
    assert model.balancer.task_weight.grad is not None


def test_region_outputs_decode_to_the_label_map():
    model = build(tasks=("seg",))
    _, targets = batch(1)
    seg = targets[0]["seg"]
    masks = model.region_table[seg].permute(3, 0, 1, 2)[None]  # [1, R, I, J, K]
    decoded = model._labels_from_logits(masks * 20 - 10)
    assert torch.equal(decoded[0], seg)


def test_bad_configs_and_grids_fail_clearly():
    with pytest.raises(ValueError, match="tasks"):
        MTMed3DConfig(tasks=("det", "boxes"))
    with pytest.raises(ValueError, match="multiple of 12"):
        MTMed3DConfig(feature_size=16)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_mtmed3d(ModelConfig(in_channels=4), tiny(), 3, (48, 48, 48), DATA)
    with pytest.raises(ValueError, match="instance norm"):
        build_mtmed3d(ModelConfig(in_channels=4), tiny(norm="instance"), 3, GRID, DATA)
    with pytest.raises(ValueError, match="DenseNet"):
        build_mtmed3d(ModelConfig(in_channels=4), tiny(cls_head="densenet"), 3, GRID, DATA)
    with pytest.raises(ValueError, match="case-level classes"):
        build_mtmed3d(ModelConfig(in_channels=4), tiny(), 3, GRID, DataProperties(4, {}, ()))


@pytest.mark.slow
def test_tiny_multi_task_model_overfits_two_scans(tmp_path):
    """Two phantom scans (one LGG, one HGG) learnt on all three tasks: every tumour box at IoU > 0.7,
    region Dice > 0.8, the right grade."""
    torch.manual_seed(0)
    cache = brain_cache(tmp_path)
    ds = CacheDataset(cache)
    cfg = load_config("mtmed3d_tiny")
    model = detector_from_config(cfg, ds.num_classes, ds.input_size, DataProperties.from_plans(ds.plans))
    images, targets = collate([ds[0], ds[1]])
    assert sorted(int(t["case_label"]) for t in targets) == [0, 1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(100):
        loss = model.loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    out = model.infer(images)
    size = torch.tensor(images.shape[2:]).repeat(2).float()
    for b, target in enumerate(targets):
        found = out["detections"][b]
        for label, box in zip(
            target["labels"].tolist(), box_cxcyczwhd_to_xyzxyz(target["boxes"]) * size, strict=True
        ):
            mine = found["boxes"][found["labels"] == label][:1].double().numpy()
            assert len(mine), f"case {b}: no box of class {label}"
            assert paired_iou_3d(mine, box[None].double().numpy())[0] > 0.7
        for r in range(len(ds.regions)):
            pred = model.region_table[out["seg"][b], r] > 0
            truth = model.region_table[target["seg"], r] > 0
            if truth.any():
                dice = 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())
                assert dice > 0.8, f"case {b} region {list(ds.regions)[r]}: Dice {dice:.3f}"
            else:
                assert not pred.any()
        assert int(np.argmax(out["case_probs"][b].numpy())) == int(target["case_label"])
