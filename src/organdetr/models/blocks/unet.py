"""A 3D U-Net encoder-decoder in the nnU-Net style (the CNN part of MaskMed and of its baseline).

Encoder: ``S = len(features)`` stages; stage ``s`` runs at stride ``2 ** s`` (stage 0 at full
resolution) and holds ``blocks`` conv blocks; a stride-2 3x3x3 conv opens every stage after the first.
Decoder: from the bottleneck up, a stride-2 transposed conv, concatenation with the encoder stage of the
same stride (skip connection), then ``blocks`` conv blocks; its levels run at strides
``2 ** (S - 2), ..., 2, 1``. Blocks are nnU-Net's plain ``conv 3x3x3 -> norm -> LeakyReLU(0.01)`` pairs or
residual blocks; norm is instance norm (nnU-Net) or group norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from organdetr.models.blocks.backbone import group_norm


def make_norm(kind: str, channels: int) -> nn.Module:
    """Instance norm with affine parameters (nnU-Net) or GroupNorm with up to 8 groups."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return group_norm(channels, 8)


class ConvBlock(nn.Module):
    """Two ``conv 3x3x3 -> norm -> LeakyReLU`` (``residual``: the second without activation, added to a
    1x1x1-projected shortcut, then activated). ``[B, C_in, I, J, K] -> [B, C_out, I/s, J/s, K/s]``."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = nn.Identity()
            if stride != 1 or in_channels != out_channels:
                self.shortcut = nn.Sequential(
                    nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                    make_norm(norm, out_channels),
                )

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        if self.shortcut is None:
            return self.act(y)
        return self.act(y + self.shortcut(x))


def _stage(
    in_channels: int, out_channels: int, blocks: int, stride: int, norm: str, residual: bool
) -> nn.Sequential:
    layers = [ConvBlock(in_channels, out_channels, stride=stride, norm=norm, residual=residual)]
    layers += [ConvBlock(out_channels, out_channels, norm=norm, residual=residual) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class UNetEncoder(nn.Module):
    """``forward(images [B, C_in, I, J, K]) -> [f_0, ..., f_{S-1}]``, ``f_s [B, features[s], I/2^s, ...]``."""

    def __init__(self, in_channels: int, features: tuple[int, ...], blocks: int, norm: str, residual: bool):
        super().__init__()
        widths = [in_channels, *features]
        self.stages = nn.ModuleList(
            _stage(widths[s], widths[s + 1], blocks, 1 if s == 0 else 2, norm, residual)
            for s in range(len(features))
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        feats, x = [], images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """``forward([f_0, ..., f_{S-1}]) -> [d_0, ..., d_{S-2}]`` coarse to fine: ``d_l`` at stride
    ``2 ** (S - 2 - l)`` with ``features[S - 2 - l]`` channels (the last one at full resolution)."""

    def __init__(self, features: tuple[int, ...], blocks: int, norm: str, residual: bool):
        super().__init__()
        levels = range(len(features) - 2, -1, -1)  # encoder stage each decoder level joins
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(features[s + 1], features[s], 2, stride=2, bias=False) for s in levels
        )
        self.blocks = nn.ModuleList(
            _stage(2 * features[s], features[s], blocks, 1, norm, residual) for s in levels
        )

    @property
    def channels(self) -> list[int]:
        """Channels of the decoder levels, coarse to fine."""
        return [up.out_channels for up in self.ups]

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        x, out = feats[-1], []
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
            out.append(x)
        return out


class UNet(nn.Module):
    """The encoder and the decoder, kept apart so that a module can sit between them (MaskMed's FSAD works
    on the encoder features before they are decoded): ``decoder(encoder(images))``."""

    def __init__(self, in_channels: int, features: tuple[int, ...], blocks: int, norm: str, residual: bool):
        super().__init__()
        self.encoder = UNetEncoder(in_channels, features, blocks, norm, residual)
        self.decoder = UNetDecoder(features, blocks, norm, residual)


__all__ = ["ConvBlock", "UNet", "UNetDecoder", "UNetEncoder", "make_norm"]
