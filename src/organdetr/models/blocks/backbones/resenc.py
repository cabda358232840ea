"""Residual-encoder U-Net (nnU-Net ResEnc, Isensee et al., "nnU-Net Revisited", MICCAI 2024) from MIC-DKFZ's
``dynamic-network-architectures`` (0.4.4, the ``backbones`` extra): its ``ResidualEncoder`` as the detectors'
feature pyramid, its ``ResidualEncoderUNet`` as seg2box's U-Net.

Sizes (:data:`RESENC_SIZES`): widths and residual blocks per resolution stage (stride 1, 2, 4, ...). "B" is
nnU-Net's ResEnc-M preset (widths 32, 64, 128, 256, 320, 320; blocks 1, 3, 4, 6, 6, 6); "S" is ours for a CPU:
the conv "small" widths at strides 4-16 (32, 64, 128), seg2box's BasicUNet widths at strides 1-16, fewer
blocks. Norm, activation and blocks are nnU-Net's: instance norm (affine), LeakyReLU(0.01), ``BasicBlockD``,
strided-conv downsampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

try:  # optional: pip install organdetr[backbones]
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
except ImportError:  # pragma: no cover - exercised where the extra is absent
    ResidualEncoder = ResidualEncoderUNet = None
AVAILABLE = ResidualEncoder is not None

MISSING_EXTRA = (
    "needs the optional package dynamic-network-architectures (pip install 'organdetr[backbones]')"
)


@dataclass(frozen=True)
class ResEncSize:
    """Per resolution stage (stride ``2 ** s``): ``widths[s]`` channels and ``blocks[s]`` residual blocks."""

    widths: tuple[int, ...]
    blocks: tuple[int, ...]


RESENC_SIZES: dict[str, ResEncSize] = {
    "S": ResEncSize(widths=(16, 16, 32, 64, 128, 256), blocks=(1, 1, 2, 2, 2, 2)),
    "B": ResEncSize(widths=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)),
}


def _nnunet_ops() -> dict:
    """nnU-Net's operators for a 3D ResEnc (instance norm with affine, LeakyReLU 0.01)."""
    return dict(
        conv_op=nn.Conv3d,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        conv_bias=True,
    )


def _require_extra(what: str) -> None:
    if ResidualEncoder is None:
        raise ValueError(f"{what} {MISSING_EXTRA}")


def residual_encoder(in_channels: int, widths: Sequence[int], blocks: Sequence[int]) -> nn.Module:
    """nnU-Net's ``ResidualEncoder``: a full-resolution stem, then one stage per ``widths`` entry (stride
    ``2 ** s``, ``blocks[s]`` residual blocks); ``forward(images)`` -> every stage's map, finest first."""
    _require_extra("backbone 'resenc'")
    return ResidualEncoder(
        in_channels,
        len(widths),
        list(widths),
        kernel_sizes=3,
        strides=[1] + [2] * (len(widths) - 1),
        n_blocks_per_stage=list(blocks),
        return_skips=True,
        **_nnunet_ops(),
    )


class ResEncPyramid(nn.Module):
    """:func:`residual_encoder` with stages at strides 1, 2, 4, ..., ``2 ** (num_stages + 1)``; the pyramid
    is its stride-4 and coarser stages: ``forward(images [B, C_in, I, J, K])`` -> the last ``num_outputs``
    maps (strides 4, 8, 16, ... of the detectors' contract), finest first."""

    def __init__(self, in_channels: int, size: ResEncSize, num_stages: int, num_outputs: int):
        super().__init__()
        n = num_stages + 2
        if n > len(size.widths):
            raise ValueError(
                f"backbone 'resenc' has {len(size.widths) - 2} pyramid stages, {num_stages} asked"
            )
        self.encoder = residual_encoder(in_channels, size.widths[:n], size.blocks[:n])
        self.num_outputs = num_outputs
        self.out_channels = tuple(size.widths[2:n])[-num_outputs:]
        self.strides = tuple(2 ** (s + 2) for s in range(num_stages))[-num_outputs:]

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.encoder(images)[2:])[-self.num_outputs :]


def resenc_unet(in_channels: int, out_channels: int, size: ResEncSize, levels: int = 5) -> nn.Module:
    """nnU-Net's ``ResidualEncoderUNet`` with ``levels`` stages (strides 1 .. ``2 ** (levels - 1)``), one
    conv block per decoder stage, no deep supervision: ``[B, C_in, I, J, K] -> [B, C_out, I, J, K]``."""
    _require_extra("seg2box backbone 'resenc'")
    return ResidualEncoderUNet(
        in_channels,
        levels,
        list(size.widths[:levels]),
        kernel_sizes=3,
        strides=[1] + [2] * (levels - 1),
        n_blocks_per_stage=list(size.blocks[:levels]),
        num_classes=out_channels,
        n_conv_per_stage_decoder=[1] * (levels - 1),
        deep_supervision=False,
        **_nnunet_ops(),
    )


__all__ = [
    "AVAILABLE",
    "MISSING_EXTRA",
    "RESENC_SIZES",
    "ResEncPyramid",
    "ResEncSize",
    "resenc_unet",
    "residual_encoder",
]
