"""Tests for organdetr.models.blocks.deformable_attention: the grid_sample kernel against a naive gather."""

from __future__ import annotations

import warnings

import pytest
import torch

from organdetr.models.blocks.deformable_attention import (
    MSDeformAttn3d,
    ms_deform_attn_3d,
    ms_deform_attn_3d_reference,
    token_centres,
)

SHAPES = [(6, 5, 4), (3, 3, 2), (2, 1, 2)]  # anisotropic on purpose: catches any i/j/k mix-up
TOKENS = sum(i * j * k for i, j, k in SHAPES)


def _inputs(seed: int, batch=2, heads=3, head_dim=4, queries=7, points=4, dtype=torch.float64, margin=0.2):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, TOKENS, heads, head_dim, generator=g, dtype=dtype)
    # locations partly outside [0, 1]: zero padding must agree too
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 3, generator=g, dtype=dtype)
    locations = locations * (1 + 2 * margin) - margin
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return value, locations, weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_kernel_equals_naive_gather(seed):
    value, locations, weights = _inputs(seed)
    fast = ms_deform_attn_3d(value, SHAPES, locations, weights)
    naive = ms_deform_attn_3d_reference(value, SHAPES, locations, weights)
    assert fast.shape == (2, 7, 3 * 4)
    torch.testing.assert_close(fast, naive, atol=1e-12, rtol=1e-10)


def test_gradients_equal_naive_gather():
    value, locations, weights = _inputs(3, margin=0.0)
    grads = []
    for fn in (ms_deform_attn_3d, ms_deform_attn_3d_reference):
        v, loc, w = (t.clone().requires_grad_() for t in (value, locations, weights))
        (fn(v, SHAPES, loc, w) ** 2).sum().backward()
        grads.append((v.grad, loc.grad, w.grad))
    for fast, naive in zip(*grads, strict=True):
        torch.testing.assert_close(fast, naive, atol=1e-9, rtol=1e-7)


def test_voxel_centre_reads_that_voxel_and_axes_are_i_j_k():
    """A location at voxel (i, j, k)'s centre, ``((i + .5) / I, (j + .5) / J, (k + .5) / K)``, returns that
    voxel's value exactly (grid_sample's (x, y, z) is (k, j, i); align_corners=False)."""
    value = torch.randn(1, TOKENS, 1, 1, dtype=torch.float64)
    (I, J, K), offset = SHAPES[0], 0
    for i, j, k in [(4, 2, 1), (0, 0, 0), (5, 4, 3), (1, 3, 2)]:
        loc = torch.zeros(1, 1, 1, len(SHAPES), 1, 3, dtype=torch.float64)
        loc[..., 0, 0, :] = torch.tensor([(i + 0.5) / I, (j + 0.5) / J, (k + 0.5) / K], dtype=torch.float64)
        weights = torch.zeros(1, 1, 1, len(SHAPES), 1, dtype=torch.float64)
        weights[..., 0, 0] = 1.0
        out = ms_deform_attn_3d(value, SHAPES, loc, weights)
        assert out.item() == pytest.approx(value[0, offset + (i * J + j) * K + k, 0, 0].item(), abs=1e-12)


def test_outside_the_volume_reads_zero():
    value = torch.ones(1, TOKENS, 1, 1)
    loc = torch.full((1, 1, 1, len(SHAPES), 1, 3), 1.7)
    weights = torch.ones(1, 1, 1, len(SHAPES), 1)
    assert ms_deform_attn_3d(value, SHAPES, loc, weights).abs().max().item() == 0.0


def test_token_centres_layout():
    centres = token_centres(SHAPES)
    assert centres.shape == (TOKENS, 3)
    I, J, K = SHAPES[0]
    i, j, k = 4, 2, 1
    torch.testing.assert_close(
        centres[(i * J + j) * K + k], torch.tensor([(i + 0.5) / I, (j + 0.5) / J, (k + 0.5) / K])
    )
    assert ((centres > 0) & (centres < 1)).all()


def test_module_points_and_boxes_references():
    torch.manual_seed(0)
    module = MSDeformAttn3d(d_model=24, n_levels=len(SHAPES), n_heads=4, n_points=2)
    query, memory = torch.randn(2, 5, 24), torch.randn(2, TOKENS, 24)
    box = torch.cat([torch.rand(2, 5, 3) * 0.6 + 0.2, torch.full((2, 5, 3), 0.2)], dim=-1)
    assert module(query, box, memory, SHAPES).shape == (2, 5, 24)
    assert module(query, box[..., :3], memory, SHAPES).shape == (2, 5, 24)
    locations, weights = module.sampling(query, box, SHAPES)
    assert locations.shape == (2, 5, 4, len(SHAPES), 2, 3)
    torch.testing.assert_close(weights.sum(dim=(-1, -2)), torch.ones(2, 5, 4))  # softmax over levels x points
    # at init (zero offset weights) the box variant spreads points over the box: |loc - centre| <= size / 2
    spread = (locations - box[:, :, None, None, None, :3]).abs()
    assert (spread <= box[:, :, None, None, None, 3:] / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="reference"):
        module(query, box[..., :4], memory, SHAPES)
    with pytest.raises(ValueError, match="levels"):
        module(query, box, memory[:, : 6 * 5 * 4], SHAPES[:1])


def test_module_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    module = MSDeformAttn3d(d_model=16, n_levels=len(SHAPES), n_heads=2, n_points=3).eval()
    with torch.no_grad():  # non-trivial offsets and weights
        module.sampling_offsets.weight.normal_(0, 0.1)
        module.attention_weights.weight.normal_(0, 0.1)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, query, reference, memory):
            return self.module(query, reference, memory, SHAPES)

    inputs = (torch.randn(1, 4, 16), torch.rand(1, 4, 6) * 0.5 + 0.25, torch.randn(1, TOKENS, 16))
    path = tmp_path / "msda.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(), inputs, str(path), dynamo=False, opset_version=20)
    (onnx_out,) = ort.InferenceSession(str(path)).run(
        None,
        {
            i.name: x.numpy()
            for i, x in zip(ort.InferenceSession(str(path)).get_inputs(), inputs, strict=True)
        },
    )
    with torch.no_grad():
        assert abs(onnx_out - Wrapper()(*inputs).numpy()).max() < 1e-5
