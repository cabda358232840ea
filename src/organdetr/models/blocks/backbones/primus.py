"""Primus (Wald et al., arXiv 2503.01835): a pure Transformer on 8x8x8-voxel tokens, from MIC-DKFZ's
``dynamic-network-architectures`` (0.4.4, the ``backbones`` extra; its EVA blocks need ``timm<1.0.23``).

Detectors (:class:`PrimusPyramid`): Primus's patch embedding (``down_projection``) and EVA encoder
(``eva``) give one map at stride 8; ViTDet's simple feature pyramid (:class:`SimpleFeaturePyramid3d`) builds
the detectors' strides from it (stride 4: a 2x2x2 transposed conv; 8: the map itself; 16, 32, ...: 2x2x2
max-pooling), each level then ``1x1x1 conv -> GroupNorm -> 3x3x3 conv -> GroupNorm``. The two Primus
modules keep Primus's names, so a pretrained Primus checkpoint loads by name (``--init-from``).
seg2box (:func:`primus_segmenter`): Primus itself (its patch decoder gives full-resolution logits).

The grid is fixed at build time (absolute and rotary position embeddings of ``input_size / 8`` tokens).
Sizes (:data:`PRIMUS_SIZES`): the package's ``PrimusS`` / ``PrimusB`` (embedding 396 / 792, 12 EVA blocks,
6 / 12 heads); the pyramid widths (``width * 2 ** s`` at stride ``2 ** (s + 2)``) are ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from organdetr.models.blocks.backbone import group_norm

try:  # optional: pip install organdetr[backbones] (imports timm, which needs torchvision)
    from dynamic_network_architectures.architectures.primus import Primus
except ImportError:  # pragma: no cover - exercised where the extra is absent
    Primus = None
AVAILABLE = Primus is not None

PATCH = 8  # Primus's token size (voxels per axis)


@dataclass(frozen=True)
class PrimusSize:
    embed_dim: int
    depth: int
    heads: int
    width: int  # pyramid channels at stride 4 (doubling per level)


PRIMUS_SIZES: dict[str, PrimusSize] = {
    "S": PrimusSize(embed_dim=396, depth=12, heads=6, width=32),
    "B": PrimusSize(embed_dim=792, depth=12, heads=12, width=64),
}


def _primus(in_channels: int, out_channels: int, size: PrimusSize, input_size: Sequence[int] | None):
    if Primus is None:
        raise ValueError(
            "backbone 'primus' needs the optional packages dynamic-network-architectures and timm "
            "(pip install 'organdetr[backbones]'; timm imports torchvision)"
        )
    if input_size is None or any(int(s) % PATCH for s in input_size):
        raise ValueError(f"backbone 'primus' needs an input_size divisible by {PATCH}, got {input_size}")
    return Primus(
        in_channels,
        size.embed_dim,
        (PATCH, PATCH, PATCH),
        out_channels,
        eva_depth=size.depth,
        eva_numheads=size.heads,
        input_shape=tuple(int(s) for s in input_size),
    )


def _resample(in_dim: int, stride: int) -> tuple[nn.Module, int]:
    """From the stride-``PATCH`` token map to ``stride``: 2x2x2 transposed convs up, each halving the
    channels (as ViTDet), max-pooling down. Returns the module and its output channels."""
    steps = int(round(math.log2(stride / PATCH)))
    if steps >= 0:
        return nn.Sequential(*[nn.MaxPool3d(2) for _ in range(steps)]), in_dim
    layers: list[nn.Module] = []
    dim = in_dim
    for i in range(-steps):
        layers.append(nn.ConvTranspose3d(dim, dim // 2, 2, stride=2))
        dim //= 2
        if i < -steps - 1:
            layers += [group_norm(dim, 8), nn.GELU()]
    return nn.Sequential(*layers), dim


class SimpleFeaturePyramid3d(nn.Module):
    """ViTDet's simple feature pyramid in 3D: ``forward(tokens [B, D, I/8, J/8, K/8])`` -> one map per
    ``strides`` entry ``[B, out_channels[l], I/s_l, J/s_l, K/s_l]``, finest first."""

    def __init__(
        self, in_dim: int, strides: Sequence[int], out_channels: Sequence[int], norm_groups: int = 8
    ):
        super().__init__()
        levels = []
        for stride, c in zip(strides, out_channels, strict=True):
            resample, dim = _resample(in_dim, stride)
            levels.append(
                nn.Sequential(
                    resample,
                    nn.Conv3d(dim, c, 1, bias=False),
                    group_norm(c, norm_groups),
                    nn.Conv3d(c, c, 3, padding=1, bias=False),
                    group_norm(c, norm_groups),
                )
            )
        self.levels = nn.ModuleList(levels)

    def forward(self, tokens: Tensor) -> list[Tensor]:
        return [level(tokens) for level in self.levels]


class PrimusPyramid(nn.Module):
    """Primus's embedding + EVA encoder + :class:`SimpleFeaturePyramid3d`: ``forward(images [B, C_in, I, J,
    K])`` -> one map per ``strides`` entry (voxels, powers of 2) with ``out_channels[l]`` channels, finest
    first."""

    def __init__(
        self,
        in_channels: int,
        size: PrimusSize,
        strides: Sequence[int],
        out_channels: Sequence[int],
        input_size: Sequence[int] | None,
    ):
        super().__init__()
        trunk = _primus(in_channels, 1, size, input_size)
        self.down_projection = trunk.down_projection
        self.eva = trunk.eva
        self.strides, self.out_channels = tuple(strides), tuple(out_channels)
        self.pyramid = SimpleFeaturePyramid3d(size.embed_dim, self.strides, self.out_channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.down_projection(images)  # [B, D, I/8, J/8, K/8]
        b, d, i, j, k = x.shape
        tokens, _ = self.eva(x.flatten(2).transpose(1, 2))  # [B, I/8 * J/8 * K/8, D], (i, j, k) order
        return self.pyramid(tokens.transpose(1, 2).reshape(b, d, i, j, k))


def primus_segmenter(
    in_channels: int, out_channels: int, size: PrimusSize, input_size: Sequence[int]
) -> nn.Module:
    """Primus itself: ``[B, C_in, I, J, K] -> logits [B, out_channels, I, J, K]`` on the build-time grid."""
    return _primus(in_channels, out_channels, size, input_size)


__all__ = [
    "AVAILABLE",
    "PATCH",
    "PRIMUS_SIZES",
    "PrimusPyramid",
    "PrimusSize",
    "SimpleFeaturePyramid3d",
    "primus_segmenter",
]
