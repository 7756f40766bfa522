"""Slimmable ResNet-50.

Papers: He et al., "Deep Residual Learning" (CVPR 2016); Yu et al., "Slimmable Neural Networks" (ICLR 2019).
Layout follows the reference models/s_resnet.py (bottleneck `.body`, `.shortcut` on projection blocks).
Channel counts are truncated with `int()`, not rounded to a multiple of 8.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from planner.models.base import ZooNetwork
from planner.models.ops import (
    ChannelGroup,
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    fixed_group,
    truncated_channels,
)
from planner.models.registry import register_model

STAGE_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
STAGE_FEATURES = [64, 128, 256, 512]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a residual add; a projection shortcut where the shape changes.

    Args:
        inp: channel group of the block input.
        outp: channel group of the block output (shared by every block of the stage: residual adds).
        features: the stage's base width; the bottleneck has `features * width` channels.
    """

    def __init__(
        self, inp: ChannelGroup, outp: ChannelGroup, stride: int, features: int, widths: list[float]
    ) -> None:
        super().__init__()
        reduce = ChannelGroup(partial(truncated_channels, base=features, expansion=4, divide=4))
        spatial = ChannelGroup(partial(truncated_channels, base=features, expansion=4, divide=4))
        self.body = nn.Sequential(
            SlimmableConv2d(inp, reduce, 1),
            SwitchableBatchNorm2d(reduce, widths),
            nn.ReLU(inplace=True),
            SlimmableConv2d(reduce, spatial, 3, stride, 1),
            SwitchableBatchNorm2d(spatial, widths),
            nn.ReLU(inplace=True),
            SlimmableConv2d(spatial, outp, 1),
            SwitchableBatchNorm2d(outp, widths),
        )
        self.residual_connection = stride == 1 and inp is outp
        if not self.residual_connection:
            self.shortcut = nn.Sequential(
                SlimmableConv2d(inp, outp, 1, stride), SwitchableBatchNorm2d(outp, widths)
            )
        self.post_relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.residual_connection else self.shortcut(x)
        return self.post_relu(self.body(x) + identity)


class SlimmableResNet(ZooNetwork):
    """Bottleneck ResNet with switchable BN."""

    def __init__(
        self,
        widths: list[float],
        depth: int = 50,
        num_classes: int = 1000,
        input_size: int = 224,
        in_channels: int = 3,
    ) -> None:
        super().__init__(f"s_resnet{depth}", widths, num_classes, input_size, in_channels)
        widths = self.widths
        channels = ChannelGroup(partial(truncated_channels, base=64))
        features: list[nn.Module] = [
            nn.Sequential(
                SlimmableConv2d(fixed_group(in_channels, "input"), channels, 7, 2, 3),
                SwitchableBatchNorm2d(channels, widths),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        ]
        for stage, blocks in enumerate(STAGE_BLOCKS[depth]):
            base = STAGE_FEATURES[stage]
            outp = ChannelGroup(partial(truncated_channels, base=base, expansion=4))
            for i in range(blocks):
                stride = 2 if i == 0 and stage != 0 else 1
                features.append(Bottleneck(channels, outp, stride, base, widths))
                channels = outp
        features.append(nn.AvgPool2d(input_size // 32))
        self._assemble(features, SlimmableLinear(channels, fixed_group(num_classes, "classes")))


@register_model
def s_resnet50(widths: list[float] | None = None, **kwargs) -> SlimmableResNet:
    """S-ResNet-50, widths [0.25, 0.5, 0.75, 1.0] by default."""
    return SlimmableResNet(widths or [0.25, 0.5, 0.75, 1.0], depth=50, **kwargs)
