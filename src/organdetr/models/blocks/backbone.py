"""3D residual CNN backbone producing a feature pyramid (its sizes are explicit arguments;
:func:`organdetr.models.config.build_backbone` reads them from a ``ModelConfig``)."""

from __future__ import annotations

from torch import Tensor, nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm (3D batches are tiny), ``groups`` lowered until it divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class ResidualBlock3d(nn.Module):
    """Basic residual block: two 3x3x3 convs, GroupNorm, ReLU; optional stride-2 downsampling."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_groups: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                group_norm(out_channels, norm_groups),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class Backbone3d(nn.Module):
    """Stride-2 stem + residual stages, each halving the grid (stage strides 4, 8, 16, ...).

    ``forward(images [B, C_in, I, J, K]) -> list[Tensor [B, C_l, I/s_l, J/s_l, K/s_l]]`` for the last
    ``num_levels`` stages, finest first.
    """

    def __init__(
        self,
        in_channels: int,
        stem_channels: int,
        stage_channels: tuple[int, ...],
        depth: int,
        num_levels: int,
        norm_groups: int,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, stem_channels, 3, stride=2, padding=1, bias=False),
            group_norm(stem_channels, norm_groups),
            nn.ReLU(inplace=True),
        )
        stages, prev = [], stem_channels
        for channels in stage_channels:
            blocks = [ResidualBlock3d(prev, channels, 2, norm_groups)]
            blocks += [ResidualBlock3d(channels, channels, 1, norm_groups) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = channels
        self.stages = nn.ModuleList(stages)
        self.num_levels = num_levels
        self.out_channels = tuple(stage_channels[-num_levels:])
        self.strides = tuple(2 ** (s + 2) for s in range(len(stage_channels)))[-num_levels:]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[-self.num_levels :]


__all__ = ["Backbone3d", "ResidualBlock3d", "group_norm"]
