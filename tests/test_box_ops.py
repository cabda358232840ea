"""Tests for organdetr.core.boxes.ops (3D box conversions, IoU, GIoU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from organdetr.core.boxes.ops import (
    box_cxcyczwhd_to_xyzxyz,
    box_iou_3d,
    box_volume,
    box_xyzxyz_to_cxcyczwhd,
    generalized_box_iou_3d,
)


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 3, generator=g, dtype=torch.float64) * 10
    size = torch.rand(n, 3, generator=g, dtype=torch.float64) * 5 + 0.1
    return torch.cat([lo, lo + size], dim=1)


def test_conversion_round_trip_and_values():
    box = torch.tensor([[1.0, 2.0, 3.0, 5.0, 6.0, 9.0]])
    cxcy = box_xyzxyz_to_cxcyczwhd(box)
    assert torch.equal(cxcy, torch.tensor([[3.0, 4.0, 6.0, 4.0, 4.0, 6.0]]))
    assert torch.equal(box_cxcyczwhd_to_xyzxyz(cxcy), box)
    assert box_volume(box).item() == 4 * 4 * 6


def test_iou_known_values():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    b = torch.tensor([[1.0, 0, 0, 3, 2, 2], [5.0, 5, 5, 6, 6, 6], [0.0, 0, 0, 2, 2, 2]])
    iou, union = box_iou_3d(a, b)
    assert iou.shape == (1, 3)
    torch.testing.assert_close(iou, torch.tensor([[4 / 12, 0.0, 1.0]]))
    torch.testing.assert_close(union, torch.tensor([[12.0, 9.0, 8.0]]))


def test_giou_known_values():
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1]])
    b = torch.tensor([[2.0, 0, 0, 3, 1, 1]])  # disjoint, enclosing volume 3, union 2
    torch.testing.assert_close(generalized_box_iou_3d(a, b), torch.tensor([[-1 / 3]]))
    torch.testing.assert_close(generalized_box_iou_3d(a, a), torch.tensor([[1.0]]))


def test_giou_rejects_inverted_boxes():
    with pytest.raises(ValueError, match="max >= min"):
        generalized_box_iou_3d(torch.tensor([[1.0, 0, 0, 0, 1, 1]]), torch.tensor([[0.0, 0, 0, 1, 1, 1]]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_pairwise_properties(n, m, seed):
    a, b = _boxes(n, seed), _boxes(m, seed + 1)
    iou, _ = box_iou_3d(a, b)
    giou = generalized_box_iou_3d(a, b)
    assert iou.shape == giou.shape == (n, m)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert ((giou >= -1 - 1e-12) & (giou <= iou + 1e-12)).all()  # GIoU <= IoU, >= -1
    torch.testing.assert_close(generalized_box_iou_3d(b, a), giou.t())
    torch.testing.assert_close(torch.diag(generalized_box_iou_3d(a, a)), torch.ones(n, dtype=a.dtype))


def test_giou_has_gradient_for_disjoint_boxes():
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1]], requires_grad=True)
    b = torch.tensor([[2.0, 0, 0, 3, 1, 1]])
    generalized_box_iou_3d(a, b).sum().backward()
    assert a.grad.abs().sum() > 0
