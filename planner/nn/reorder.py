"""Channel priority for ordinary (non-slimmable) pretrained networks: sort each layer's channels by score.

A slimmable network's channel order is its trained priority order; an ordinary network's is arbitrary. To
slice it by prefix (keep the first N channels) the most important channels must come first, so each
layer's output channels are permuted by descending score (squared L2 norm of the filter, LeGR's
`l2_weight`, optionally under a learned affine transform), and everything that reads those channels is
permuted alike: the BatchNorm after it, a depthwise conv in between (whose filters join the score, as one
group), and the next conv's or linear layer's input. The network computes exactly the same function.

The graph is read with torch.fx. A layer whose output meets another branch (a residual add, a concat) or
reaches an op this module does not know is left in its order and reported: permuting it would need every
layer of the coupled group at once. `reorder_groups` does exactly that for a network converted by
`planner.slimmable`, whose analysis found every coupled group (planner.models.convert).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from planner.errors import PlannerError

# Modules and functions that keep channel i in channel i.
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_ELEMENTWISE_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.hardswish,
    torch.nn.functional.silu,
    torch.nn.functional.gelu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.dropout,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.max_pool2d,
}
# `x.view(x.size(0), -1)` and friends: channel c spans a block of H*W features after them.
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


@dataclass
class ReorderReport:
    """Which layers were sorted by priority and which were left alone (with the reason)."""

    reordered: dict[str, list[int]] = field(default_factory=dict)  # layer -> new order (old indices)
    skipped: dict[str, str] = field(default_factory=dict)


def filter_priority(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """Squared L2 norm of each output filter."""
    weight = layer.weight.detach()
    return (weight.reshape(weight.shape[0], -1).double() ** 2).sum(dim=1)


@dataclass
class _Readers:
    """Everything that reads one producer's output channels."""

    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, spatial positions per channel)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _readers(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> _Readers | str:
    """Follow a producer's output to the layers that read its channels, or say why it cannot be permuted."""
    channels = modules[node.target].weight.shape[0]
    found = _Readers()
    frontier = [(user, False) for user in node.users]  # (node, reads a flattened map)
    seen = set()
    while frontier:
        user, flat = frontier.pop()
        if user in seen:
            continue
        seen.add(user)
        passes = [(following, flat) for following in user.users]
        if user.op == "call_module":
            module = modules[user.target]
            if isinstance(module, nn.Linear):
                if module.in_features % channels:
                    return f"{user.target} reads {module.in_features} features, not a multiple of {channels}"
                found.consumers.append((user.target, module.in_features // channels))
            elif flat:
                return f"a flattened map reaches {type(module).__name__} {user.target}"
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                found.norms.append(user.target)
                frontier += passes
            elif _is_depthwise(module):
                found.depthwise.append(user.target)
                frontier += passes
            elif isinstance(module, _ELEMENTWISE_MODULES):
                frontier += passes
            elif isinstance(module, nn.Flatten):
                frontier += [(following, True) for following in user.users]
            elif isinstance(module, nn.Conv2d) and module.groups == 1:
                found.consumers.append((user.target, 1))
            else:
                return f"its output reaches {type(module).__name__} {user.target}"
        elif user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS:
            frontier += passes
        elif (user.op == "call_function" and user.target is torch.flatten) or (
            user.op == "call_method" and user.target in _FLATTEN_METHODS
        ):
            frontier += [(following, True) for following in user.users]
        elif user.op == "call_method" and user.target == "size":
            continue
        elif user.op == "output":
            return "it is the network's output"
        else:
            what = getattr(user.target, "__name__", str(user.target))
            return f"its output meets {what} (coupled with another branch or an unknown op)"
    return found


@torch.no_grad()
def reorder(
    model: nn.Module,
    coefficients: Mapping[str, tuple[float, float]] | None = None,
) -> ReorderReport:
    """Sort every permutable layer's output channels by descending priority, in place.

    `coefficients` maps a layer path to LeGR's (alpha, kappa); without it the raw scores rank. A linear
    layer reading a flattened (C, H, W) map is permuted in blocks of H*W features.
    """
    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types for control flow it cannot trace
        raise PlannerError(
            f"cannot trace {type(model).__name__} with torch.fx: {str(error).splitlines()[0]}"
        ) from None
    modules = dict(model.named_modules())
    report = ReorderReport()
    for node in graph.graph.nodes:
        if node.op != "call_module":
            continue
        layer = modules[node.target]
        if not isinstance(layer, nn.Conv2d | nn.Linear) or _is_depthwise(layer):
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            report.skipped[node.target] = "grouped convolution"
            continue
        readers = _readers(node, modules)
        if isinstance(readers, str):
            report.skipped[node.target] = readers
            continue
        scores = _transformed(node.target, filter_priority(layer), coefficients)
        for path in readers.depthwise:
            scores = scores + _transformed(path, filter_priority(modules[path]), coefficients)
        order = torch.argsort(-scores, stable=True)
        _permute_outputs(layer, order)
        for path in readers.norms:
            _permute_norm(modules[path], order)
        for path in readers.depthwise:
            _permute_outputs(modules[path], order)
        for path, spatial in readers.consumers:
            _permute_inputs(modules[path], order, spatial)
        report.reordered[node.target] = order.tolist()
    return report


def _transformed(
    path: str, scores: torch.Tensor, coefficients: Mapping[str, tuple[float, float]] | None
) -> torch.Tensor:
    if coefficients is None or path not in coefficients:
        return scores
    alpha, kappa = coefficients[path]
    return alpha * scores + kappa


def _permute_outputs(layer: nn.Conv2d | nn.Linear, order: torch.Tensor) -> None:
    layer.weight.copy_(layer.weight[order])
    if layer.bias is not None:
        layer.bias.copy_(layer.bias[order])


def _permute_norm(norm: nn.BatchNorm2d | nn.BatchNorm1d, order: torch.Tensor) -> None:
    for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
        if tensor is not None:
            tensor.copy_(tensor[order])


def _permute_inputs(layer: nn.Conv2d | nn.Linear, order: torch.Tensor, spatial: int) -> None:
    if spatial > 1:
        order = (order[:, None] * spatial + torch.arange(spatial)).reshape(-1)
    layer.weight.copy_(layer.weight[:, order])


@torch.no_grad()
def reorder_groups(model: nn.Module) -> dict[str, list[int]]:
    """Sort the channels of every slimmable group of a converted network by descending priority, in place.

    A group's priority is LeGR's squared L2 norm of each output filter, summed over every layer that writes
    the group (a residual stage's convs, a depthwise conv). Every op that reads or writes the group is
    permuted alike (each segment of a concatenation, each H*W block of a flattened map), so the network
    computes the same function. A group whose count is a multiple of a grouped conv's group count is sorted
    within each block. Returns the new order (old indices) per group: the permutation to record.
    """
    ops = model.converted_ops()
    writers = [(op.out_side, filter_priority(op)) for op in ops if hasattr(op, "out_side")]
    orders = {}
    for name, group in model.groups.items():
        scores = torch.zeros(group.max_channels, dtype=torch.float64)
        for side, rows in writers:
            for offset in side.offsets(group):
                scores += rows[offset : offset + group.max_channels]
        block = group.max_channels // group.divisor
        order = torch.cat(
            [
                start + torch.argsort(-scores[start : start + block], stable=True)
                for start in range(0, group.max_channels, block)
            ]
        )
        if not torch.equal(order, torch.arange(group.max_channels)):
            orders[name] = order.tolist()
    permute_groups(model, orders)
    return orders


@torch.no_grad()
def permute_groups(model: nn.Module, orders: Mapping[str, list[int]]) -> None:
    """Apply recorded group orders (`reorder_groups`' result, `net.permutation`) to a converted network, e.g.
    after loading the original network's weights into a network converted with `reorder=False`."""
    from planner.errors import PlannerError

    by_group = {}
    for name, order in orders.items():
        group = model.groups.get(name)
        if group is None or sorted(order) != list(range(group.max_channels)):
            raise PlannerError(f"recorded channel order of {name!r} does not fit {model.name}")
        by_group[group] = torch.tensor(order)
    if by_group:
        for op in model.converted_ops():
            op.permute(by_group)
