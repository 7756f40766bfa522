"""Materialise a configuration: a plain dense network holding only the sliced weights.

Exporting the slimmable model itself would ship every width's weights and slicing ops; mask-based
pruning tools ship zeroed filters at full size and gain no speed. The dense module is what runtimes see.

Each slicing op densifies itself (`densify()`, Once-for-All's `get_active_subnet`): materialising is a
walk over a copy of the network that replaces every such op by its dense form, and the network keeps its
own `forward`. So any graph works (residual adds, concatenations, tuple or dict outputs), and a new
slicing op needs only its own `densify`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from planner.models.base import SlimmableNetwork
from planner.widths import WidthConfig


class DenseNetwork(nn.Module):
    """A densified copy of a slimmable network: the same module paths and the same `forward`.

    The copy's submodules, parameters and buffers are this module's own (paths and state-dict keys as in
    the slimmable model); `forward` is the copy's, so whatever the network returns is returned.
    """

    def __init__(self, network: nn.Module, config: WidthConfig, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self._modules = network._modules
        self._parameters = network._parameters
        self._buffers = network._buffers
        object.__setattr__(self, "_network", network)  # not a submodule: its children are ours
        self.config = config
        self.input_shape = tuple(input_shape)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._network(*args, **kwargs)

    def train(self, mode: bool = True) -> DenseNetwork:
        super().train(mode)
        self._network.training = mode
        return self


def densify(module: nn.Module) -> nn.Module:
    """Replace, in place, every op that has a `densify()` by its dense form; return the module."""
    if hasattr(module, "densify"):
        return module.densify()
    for name, child in module.named_children():
        setattr(module, name, densify(child))
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


def _copy(model: SlimmableNetwork) -> SlimmableNetwork:
    """A deep copy without what a dense network does not need (stored calibrations, counting caches)."""
    calibrations, trace = model.calibrations, model.__dict__.pop("_counting_trace", None)
    model.calibrations = {}
    try:
        return copy.deepcopy(model)
    finally:
        model.calibrations = calibrations
        if trace is not None:
            model._counting_trace = trace


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
        network = densify(_copy(model))
    finally:
        if previous is not None and previous != config:
            model.set_config(previous)
    dense = DenseNetwork(network, config, model.input_shape).eval()
    if fold_bn:
        _fold_batch_norms(dense)
    return dense
