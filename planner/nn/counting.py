"""MACs and parameters of a configuration, counted the way the reference does.

Convention of github.com/JiahuiYu/slimmable_networks utils/model_profiling.py, at 1 x C x H x W:
Conv2d `Cin * Cout * k * k * Hout * Wout / groups`, Linear `in * out` (no bias; times the positions it is
applied at, for a linear layer over tokens or a channels-last map), AvgPool `C * Hin * Win`
(the input of the last conv; a converted network's pooling modules are counted that way too);
BN, activations, residual adds and MaxPool are not counted. Params are the sliced conv and linear
weights (+ biases); BN is not counted.

One forward pass records each layer's kernel, stride and spatial size; every configuration after that
is counted with integer arithmetic, fast enough for large searches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from planner.models.base import SlimmableNetwork
from planner.models.ops import ChannelGroup, SlimmableConv2d, SlimmableLinear
from planner.widths import WidthConfig


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int


@dataclass(frozen=True)
class _Layer:
    kind: str  # "conv", "linear" or "pool"
    in_side: ChannelGroup | int
    out_side: ChannelGroup | int
    kernel_area: int = 1
    out_area: int = 1
    in_area: int = 1
    depthwise: bool = False
    bias: bool = False
    groups: int = 1  # a grouped conv that keeps its group count


def _side(layer: nn.Module, attribute: str, full: int) -> Any:
    """A fixed count, a ChannelGroup, or (converted networks) a Side of several segments."""
    side = getattr(layer, attribute.replace("group", "side"), None)
    if side is not None:
        return side
    group = getattr(layer, attribute, None)
    return group if isinstance(group, ChannelGroup) and group.slimmable else full


def _full(side: Any) -> int:
    if isinstance(side, ChannelGroup):
        return side.max_channels
    return side if isinstance(side, int) else side.full


def _trace(model: SlimmableNetwork) -> list[_Layer]:
    """Shapes of every counted layer, from one forward pass at the widest configuration."""
    cached = getattr(model, "_counting_trace", None)
    if cached is not None:
        return cached
    records: list[_Layer] = []
    last_out: list[Any] = [model.in_channels]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            depthwise = getattr(module, "depthwise", module.groups == x.shape[1] > 1)
            out_side = _side(module, "out_group", output.shape[1])
            records.append(
                _Layer(
                    "conv",
                    _side(module, "in_group", x.shape[1]),
                    out_side,
                    kernel_area=module.kernel_size[0] * module.kernel_size[1],
                    out_area=output.shape[2] * output.shape[3],
                    depthwise=depthwise,
                    bias=module.bias is not None,
                    groups=1 if depthwise else module.groups,
                )
            )
            last_out[0] = out_side
        elif isinstance(module, nn.Linear):
            records.append(
                _Layer(
                    "linear",
                    _side(module, "in_group", x.shape[-1]),
                    _side(module, "out_group", output.shape[-1]),
                    out_area=x[0].numel() // x.shape[-1],  # positions it is applied at (tokens, pixels)
                    bias=module.bias is not None,
                )
            )
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            side = last_out[0] if _full(last_out[0]) == x.shape[1] else x.shape[1]
            records.append(_Layer("pool", side, side, in_area=x.shape[2] * x.shape[3]))

    counted = (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    forward_at_full_width(model, [m for m in model.modules() if isinstance(m, counted)], hook)
    model._counting_trace = records
    return records


def forward_at_full_width(model: SlimmableNetwork, modules: list[nn.Module], hook: Callable) -> None:
    """One forward pass of a zero input at the widest width, with `hook` as a forward hook on `modules`:
    how the shapes each layer sees are read. The model's configuration and mode are restored."""
    previous, was_training = model.active_config, model.training
    model.set_width(model.widths[-1])
    model.eval()
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(model.input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        if previous is not None:
            model.set_config(previous)


def count(model: SlimmableNetwork, config: WidthConfig) -> Cost:
    """MACs and params of `config` on `model` at its input size (batch 1)."""
    channels = model.validate(config).channels

    def resolve(side: Any) -> int:
        if isinstance(side, ChannelGroup):
            return channels[side.name]
        return side if isinstance(side, int) else side.count(channels)

    macs = params = 0
    for layer in _trace(model):
        cin, cout = resolve(layer.in_side), resolve(layer.out_side)
        if layer.kind == "conv":
            weights = cout * layer.kernel_area * (1 if layer.depthwise else cin // layer.groups)
            macs += weights * layer.out_area
            params += weights + (cout if layer.bias else 0)
        elif layer.kind == "linear":
            macs += cin * cout * layer.out_area
            params += cin * cout + (cout if layer.bias else 0)
        else:
            macs += cin * layer.in_area
    return Cost(macs=macs, params=params)


def layer_channels(model: SlimmableNetwork, config: WidthConfig) -> list[int]:
    """Output channels of every sliced layer in forward order: what `planner info` lists."""
    channels = model.validate(config).channels
    return [
        channels[m.out_group.name] if m.out_group.slimmable else m.out_group.max_channels
        for m in model.modules()
        if isinstance(m, (SlimmableConv2d, SlimmableLinear))
    ]
