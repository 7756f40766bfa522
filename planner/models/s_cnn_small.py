"""A small slimmable CNN for tests and the demo (8x8 to 32x32 inputs, e.g. scikit-learn's digits).

Four 3x3 conv layers with switchable BN, global average pooling and a slimmable classifier: small enough
to train on two CPU cores in seconds, wide enough that latency grows with width.

`us_cnn_small` is the same network universally slimmable (US-Nets): any width or per-layer channel count
in range, shared BN affine parameters and running statistics tracked on a 0.025 grid. Trained with
per-layer random widths (`planner train --per-layer`), every per-layer mix LeGR picks is in distribution.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from planner.models.base import ZooNetwork
from planner.models.ops import (
    ChannelGroup,
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    USConv2d,
    USLinear,
    fixed_group,
    mobilenet_channels,
)
from planner.models.registry import register_model

# channels at 1.0x, stride
LAYERS = [(32, 1), (64, 1), (64, 2), (128, 1)]


class SlimmableSmallCNN(ZooNetwork):
    """conv-BN-ReLU x4 -> global average pool -> linear.

    Args:
        widths: trained widths (S) or widths with tracked BN statistics (US).
        universal: US-Net (any width in range, shared affine BN) instead of switchable BN.
    """

    input_stride = 1  # the adaptive pool takes any feature map

    def __init__(
        self,
        widths: list[float],
        num_classes: int = 10,
        input_size: int = 8,
        in_channels: int = 1,
        name: str = "s_cnn_small",
        universal: bool = False,
    ) -> None:
        super().__init__(name, widths, num_classes, input_size, in_channels, universal)
        if not 8 <= input_size <= 32:
            raise ValueError(f"{name} takes 8x8 to 32x32 inputs, got {input_size}")
        conv = USConv2d if universal else SlimmableConv2d
        norm = USBatchNorm2d if universal else SwitchableBatchNorm2d
        linear = USLinear if universal else SlimmableLinear
        channels = fixed_group(in_channels, "input")
        features: list[nn.Module] = []
        for base, stride in LAYERS:
            outp = ChannelGroup(partial(mobilenet_channels, base=base, min_value=8))
            features.append(
                nn.Sequential(
                    conv(channels, outp, 3, stride, 1), norm(outp, self.widths), nn.ReLU(inplace=True)
                )
            )
            channels = outp
        features.append(nn.AdaptiveAvgPool2d(1))
        self._assemble(features, linear(channels, fixed_group(num_classes, "classes")))


@register_model
def s_cnn_small(
    widths: list[float] | None = None, num_classes: int = 10, input_size: int = 8, **kwargs
) -> SlimmableSmallCNN:
    """Small slimmable CNN, widths [0.25, 0.5, 0.75, 1.0] by default."""
    return SlimmableSmallCNN(widths or [0.25, 0.5, 0.75, 1.0], num_classes, input_size, **kwargs)


US_WIDTHS = [round(0.25 + 0.025 * i, 3) for i in range(31)]


@register_model
def us_cnn_small(
    widths: list[float] | None = None, num_classes: int = 10, input_size: int = 8, **kwargs
) -> SlimmableSmallCNN:
    """US small CNN: any width in [0.25, 1.0]; BN statistics tracked at 0.25, 0.275, ..., 1.0."""
    return SlimmableSmallCNN(
        widths or US_WIDTHS, num_classes, input_size, name="us_cnn_small", universal=True, **kwargs
    )
