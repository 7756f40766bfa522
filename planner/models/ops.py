"""Slimmable layers: ops that slice their weights to the active channel counts.

A layer never reads a global flag. Its channel counts come from `ChannelGroup`s, the sets of layer sides
that must share a count (a conv's output, the depthwise conv and BN that consume it, every output that
meets in a residual add). The model sets the active counts of all layers in one call (`set_config`).

State-dict layout matches github.com/JiahuiYu/slimmable_networks (models/slimmable_ops.py): weights are
stored at their widest shape, switchable BN keeps one `BatchNorm2d` per trained width under `.bn.{i}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int = 1) -> int:
    """Round to a multiple of `divisor`, never more than 10% down (TF-slim's MobileNet rule)."""
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def mobilenet_channels(width: float, base: int, ratio: int = 1, min_value: int = 1) -> int:
    """Channels of a MobileNet layer with `base` channels at 1.0x, times an expansion `ratio`."""
    return make_divisible(base * width, min_value=min_value) * ratio


def truncated_channels(width: float, base: int, expansion: int = 1, divide: int = 1) -> int:
    """Channels of a ResNet layer: `int(base * width * expansion) // divide`, as the reference computes."""
    return int(base * width * expansion) // divide


def fixed_channels(width: float, count: int) -> int:
    """A side that is never slimmed (image channels, the classes, MobileNetV2's 1280-channel tail)."""
    return count


@dataclass(eq=False)
class ChannelGroup:
    """Layer sides that share one channel count. Named after the module path of its first producer.

    `divisor`: every count of the group is a multiple of it (a grouped convolution or GroupNorm over the
    group keeps its group count, so each group of channels keeps the same share).
    """

    rule: Callable[[float], int]
    slimmable: bool = True
    name: str = ""
    divisor: int = 1
    max_channels: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_channels = self.rule(1.0)

    def at(self, width: float) -> int:
        return self.rule(width)


def fixed_group(count: int, name: str = "") -> ChannelGroup:
    return ChannelGroup(partial(fixed_channels, count=count), slimmable=False, name=name)


def dense_conv(
    like: nn.modules.conv._ConvNd, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> nn.modules.conv._ConvNd:
    """A conv of `like`'s kind and geometry with the given (sliced) weight, bias and group count."""
    kind = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(like.kernel_size)]
    conv = kind(
        weight.shape[1] * groups,
        weight.shape[0],
        like.kernel_size,
        like.stride,
        like.padding,
        like.dilation,
        groups=groups,
        bias=bias is not None,
        padding_mode=like.padding_mode,
    )
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight.data.copy_(weight)
    if bias is not None:
        linear.bias.data.copy_(bias)
    return linear


def dense_batch_norm(
    kind: type[nn.modules.batchnorm._BatchNorm],
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> nn.modules.batchnorm._BatchNorm:
    norm = kind(len(mean), eps=eps, affine=weight is not None)
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    if weight is not None:
        norm.weight.data.copy_(weight)
        norm.bias.data.copy_(bias)
    return norm.eval()


class _SlicedChannels:
    """A layer's input and output channel groups, and the prefix of each that is active now."""

    def _slice_groups(self, in_group: ChannelGroup, out_group: ChannelGroup) -> None:
        self.in_group = in_group
        self.out_group = out_group
        self.set_channels(in_group.max_channels, out_group.max_channels)

    def set_channels(self, active_in: int, active_out: int) -> None:
        self.active_in, self.active_out = active_in, active_out


class SlimmableConv2d(_SlicedChannels, nn.Conv2d):
    """Conv2d whose active input/output channels are a prefix of its stored (widest) weight.

    Args:
        in_group: channel group of the input.
        out_group: channel group of the output (the same object as `in_group` for a depthwise conv).
        depthwise: one filter per input channel (`groups` follows the active channel count).
    """

    def __init__(
        self,
        in_group: ChannelGroup,
        out_group: ChannelGroup,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        depthwise: bool = False,
        bias: bool = False,
    ) -> None:
        if depthwise and in_group is not out_group:
            raise ValueError("a depthwise conv keeps its channel count: in_group must be out_group")
        groups = in_group.max_channels if depthwise else 1
        super().__init__(
            in_group.max_channels,
            out_group.max_channels,
            kernel_size,
            stride,
            padding,
            groups=groups,
            bias=bias,
        )
        self.depthwise = depthwise
        self._slice_groups(in_group, out_group)

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """The sliced weight, bias and groups of the current configuration."""
        in_slice = 1 if self.depthwise else self.active_in
        weight = self.weight[: self.active_out, :in_slice]
        bias = None if self.bias is None else self.bias[: self.active_out]
        return weight, bias, (self.active_in if self.depthwise else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, groups = self.active_weight()
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def densify(self) -> nn.Conv2d:
        """A plain Conv2d holding only the active slice (Once-for-All's `get_active_subnet`)."""
        weight, bias, groups = self.active_weight()
        return dense_conv(self, weight, bias, groups)


class SlimmableLinear(_SlicedChannels, nn.Linear):
    """Linear layer sliced to the active input/output features."""

    def __init__(self, in_group: ChannelGroup, out_group: ChannelGroup, bias: bool = True) -> None:
        super().__init__(in_group.max_channels, out_group.max_channels, bias=bias)
        self._slice_groups(in_group, out_group)

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = self.weight[: self.active_out, : self.active_in]
        bias = None if self.bias is None else self.bias[: self.active_out]
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.active_weight()
        return F.linear(x, weight, bias)

    def densify(self) -> nn.Linear:
        weight, bias = self.active_weight()
        return dense_linear(weight, bias)


class USConv2d(SlimmableConv2d):
    """Universally slimmable conv: the same slicing, any channel count in range (US-Nets, ICCV 2019)."""


class USLinear(SlimmableLinear):
    """Universally slimmable linear layer."""


class _CalibratedBatchNorm(nn.Module):
    """Shared behaviour of switchable and US batch norm: active statistics and BN calibration.

    A configuration without trained statistics (a per-layer configuration, or a US width that is not
    tracked) borrows the statistics of the narrowest trained width that covers it until it is calibrated:
    `reset_calibration()`, forward batches in train mode (cumulative average, as US-Nets do), then eval.
    Calibrated statistics are kept apart so the trained ones are never overwritten.
    """

    def __init__(self, group: ChannelGroup, widths: list[float]) -> None:
        super().__init__()
        self.group = group
        self.widths = list(widths)
        self.active_index: int | None = len(widths) - 1
        self.active_channels = group.max_channels
        self.calibrated = False
        self.register_buffer("calibration_mean", torch.zeros(group.max_channels), persistent=False)
        self.register_buffer("calibration_var", torch.ones(group.max_channels), persistent=False)
        self.calibration_batches = 0

    def set_active(self, channels: int, index: int | None) -> None:
        self.active_channels, self.active_index = channels, index
        self.calibrated = False

    def reset_calibration(self) -> None:
        self.calibration_mean.zero_()
        self.calibration_var.fill_(1.0)
        self.calibration_batches = 0
        self.calibrated = True

    @torch.no_grad()
    def adopt_calibration(self, index: int) -> None:
        """Store the calibrated statistics as trained width `index`'s and use them from here on."""
        c = self.active_channels
        self.bn[index].running_mean.copy_(self.calibration_mean[:c])
        self.bn[index].running_var.copy_(self.calibration_var[:c])
        self.set_active(c, index)

    def _donor_index(self) -> int:
        """The narrowest trained width whose statistics cover the active channels."""
        sizes = [bn.num_features for bn in self.bn]
        covering = [i for i, size in enumerate(sizes) if size >= self.active_channels]
        return min(covering, key=lambda i: sizes[i])

    def _affine(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def _trained_statistics(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn[index]
        return bn.running_mean, bn.running_var

    def active_statistics(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(mean, var, weight, bias) used in eval mode for the active configuration."""
        c = self.active_channels
        index = self.active_index if self.active_index is not None else self._donor_index()
        weight, bias = self._affine(index)
        weight = None if weight is None else weight[:c]
        bias = None if bias is None else bias[:c]
        if self.calibrated and self.calibration_batches:
            return self.calibration_mean[:c], self.calibration_var[:c], weight, bias
        mean, var = self._trained_statistics(index)
        return mean[:c], var[:c], weight, bias

    @property
    def eps(self) -> float:
        return self.bn[0].eps

    def densify(self) -> nn.Module:
        """A plain eval-mode BatchNorm of the active channels with the active statistics."""
        mean, var, weight, bias = self.active_statistics()
        return dense_batch_norm(nn.BatchNorm2d, mean, var, weight, bias, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active_channels
        if self.training and self.calibrated:
            with torch.no_grad():
                batch_mean = x.mean(dim=(0, 2, 3))
                batch_var = x.var(dim=(0, 2, 3), unbiased=True)
                n = self.calibration_batches
                self.calibration_mean[:c] = (self.calibration_mean[:c] * n + batch_mean) / (n + 1)
                self.calibration_var[:c] = (self.calibration_var[:c] * n + batch_var) / (n + 1)
                self.calibration_batches = n + 1
        if self.training and self.active_index is not None and not self.calibrated:
            return self._train_trained_width(x)
        if self.training:
            index = self.active_index if self.active_index is not None else self._donor_index()
            weight, bias = self._affine(index)
            weight = None if weight is None else weight[:c]
            bias = None if bias is None else bias[:c]
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        mean, var, weight, bias = self.active_statistics()
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def _train_trained_width(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SwitchableBatchNorm2d(_CalibratedBatchNorm):
    """One BatchNorm2d per trained width (`.bn.{i}`): each width sees different feature statistics."""

    def __init__(self, group: ChannelGroup, widths: list[float]) -> None:
        super().__init__(group, widths)
        self.bn = nn.ModuleList(nn.BatchNorm2d(group.at(w)) for w in widths)

    def _affine(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.bn[index].weight, self.bn[index].bias

    def _train_trained_width(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[self.active_index](x)


class USBatchNorm2d(_CalibratedBatchNorm):
    """Shared affine parameters at the widest size, running statistics per tracked width (`.bn.{i}`)."""

    def __init__(self, group: ChannelGroup, widths: list[float]) -> None:
        super().__init__(group, widths)
        self.weight = nn.Parameter(torch.ones(group.max_channels))
        self.bias = nn.Parameter(torch.zeros(group.max_channels))
        self.bn = nn.ModuleList(nn.BatchNorm2d(group.at(w), affine=False) for w in widths)

    def _affine(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.weight, self.bias

    def _train_trained_width(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn[self.active_index]
        c = self.active_channels
        return F.batch_norm(
            x, bn.running_mean, bn.running_var, self.weight[:c], self.bias[:c], True, bn.momentum, bn.eps
        )
