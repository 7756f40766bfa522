"""Slimmable MobileNetV1.

Papers: Howard et al., "MobileNets" (2017); Yu et al., "Slimmable Neural Networks" (ICLR 2019).
Layout follows the reference models/s_mobilenet_v1.py (depthwise-separable blocks under `.body`,
a slimmable classifier).
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
    mobilenet_channels,
)
from planner.models.registry import register_model
from planner.models.s_mobilenet_v2 import stem

# c (channels at 1.0x), n (blocks), s (stride of the first block)
BLOCK_SETTING = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


def _group(base: int) -> ChannelGroup:
    return ChannelGroup(partial(mobilenet_channels, base=base, min_value=8))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 on the input's channels, then a pointwise conv to `outp`."""

    def __init__(self, inp: ChannelGroup, outp: ChannelGroup, stride: int, widths: list[float]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SlimmableConv2d(inp, inp, 3, stride, 1, depthwise=True),
            SwitchableBatchNorm2d(inp, widths),
            nn.ReLU6(inplace=True),
            SlimmableConv2d(inp, outp, 1),
            SwitchableBatchNorm2d(outp, widths),
            nn.ReLU6(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SlimmableMobileNetV1(ZooNetwork):
    """MobileNetV1 with switchable BN."""

    def __init__(
        self, widths: list[float], num_classes: int = 1000, input_size: int = 224, in_channels: int = 3
    ) -> None:
        super().__init__("s_mobilenet_v1", widths, num_classes, input_size, in_channels)
        widths = self.widths
        channels = _group(32)
        features: list[nn.Module] = [
            stem(SlimmableConv2d, SwitchableBatchNorm2d, in_channels, channels, widths)
        ]
        for c, n, s in BLOCK_SETTING:
            for i in range(n):
                outp = _group(c)
                features.append(DepthwiseSeparableConv(channels, outp, s if i == 0 else 1, widths))
                channels = outp
        features.append(nn.AvgPool2d(input_size // 32))
        self._assemble(features, SlimmableLinear(channels, fixed_group(num_classes, "classes")))


@register_model
def s_mobilenet_v1(widths: list[float] | None = None, **kwargs) -> SlimmableMobileNetV1:
    """S-MobileNetV1, widths [0.25, 0.5, 0.75, 1.0] by default."""
    return SlimmableMobileNetV1(widths or [0.25, 0.5, 0.75, 1.0], **kwargs)
