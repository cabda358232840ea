"""3D convolutions on the smallest volumes run in fp32 under CPU autocast (a torch 2.13 bf16 kernel defect).

On the CPU, torch 2.13's bf16 ``Conv3d`` weight gradient is intermittently NaN / inf when the input volume is
1-2 voxels on a side (measured: a 32-channel 3^3 convolution, stride 2 on 1^3 inputs: 25 of 60 trials; stride
1 on 2^3: 1 of 60; never on 3^3 or larger). Those are the deepest levels of a 64^3 input (stride 32 -> 2^3).
A convolution whose input has any spatial side of at most :data:`SMALL_SIDE` voxels therefore runs in fp32
with autocast off: it costs next to nothing (a few voxels) and keeps the bf16 speed-up everywhere else.
Outside CPU autocast nothing changes (same module, same weights, same state dict).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SMALL_SIDE = 4
"""Inputs with a spatial side of at most this many voxels run in fp32 (2 seen failing; margin to 4)."""


class SmallVolumeSafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` that leaves CPU autocast for inputs ``[B, C, I, J, K]`` with ``min(I, J, K) <=
    SMALL_SIDE`` (module docstring); the output is then fp32."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and min(x.shape[2:]) <= SMALL_SIDE:
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_small_volume_convs(module: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Conv3d`` inside ``module`` (ours and MONAI's) into a
    :class:`SmallVolumeSafeConv3d`, in place; returns ``module``."""
    for child in module.modules():
        if type(child) is nn.Conv3d:
            child.__class__ = SmallVolumeSafeConv3d
    return module


__all__ = ["SMALL_SIDE", "SmallVolumeSafeConv3d", "guard_small_volume_convs"]
