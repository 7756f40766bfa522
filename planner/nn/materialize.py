"""Materialise a configuration: a plain dense network holding only the sliced weights.

Exporting the slimmable model itself would ship every width's weights and slicing ops; mask-based
pruning tools ship zeroed filters at full size and gain no speed. The dense module is what runtimes see.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from planner.models.base import SlimmableNetwork
from planner.models.ops import SlimmableConv2d, SlimmableLinear, _CalibratedBatchNorm
from planner.widths import WidthConfig


class DenseNetwork(nn.Module):
    """`classifier(flatten(features(x)))` with ordinary layers; module paths as in the slimmable model."""

    def __init__(
        self, features: nn.Module, classifier: nn.Module, config: WidthConfig, input_shape: tuple
    ) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.config = config
        self.input_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _dense_conv(layer: SlimmableConv2d) -> nn.Conv2d:
    weight, bias, groups = layer.active_weight()
    conv = nn.Conv2d(
        layer.active_in,
        layer.active_out,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        groups=groups,
        bias=bias is not None,
    )
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def _dense_linear(layer: SlimmableLinear) -> nn.Linear:
    weight, bias = layer.active_weight()
    linear = nn.Linear(layer.active_in, layer.active_out, bias=bias is not None)
    linear.weight.data.copy_(weight)
    if bias is not None:
        linear.bias.data.copy_(bias)
    return linear


def _dense_norm(layer: _CalibratedBatchNorm) -> nn.BatchNorm2d:
    mean, var, weight, bias = layer.active_statistics()
    norm = nn.BatchNorm2d(layer.active_channels, eps=layer.eps, affine=weight is not None)
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    if weight is not None:
        norm.weight.data.copy_(weight)
        norm.bias.data.copy_(bias)
    return norm


def _densify(module: nn.Module) -> nn.Module:
    if isinstance(module, SlimmableConv2d):
        return _dense_conv(module)
    if isinstance(module, SlimmableLinear):
        return _dense_linear(module)
    if isinstance(module, _CalibratedBatchNorm):
        return _dense_norm(module)
    for name, child in module.named_children():
        setattr(module, name, _densify(child))
    return module


def _fold_batch_norms(module: nn.Module) -> None:
    """Fold each BatchNorm2d into the conv just before it in the same Sequential."""
    for child in module.children():
        _fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()


@torch.no_grad()
def materialize(model: SlimmableNetwork, config: WidthConfig, fold_bn: bool = False) -> DenseNetwork:
    """A dense eval-mode copy of `model` at `config`; the slimmable model is left as it was.

    BN statistics: the trained ones of a trained width; else the calibration stored for `config` in
    `model.calibrations`, or the active configuration's own calibration.
    """
    from planner.nn.calibrate import apply_calibration

    previous = model.active_config
    if config.id in model.calibrations:
        apply_calibration(model, model.calibrations[config.id])
    model.set_config(config)
    try:
        features = _densify(copy.deepcopy(model.features))
        classifier = _densify(copy.deepcopy(model.classifier))
    finally:
        if previous is not None and previous != config:
            model.set_config(previous)
    dense = DenseNetwork(
        features, classifier, config, (1, model.in_channels, model.input_size, model.input_size)
    ).eval()
    if fold_bn:
        _fold_batch_norms(dense)
    return dense
