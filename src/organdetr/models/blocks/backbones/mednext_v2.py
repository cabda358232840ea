"""MedNeXt-v2 (Roy et al., arXiv 2512.17774): 3D ConvNeXt blocks with 3D Global Response Normalisation.

Block (:class:`MedNeXtBlock`): depthwise ``k x k x k`` conv -> GroupNorm (``NORM_GROUPS`` groups:
MedNeXt's one group per channel is undefined on the 1x1x1 map a 32^3 input has at stride 32) -> 1x1x1
expansion to ``ratio * C`` -> GELU -> 3D GRN -> 1x1x1 compression -> + residual. With
``resample="down"`` the depthwise conv has stride 2 and the residual is a stride-2 1x1x1 conv; with
``resample="up"`` the depthwise conv is transposed (stride 2) and so is the residual (2x2x2).

Sizes (:data:`MEDNEXT_SIZES`): compound scaling of width, expansion ratio, depth and kernel as the MedNeXt
papers do it; the S and B ratios / blocks per stage are MedNeXt (v1)'s published S and B encoder values
(S: ratio 2 and 2 blocks everywhere; B: ratios 2, 3, 4, 4, 4), L its large variant with k5; the widths are
ours, scaled for a CPU at 64^3 (the paper's base width is 32 at full resolution on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from organdetr.models.blocks.backbone import group_norm

NORM_GROUPS = 8


@dataclass(frozen=True)
class MedNeXtSize:
    """``width``: channels at stride 4 (doubling per stage; the U-Net starts at ``width // 2`` at full
    resolution); ``ratios`` / ``blocks``: expansion ratio and blocks of stage 0, 1, ... (the last value
    repeats); ``kernel``: depthwise kernel (3 or 5)."""

    width: int
    ratios: tuple[int, ...]
    blocks: tuple[int, ...]
    kernel: int

    def ratio(self, stage: int) -> int:
        return self.ratios[min(stage, len(self.ratios) - 1)]

    def depth(self, stage: int) -> int:
        return self.blocks[min(stage, len(self.blocks) - 1)]


MEDNEXT_SIZES: dict[str, MedNeXtSize] = {
    "S": MedNeXtSize(width=32, ratios=(2,), blocks=(2,), kernel=3),
    "B": MedNeXtSize(width=64, ratios=(2, 3, 4, 4, 4), blocks=(2,), kernel=3),
    "L": MedNeXtSize(width=64, ratios=(3, 4, 8, 8, 8), blocks=(3, 4, 8, 8, 8), kernel=5),
}


class GRN3d(nn.Module):
    """3D Global Response Normalisation (ConvNeXt-V2's GRN over the three spatial axes), channel-first:
    ``g_c = ||x_c||_2`` over (I, J, K); ``n_c = g_c / (mean_c g_c + eps)``; ``y = gamma * x * n + beta + x``.
    ``gamma``, ``beta`` start at 0 (the block starts as the identity on this path)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, I, J, K] -> [B, C, I, J, K]``."""
        g = torch.linalg.vector_norm(x, ord=2, dim=(2, 3, 4), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * n) + self.beta + x


class MedNeXtBlock(nn.Module):
    """One MedNeXt-v2 block ``[B, C_in, I, J, K] -> [B, C_out, I', J', K']`` (``I' = I``, ``I / 2`` for
    ``resample="down"``, ``2 I`` for ``"up"``)."""

    def __init__(self, in_channels: int, out_channels: int, ratio: int, kernel: int, resample: str = ""):
        super().__init__()
        pad = kernel // 2
        if resample == "up":
            self.depthwise: nn.Module = nn.ConvTranspose3d(
                in_channels, in_channels, kernel, stride=2, padding=pad, output_padding=1, groups=in_channels
            )
        else:
            stride = 2 if resample == "down" else 1
            self.depthwise = nn.Conv3d(in_channels, in_channels, kernel, stride, pad, groups=in_channels)
        self.norm = group_norm(in_channels, NORM_GROUPS)
        self.expand = nn.Conv3d(in_channels, ratio * in_channels, 1)
        self.act = nn.GELU()
        self.grn = GRN3d(ratio * in_channels)
        self.compress = nn.Conv3d(ratio * in_channels, out_channels, 1)
        self.shortcut: nn.Module = nn.Identity()
        if resample == "up":
            self.shortcut = nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)
        elif resample == "down" or in_channels != out_channels:
            self.shortcut = nn.Conv3d(in_channels, out_channels, 1, stride=2 if resample == "down" else 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.grn(self.act(self.expand(self.norm(self.depthwise(x)))))
        return self.compress(y) + self.shortcut(x)


def mednext_stage(
    in_channels: int, out_channels: int, size: MedNeXtSize, stage: int, resample: str
) -> nn.Sequential:
    """Stage ``stage``: its blocks, the first resampled ("down", "up" or "") to ``out_channels``."""
    ratio, k = size.ratio(stage), size.kernel
    blocks = [MedNeXtBlock(in_channels, out_channels, ratio, k, resample)]
    blocks += [MedNeXtBlock(out_channels, out_channels, ratio, k) for _ in range(size.depth(stage) - 1)]
    return nn.Sequential(*blocks)


class MedNeXtStages(nn.Module):
    """A stem (``stem_stride``-voxel patchify conv: 1x1x1 at full resolution as MedNeXt's U-Net, 4x4x4 as
    ConvNeXt's stem) then one stage per ``widths`` entry, each after the first opening with a down block.
    ``forward(images [B, C_in, I, J, K])`` -> every stage's map, finest first (stage ``s`` at stride
    ``stem_stride * 2 ** s``, ``widths[s]`` channels)."""

    def __init__(self, in_channels: int, widths: Sequence[int], size: MedNeXtSize, stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Conv3d(in_channels, widths[0], stem_stride, stride=stem_stride)
        self.stages = nn.ModuleList(
            mednext_stage(widths[max(s - 1, 0)], widths[s], size, s, "down" if s else "")
            for s in range(len(widths))
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        x, outputs = self.stem(images), []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class MedNeXtEncoder(MedNeXtStages):
    """Feature pyramid for the detectors: :class:`MedNeXtStages` with the stride-4 stem, ``num_stages``
    stages at strides 4, 8, 16, ..., widths ``size.width * 2 ** s``. ``forward(images [B, C_in, I, J, K])``
    -> the last ``num_outputs`` stage maps, finest first."""

    def __init__(self, in_channels: int, size: MedNeXtSize, num_stages: int, num_outputs: int):
        widths = [size.width * 2**s for s in range(num_stages)]
        super().__init__(in_channels, widths, size, stem_stride=4)
        self.num_outputs = num_outputs
        self.out_channels = tuple(widths[-num_outputs:])
        self.strides = tuple(2 ** (s + 2) for s in range(num_stages))[-num_outputs:]

    def forward(self, images: Tensor) -> list[Tensor]:
        return super().forward(images)[-self.num_outputs :]


class MedNeXtUNet(nn.Module):
    """MedNeXt-v2 segmentation U-Net: :class:`MedNeXtStages` with the 1x1x1 stem (``levels`` stages at
    strides 1, 2, ..., widths ``size.width // 2 * 2 ** s``), decoder stages that open with an up block and
    add the encoder skip (MedNeXt adds, U-Net concatenates), 1x1x1 output conv.
    ``forward(images [B, C_in, I, J, K]) -> logits [B, out_channels, I, J, K]``."""

    def __init__(self, in_channels: int, out_channels: int, size: MedNeXtSize, levels: int = 5):
        super().__init__()
        widths = [max(size.width // 2, 1) * 2**s for s in range(levels)]
        self.encoder = MedNeXtStages(in_channels, widths, size)
        self.up = nn.ModuleList(
            mednext_stage(widths[s + 1], widths[s], size, s, "up") for s in range(levels - 2, -1, -1)
        )
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, images: Tensor) -> Tensor:
        skips = self.encoder(images)
        x = skips[-1]
        for stage, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = stage[1:](stage[0](x) + skip)
        return self.head(x)


__all__ = [
    "MEDNEXT_SIZES",
    "GRN3d",
    "MedNeXtBlock",
    "MedNeXtEncoder",
    "MedNeXtSize",
    "MedNeXtUNet",
    "mednext_stage",
]
