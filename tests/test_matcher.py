"""Tests for organdetr.models.organdetr.matcher: one-to-one Hungarian and Dense Query Matching (DQM)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from organdetr.models.organdetr.matcher import MatcherConfig, build_matcher, dqm_repeats, matching_cost


def _outputs(batch: int, queries: int, classes: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "pred_boxes": torch.rand(batch, queries, 6, generator=g) * 0.5 + 0.25,
    }


def _targets(counts: list[int], classes: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed + 7)
    targets = []
    for m in counts:
        labels = torch.randperm(classes, generator=g)[:m]
        centre = torch.rand(m, 3, generator=g) * 0.5 + 0.25
        size = torch.rand(m, 3, generator=g) * 0.3 + 0.05
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], dim=1)})
    return targets


def test_dqm_repeats_formula():
    assert dqm_repeats(30, 10, 0.3) == 1 + math.ceil(0.3 * 30 / 10) == 2  # eta = ceil(0.9) = 1
    assert dqm_repeats(100, 20, 0.3) == 1 + 2  # eta = ceil(1.5) = 2
    assert dqm_repeats(100, 20, 0.0) == 1
    assert dqm_repeats(10, 8, 0.5) == 1  # capped at N // M
    assert dqm_repeats(10, 0, 0.5) == 0


batch_strategy = st.lists(st.integers(0, 6), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(counts=batch_strategy, queries=st.integers(6, 24), lam=st.floats(0.0, 0.9), seed=st.integers(0, 999))
def test_dqm_properties(counts, queries, lam, seed):
    """Each query matched at most once; each organ gets exactly dqm_repeats queries; batched == unbatched."""
    outputs, targets = _outputs(len(counts), queries, 6, seed), _targets(counts, 6, seed)
    matcher = build_matcher(MatcherConfig(kind="dqm", dqm_lambda=lam))
    indices = matcher(outputs, targets)
    for b, (q, t) in enumerate(indices):
        m = counts[b]
        repeats = dqm_repeats(queries, m, lam)
        assert len(set(q.tolist())) == len(q)  # a query is matched at most once
        assert q.dtype == t.dtype == torch.int64
        assert torch.equal(torch.bincount(t, minlength=m), torch.full((m,), repeats))
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, [targets[b]])[0]
        assert torch.equal(single[0], q) and torch.equal(single[1], t)


@settings(max_examples=30, deadline=None)
@given(counts=batch_strategy, queries=st.integers(6, 20), seed=st.integers(0, 999))
def test_lambda_zero_equals_one_to_one(counts, queries, seed):
    outputs, targets = _outputs(len(counts), queries, 6, seed), _targets(counts, 6, seed)
    dense = build_matcher(MatcherConfig(kind="dqm", dqm_lambda=0.0))(outputs, targets)
    one = build_matcher(MatcherConfig(kind="hungarian"))(outputs, targets)
    for b, ((q1, t1), (q2, t2), m) in enumerate(zip(dense, one, counts, strict=True)):
        assert len(q1) == len(q2) == min(m, queries)
        if m == 0:
            continue
        cost = matching_cost(
            outputs["pred_logits"][b],
            outputs["pred_boxes"][b],
            targets[b]["labels"],
            targets[b]["boxes"],
            MatcherConfig(),
        ).numpy()
        # identical optimum (ties could in principle pick another permutation of equal cost)
        assert cost[q1.numpy(), t1.numpy()].sum() == pytest.approx(
            cost[q2.numpy(), t2.numpy()].sum(), abs=1e-5
        )


def test_hungarian_is_optimal_against_bruteforce_cost():
    outputs, targets = _outputs(1, 8, 4, 3), _targets([3], 4, 3)
    cfg = MatcherConfig(kind="hungarian")
    q, t = build_matcher(cfg)(outputs, targets)[0]
    cost = matching_cost(
        outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]["labels"], targets[0]["boxes"], cfg
    ).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert cost[q.numpy(), t.numpy()].sum() == pytest.approx(cost[rows, cols].sum(), abs=1e-5)


def test_costs_respect_weights():
    """Only the class cost -> the match follows class probability; only L1 -> it follows box distance."""
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 0, 1] = 10.0  # query 0 is confidently class 1 ...
    boxes = torch.tensor(
        [[[0.8, 0.8, 0.8, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.2, 0.2, 0.2]]]
    )  # ... query 1 fits
    target = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.2, 0.2, 0.2]])}]
    outputs = {"pred_logits": logits, "pred_boxes": boxes}
    by_class = build_matcher(MatcherConfig(kind="hungarian", cost_class=1, cost_bbox=0, cost_giou=0))
    by_box = build_matcher(MatcherConfig(kind="hungarian", cost_class=0, cost_bbox=1, cost_giou=0))
    by_giou = build_matcher(MatcherConfig(kind="hungarian", cost_class=0, cost_bbox=0, cost_giou=1))
    assert by_class(outputs, target)[0][0].tolist() == [0]
    assert by_box(outputs, target)[0][0].tolist() == [1]
    assert by_giou(outputs, target)[0][0].tolist() == [1]
    full = matching_cost(logits[0], boxes[0], target[0]["labels"], target[0]["boxes"], MatcherConfig())
    parts = [
        matching_cost(
            logits[0],
            boxes[0],
            target[0]["labels"],
            target[0]["boxes"],
            MatcherConfig(cost_class=c, cost_bbox=b, cost_giou=g),
        )
        for c, b, g in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    ]
    torch.testing.assert_close(full, 2 * parts[0] + 5 * parts[1] + 2 * parts[2])


def test_empty_targets_and_cap_warning(caplog):
    outputs = _outputs(2, 4, 6, 0)
    targets = _targets([0, 3], 6, 0)
    matcher = build_matcher(MatcherConfig(kind="dqm", dqm_lambda=0.5))
    with caplog.at_level(logging.WARNING, logger="organdetr.models.organdetr.matcher"):
        indices = matcher(outputs, targets)
        matcher(outputs, targets)
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert torch.bincount(indices[1][1]).tolist() == [1, 1, 1]  # wanted 1 + ceil(0.5*4/3) = 2, capped at 4//3
    assert sum("capped" in r.message for r in caplog.records) == 1  # warned once


def test_more_organs_than_queries_matches_every_query():
    outputs, targets = _outputs(1, 3, 6, 1), _targets([5], 6, 1)
    q, t = build_matcher(MatcherConfig(kind="dqm"))(outputs, targets)[0]
    assert sorted(q.tolist()) == [0, 1, 2] and len(set(t.tolist())) == 3


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        MatcherConfig(kind="greedy")
    with pytest.raises(ValueError, match="dqm_lambda"):
        MatcherConfig(dqm_lambda=1.5)


def test_nan_cost_raises():
    outputs = _outputs(1, 4, 3, 0)
    outputs["pred_boxes"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_matcher(MatcherConfig())(outputs, _targets([2], 3, 0))
