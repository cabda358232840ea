"""Backbone registry (issue 25): ``model.backbone`` = ``conv`` | ``mednext_v2`` | ``primus`` | ``resenc``,
``model.backbone_size`` = ``S`` | ``B`` (MedNeXt also ``L``).

One contract for the detectors' feature pyramids (:func:`build_feature_pyramid`): a module whose
``forward(images [B, C_in, I, J, K])`` returns ``num_outputs`` maps finest first, the last of ``num_stages``
stages at strides 4, 8, 16, ... (stage ``s`` at ``2 ** (s + 2)`` voxels, as ``ModelConfig.strides``), with
``out_channels`` and ``strides`` attributes. ``conv`` is :class:`~organdetr.models.blocks.backbone.Backbone3d`
(built by ``models.config.build_backbone`` from the model section's widths, unchanged). The segmentation
baselines' U-Nets come from :func:`build_segmentation_unet`.

* ``mednext_v2`` (:mod:`.mednext_v2`): our MedNeXt-v2 blocks with 3D GRN;
* ``resenc`` (:mod:`.resenc`): nnU-Net's residual encoder (dynamic-network-architectures);
* ``primus`` (:mod:`.primus`): Primus's Transformer + a simple feature pyramid (dyn.-network-architectures).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from organdetr.models.blocks.backbones.mednext_v2 import (
    MEDNEXT_SIZES,
    MedNeXtEncoder,
    MedNeXtStages,
    MedNeXtUNet,
)
from organdetr.models.blocks.backbones.primus import AVAILABLE as PRIMUS_AVAILABLE
from organdetr.models.blocks.backbones.primus import PRIMUS_SIZES, PrimusPyramid, primus_segmenter
from organdetr.models.blocks.backbones.resenc import AVAILABLE as RESENC_AVAILABLE
from organdetr.models.blocks.backbones.resenc import (
    RESENC_SIZES,
    ResEncPyramid,
    resenc_unet,
    residual_encoder,
)

BACKBONE_KINDS: tuple[str, ...] = ("conv", "mednext_v2", "primus", "resenc")
_SIZES: dict[str, dict] = {"mednext_v2": MEDNEXT_SIZES, "primus": PRIMUS_SIZES, "resenc": RESENC_SIZES}
UNET_LEVELS = 5  # segmentation U-Nets: strides 1 .. 16


def check_backbone(kind: str, size: str) -> None:
    """ValueError for an unknown backbone, a size it does not have (``conv`` takes any size: its widths are
    the model section's), or one whose optional package is not installed (checked with the config, before
    anything is built)."""
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"model.backbone must be one of {BACKBONE_KINDS}, got {kind!r}")
    if (kind == "resenc" and not RESENC_AVAILABLE) or (kind == "primus" and not PRIMUS_AVAILABLE):
        raise ValueError(
            f"model.backbone {kind!r} needs the optional package dynamic-network-architectures"
            + (" and timm (which imports torchvision)" if kind == "primus" else "")
            + ": pip install 'organdetr[backbones]'"
        )
    if kind != "conv" and size not in _SIZES[kind]:
        raise ValueError(f"model.backbone_size for {kind} must be one of {tuple(_SIZES[kind])}, got {size!r}")


def build_feature_pyramid(
    kind: str,
    size: str,
    in_channels: int,
    num_stages: int,
    num_outputs: int,
    input_size: Sequence[int] | None = None,
) -> nn.Module:
    """The ``kind`` / ``size`` pyramid (not ``conv``); ``input_size`` (I, J, K) is needed by ``primus``."""
    check_backbone(kind, size)
    if kind == "mednext_v2":
        return MedNeXtEncoder(in_channels, MEDNEXT_SIZES[size], num_stages, num_outputs)
    if kind == "resenc":
        return ResEncPyramid(in_channels, RESENC_SIZES[size], num_stages, num_outputs)
    if kind == "primus":
        primus = PRIMUS_SIZES[size]
        strides = [2 ** (s + 2) for s in range(num_stages)][-num_outputs:]
        widths = [primus.width * 2**s for s in range(num_stages)][-num_outputs:]
        return PrimusPyramid(in_channels, primus, strides, widths, input_size)
    raise ValueError("the conv backbone is built by models.config.build_backbone")


def build_unet_encoder(
    kind: str, size: str, in_channels: int, widths: Sequence[int], input_size: Sequence[int] | None = None
) -> nn.Module:
    """A U-Net encoder for ``kind`` (not ``conv``) with the caller's ``widths``: ``forward(images [B, C_in,
    I, J, K])`` -> ``len(widths)`` maps, map ``s`` at stride ``2 ** s`` with ``widths[s]`` channels (MaskMed's
    encoder contract). ``size`` sets the blocks (MedNeXt: ratios, depth, kernel; ResEnc: blocks per stage;
    Primus: the Transformer, whose stride-8 map the simple feature pyramid resamples to every stride)."""
    check_backbone(kind, size)
    if kind == "mednext_v2":
        return MedNeXtStages(in_channels, widths, MEDNEXT_SIZES[size])
    if kind == "resenc":
        blocks = RESENC_SIZES[size].blocks
        return residual_encoder(
            in_channels, widths, [blocks[min(s, len(blocks) - 1)] for s in range(len(widths))]
        )
    if kind == "primus":
        strides = [2**s for s in range(len(widths))]
        return PrimusPyramid(in_channels, PRIMUS_SIZES[size], strides, widths, input_size)
    raise ValueError("the conv U-Net encoder is the architecture's own")


def build_segmentation_unet(
    kind: str, size: str, in_channels: int, out_channels: int, input_size: Sequence[int]
) -> nn.Module:
    """A segmentation network ``[B, C_in, I, J, K] -> logits [B, out_channels, I, J, K]`` for ``kind`` (not
    ``conv``): MedNeXt-v2 U-Net, nnU-Net's ResidualEncoderUNet (both ``UNET_LEVELS`` stages), or Primus."""
    check_backbone(kind, size)
    if kind == "mednext_v2":
        return MedNeXtUNet(in_channels, out_channels, MEDNEXT_SIZES[size], UNET_LEVELS)
    if kind == "resenc":
        return resenc_unet(in_channels, out_channels, RESENC_SIZES[size], UNET_LEVELS)
    if kind == "primus":
        return primus_segmenter(in_channels, out_channels, PRIMUS_SIZES[size], input_size)
    raise ValueError("the conv U-Net is the architecture's own")


__all__ = [
    "BACKBONE_KINDS",
    "UNET_LEVELS",
    "build_feature_pyramid",
    "build_segmentation_unet",
    "check_backbone",
]
