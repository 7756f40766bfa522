"""Slimmable and universally slimmable MobileNetV2.

Papers: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018);
Yu et al., "Slimmable Neural Networks" (ICLR 2019); Yu & Huang, "Universally Slimmable Networks" (ICCV 2019).
Module paths and stored shapes follow the reference models/s_mobilenet_v2.py and us_mobilenet_v2.py, so
their released checkpoints load.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from planner.models.base import ZooNetwork
from planner.models.ops import (
    ChannelGroup,
    SlimmableConv2d,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    USConv2d,
    fixed_group,
    mobilenet_channels,
)
from planner.models.registry import register_model

# t (expansion), c (channels at 1.0x), n (blocks), s (stride of the first block)
BLOCK_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
TAIL_CHANNELS = 1280


def _group(base: int, ratio: int = 1) -> ChannelGroup:
    return ChannelGroup(partial(mobilenet_channels, base=base, ratio=ratio))


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1); a residual add when shapes allow.

    Args:
        inp: channel group of the block input.
        outp: channel group of the block output (the same group as `inp` for a residual block).
        base: channels of the block input at 1.0x, which the expansion multiplies.
    """

    def __init__(
        self,
        inp: ChannelGroup,
        outp: ChannelGroup,
        stride: int,
        expand_ratio: int,
        base: int,
        widths: list[float],
        universal: bool,
    ) -> None:
        super().__init__()
        conv = USConv2d if universal else SlimmableConv2d
        norm = USBatchNorm2d if universal else SwitchableBatchNorm2d
        self.residual_connection = stride == 1 and inp is outp
        hidden = _group(base, expand_ratio) if expand_ratio != 1 else inp
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [conv(inp, hidden, 1), norm(hidden, widths), nn.ReLU6(inplace=True)]
        layers += [
            conv(hidden, hidden, 3, stride, 1, depthwise=True),
            norm(hidden, widths),
            nn.ReLU6(inplace=True),
            conv(hidden, outp, 1),
            norm(outp, widths),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual_connection else out


def stem(conv: type, norm: type, in_channels: int, channels: ChannelGroup, widths: list[float]) -> nn.Module:
    """The MobileNets' first layer: a stride-2 3x3 conv from the fixed input channels, BN, ReLU6."""
    return nn.Sequential(
        conv(fixed_group(in_channels, "input"), channels, 3, 2, 1),
        norm(channels, widths),
        nn.ReLU6(inplace=True),
    )


class SlimmableMobileNetV2(ZooNetwork):
    """MobileNetV2 whose every layer but the 1280-channel tail is slimmable.

    Args:
        widths: trained widths (S) or widths with tracked BN statistics (US).
        universal: US-Net (any width in range, shared affine BN) instead of switchable BN.
    """

    def __init__(
        self,
        name: str,
        widths: list[float],
        num_classes: int = 1000,
        input_size: int = 224,
        in_channels: int = 3,
        universal: bool = False,
    ) -> None:
        super().__init__(name, widths, num_classes, input_size, in_channels, universal)
        widths = self.widths
        conv = USConv2d if universal else SlimmableConv2d
        norm = USBatchNorm2d if universal else SwitchableBatchNorm2d
        channels = _group(32)
        features: list[nn.Module] = [stem(conv, norm, in_channels, channels, widths)]
        base = 32
        for t, c, n, s in BLOCK_SETTING:
            for i in range(n):
                outp = channels if (i > 0 and c == base) else _group(c)
                features.append(
                    InvertedResidual(channels, outp, s if i == 0 else 1, t, base, widths, universal)
                )
                channels, base = outp, c
        tail = fixed_group(TAIL_CHANNELS)
        features.append(
            nn.Sequential(conv(channels, tail, 1), nn.BatchNorm2d(TAIL_CHANNELS), nn.ReLU6(inplace=True))
        )
        features.append(nn.AvgPool2d(input_size // 32))
        self._assemble(features, nn.Linear(TAIL_CHANNELS, num_classes))


US_WIDTHS = [round(0.35 + 0.025 * i, 3) for i in range(27)]


@register_model
def s_mobilenet_v2(widths: list[float] | None = None, **kwargs) -> SlimmableMobileNetV2:
    """S-MobileNetV2 with switchable BN, widths [0.35, 0.5, 0.75, 1.0] by default."""
    return SlimmableMobileNetV2("s_mobilenet_v2", widths or [0.35, 0.5, 0.75, 1.0], **kwargs)


@register_model
def us_mobilenet_v2(widths: list[float] | None = None, **kwargs) -> SlimmableMobileNetV2:
    """US-MobileNetV2: any width in [0.35, 1.0]; BN statistics tracked at 0.35, 0.375, ..., 1.0."""
    return SlimmableMobileNetV2("us_mobilenet_v2", widths or US_WIDTHS, universal=True, **kwargs)
