"""Bring your own network: turn an ordinary torch CNN into a `SlimmableNetwork`.

    slimmable(model, example_input, widths=(0.25, 0.5, 0.75, 1.0), universal=False, keep=(), reorder=True)
        -> ConvertedNetwork
    analyse(model, example_input, keep=()) -> ConversionReport

The model is traced with torch.fx (in eval and in train mode, so branches taken only in training, such as
auxiliary heads, are seen too) and every tensor's channel axis is followed through the graph as a list of
segments, each belonging to a *channel space*. Ops that tie channels together unite spaces: an elementwise
join (residual add, the multiply of squeeze-and-excitation), a depthwise conv (its output is its input's
space), a norm (it reads its input's spaces). A concatenation along the channels makes a layout of several
segments, so its consumer slices one prefix per segment. Flatten keeps the channel-major segments, a linear
layer after it slices blocks of H*W features. The united spaces are the channel groups.

A group is fixed (never slimmed) when it meets the network input or an output, a module named in `keep`,
or anything the analysis cannot prove safe: an op it does not know, a parameter or constant used directly
in `forward`, a reshape that moves or splits channels (channel shuffle, chunk along the channels), a size
hard-coded in a reshape. The report says why, per group; nothing is guessed.

Rules: a depthwise conv's group count follows its channels; any other grouped conv (and a GroupNorm)
keeps its group count, so every count of its group is a multiple of it (`ChannelGroup.divisor`) and each
group of channels keeps the same share (per-block prefixes, so a narrower width is a sub-network of the
original). A concatenation's consumer takes, per segment, that segment's own prefix.

The converted network runs the model's own `forward` with its convs, linears and norms replaced by
slicing ops (original weights kept; switchable BN with statistics per width, or shared affine parameters
and US-style calibration when `universal`). At full width it computes what the original computes.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from planner.models.ops import (
    ChannelGroup,
    SlimmableConv2d,
    SlimmableLinear,
    _CalibratedBatchNorm,
    dense_batch_norm,
    fixed_group,
)
from planner.widths import WidthConfig

DEFAULT_WIDTHS = (0.25, 0.5, 0.75, 1.0)
CHANNEL_MULTIPLE = 8  # what torchvision, timm and TF-slim round widths to; see `width_channels`

# ---------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------

# Modules and functions that keep channel i in channel i (whatever the channel axis).
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.abs,
    torch.exp,
    torch.neg,
    torch.sqrt,
    torch.clamp,
    torch.clip,
    operator.neg,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
    F.upsample,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "abs",
    "exp",
    "sqrt",
    "neg",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "to",
    "type",
    "type_as",
}
# Library functions that keep channel i in channel i, by (module prefix, name): they are fx-wrapped, so
# the graph holds them as calls (stochastic depth multiplies each sample by 0 or 1/p).
_PASS_LIBRARY_FUNCTIONS = {("torchvision.ops", "stochastic_depth"), ("timm.layers", "drop_path")}
_JOIN_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
}
_JOIN_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "expand_as"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_SHAPE_METHODS = {"size", "dim", "numel"}


@dataclass
class _Space:
    """A set of channels that must be sliced together (union-find element)."""

    size: int
    parent: int
    divisor: int = 1
    fixed: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Layout:
    """Where a tensor's channels are: axis `dim` of `ndim`, as `segments` (space, size) in order; on a
    flattened map each channel spans `spatial` consecutive features."""

    segments: tuple[tuple[int, int], ...]
    dim: int
    ndim: int
    spatial: int = 1

    @property
    def from_right(self) -> int:
        return self.ndim - self.dim

    def at(self, dim: int, ndim: int, spatial: int | None = None) -> _Layout:
        return _Layout(self.segments, dim, ndim, self.spatial if spatial is None else spatial)


@dataclass
class _Use:
    """One converted module: its kind and the layouts it reads and writes."""

    path: str
    kind: str  # conv, depthwise, grouped, linear, batchnorm, layernorm, groupnorm
    inputs: _Layout | None
    output: _Layout | None


class _Analysis:
    def __init__(self, modules: Mapping[str, nn.Module], keep: Sequence[str]) -> None:
        self.modules = modules
        self.keep = tuple(keep)
        self.spaces: list[_Space] = []
        self.uses: dict[str, _Use] = {}
        self.out_space: dict[str, int] = {}  # a module's output space, shared by all its calls

    # ---- union-find --------------------------------------------------------------------------------
    def new(self, size: int, fixed: str | None = None) -> int:
        self.spaces.append(_Space(size, len(self.spaces), fixed=[fixed] if fixed else []))
        return len(self.spaces) - 1

    def find(self, i: int) -> int:
        while self.spaces[i].parent != i:
            self.spaces[i].parent = self.spaces[self.spaces[i].parent].parent
            i = self.spaces[i].parent
        return i

    def space(self, i: int) -> _Space:
        return self.spaces[self.find(i)]

    def union(self, a: int, b: int, why: str) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        sa, sb = self.spaces[a], self.spaces[b]
        if sa.size != sb.size:
            self.fix(a, f"{why} joins {sa.size} and {sb.size} channels")
            self.fix(b, f"{why} joins {sa.size} and {sb.size} channels")
            return
        sb.parent = a
        sa.fixed += sb.fixed
        sa.producers += sb.producers
        sa.members += sb.members
        if sb.divisor != sa.divisor:
            if 1 in (sa.divisor, sb.divisor):
                sa.divisor = max(sa.divisor, sb.divisor)
            else:
                sa.fixed.append(f"{why} joins channels grouped by {sa.divisor} and by {sb.divisor}")

    def fix(self, i: int, reason: str) -> None:
        self.space(i).fixed.append(reason)

    def fix_layout(self, layout: Any, reason: str) -> None:
        for item in _layouts(layout):
            for space, _ in item.segments:
                self.fix(space, reason)

    def set_divisor(self, i: int, divisor: int, why: str) -> None:
        space = self.space(i)
        if space.divisor not in (1, divisor):
            space.fixed.append(f"{why} groups channels by {divisor}, another op by {space.divisor}")
        space.divisor = divisor

    def unify(self, a: _Layout, b: _Layout, why: str) -> bool:
        """Unite two layouts segment by segment; fix both when their segments differ."""
        if a.spatial == b.spatial and [s for _, s in a.segments] == [s for _, s in b.segments]:
            for (x, _), (y, _) in zip(a.segments, b.segments, strict=True):
                self.union(x, y, why)
            return True
        self.fix_layout([a, b], f"{why} joins differently concatenated channels")
        return False

    # ---- graph walk ----------------------------------------------------------------------------------
    def run(self, graph: torch.fx.Graph) -> None:
        env: dict[torch.fx.Node, Any] = {}
        self._current_env = env
        for node in graph.nodes:
            args = torch.fx.node.map_arg(node.args, lambda n: env.get(n))
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env.get(n))
            env[node] = self.visit(node, args, kwargs)

    def visit(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
        shape = _shape(node)
        where = _describe(node)
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                return _Layout(((self.new(shape[1], "network input"), shape[1]),), 1, len(shape))
            return None
        if node.op == "get_attr":
            return None
        if node.op == "output":
            self.fix_layout(args, "network output")
            return None
        if node.op == "call_module":
            return self.visit_module(node, args, kwargs, shape, where)
        target = node.target
        tensor_in = args[0] if args else None
        if node.op == "call_method" and target in _SHAPE_METHODS or target in (getattr, len):
            return None
        if (node.op == "call_function" and (target in _PASS_FUNCTIONS or _library_pass(target))) or (
            node.op == "call_method" and target in _PASS_METHODS
        ):
            return self.passthrough(node, tensor_in, shape, where)
        if (node.op == "call_function" and target in _JOIN_FUNCTIONS) or (
            node.op == "call_method" and target in _JOIN_METHODS
        ):
            return self.join(node, shape, where)
        if target in (torch.cat, torch.concat):
            return self.cat(node, args, kwargs, shape, where)
        if target is torch.flatten or (node.op == "call_method" and target == "flatten"):
            start = _arg(args, kwargs, 1, "start_dim", 0)
            end = _arg(args, kwargs, 2, "end_dim", -1)
            return self.flatten(tensor_in, start, end, node, shape, where)
        if node.op == "call_method" and target in ("view", "reshape") or target is torch.reshape:
            return self.reshape(node, tensor_in, shape, where)
        if node.op == "call_method" and target == "permute" or target is torch.permute:
            return self.permute(node, tensor_in, shape, where)
        if node.op == "call_method" and target == "transpose" or target is torch.transpose:
            return self.transpose(node, tensor_in, args, shape, where)
        if (
            node.op == "call_method"
            and target in ("squeeze", "unsqueeze")
            or target
            in (
                torch.squeeze,
                torch.unsqueeze,
            )
        ):
            return self.squeeze(node, tensor_in, shape, where)
        if (node.op == "call_method" and target in _REDUCE_METHODS) or target in _REDUCE_FUNCTIONS:
            return self.reduce(node, tensor_in, args, kwargs, shape, where)
        if target is operator.getitem:
            return self.getitem(node, tensor_in, shape, where)
        return self.opaque(args, kwargs, f"{where} (not known to preserve channels)")

    def visit_module(self, node, args, kwargs, shape, where) -> Any:
        path = node.target
        module = self.modules[path]
        x = args[0] if args else None
        if any(path == k or path.startswith(k + ".") for k in self.keep):
            return self.opaque(args, kwargs, f"kept module {path}")
        if isinstance(module, nn.Conv2d):
            return self.conv(path, module, x, shape, where)
        if isinstance(module, nn.Linear):
            return self.linear(path, module, x, shape, where)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return self.norm(path, "batchnorm", x, where, need_dim=1)
        if isinstance(module, nn.GroupNorm):
            if isinstance(x, _Layout) and len(x.segments) == 1 and module.affine:
                self.set_divisor(x.segments[0][0], module.num_groups, where)
                return self.norm(path, "groupnorm", x, where, need_dim=1)
            return self.opaque(args, kwargs, f"{where} (GroupNorm over concatenated channels)")
        if isinstance(module, nn.LayerNorm):
            if isinstance(x, _Layout) and len(module.normalized_shape) == 1 and x.from_right == 1:
                if module.elementwise_affine:
                    return self.norm(path, "layernorm", x, where, need_dim=x.ndim - 1)
            return self.opaque(args, kwargs, f"{where} (LayerNorm over more than the channels)")
        if isinstance(module, _PASS_MODULES):
            return self.passthrough(node, x, shape, where)
        if isinstance(module, nn.Flatten):
            return self.flatten(x, module.start_dim, module.end_dim, node, shape, where)
        return self.opaque(args, kwargs, f"{where} (a {type(module).__name__} it does not know)")

    # ---- handlers --------------------------------------------------------------------------------
    def opaque(self, args: Any, kwargs: Any, reason: str) -> None:
        self.fix_layout([args, kwargs], f"reaches {reason}")
        return None

    def passthrough(self, node, x, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout):
            return None
        if shape is None or len(shape) != x.ndim:
            return self.opaque(x, None, where)
        return x

    def out_space_of(self, path: str, size: int) -> int:
        if path not in self.out_space:
            self.out_space[path] = self.new(size)
            self.spaces[self.out_space[path]].producers.append(path)
        return self.out_space[path]

    def record(self, path: str, kind: str, inputs: _Layout | None, output: _Layout | None, where: str):
        previous = self.uses.get(path)
        if previous is None:
            self.uses[path] = _Use(path, kind, inputs, output)
            for item in (inputs, output):
                for space, _ in item.segments if item else ():
                    self.space(space).members.append(path)
            return
        # a module called twice: both calls must see the same channels
        for old, new in ((previous.inputs, inputs), (previous.output, output)):
            if old is None or new is None:
                self.fix_layout([old, new], f"{where} called on untracked channels")
            elif old != new and not self.unify(old, new, where):
                continue
        if inputs is None or previous.inputs is None:
            previous.inputs = None

    def conv(self, path: str, conv: nn.Conv2d, x: Any, shape, where: str) -> _Layout | None:
        if conv.transposed or shape is None:
            return self.opaque(x, None, where)
        if isinstance(x, _Layout) and (x.dim != 1 or x.spatial != 1):
            self.fix_layout(x, f"{where} reads channels from another axis")
            x = None
        groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        if groups == 1:
            out = _Layout(((self.out_space_of(path, cout), cout),), 1, len(shape))
            self.record(path, "conv", x, out, where)
            return out
        if groups == cin == cout:
            out = (
                x
                if isinstance(x, _Layout)
                else _Layout(((self.new(cout, f"{where} input untracked"), cout),), 1, len(shape))
            )
            self.record(path, "depthwise", out, out, where)
            return out
        if groups == cin or not isinstance(x, _Layout) or len(x.segments) > 1:
            self.fix_layout(x, f"{where} (grouped conv over these channels cannot be sliced)")
            out_space = self.out_space_of(path, cout)
            self.fix(out_space, f"{where} (grouped conv with a channel multiplier)")
            out = _Layout(((out_space, cout),), 1, len(shape))
            self.record(path, "grouped", None, out, where)
            return out
        self.set_divisor(x.segments[0][0], groups, where)
        out_space = self.out_space_of(path, cout)
        self.set_divisor(out_space, groups, where)
        out = _Layout(((out_space, cout),), 1, len(shape))
        self.record(path, "grouped", x, out, where)
        return out

    def linear(self, path: str, linear: nn.Linear, x: Any, shape, where: str) -> _Layout | None:
        if shape is None:
            return self.opaque(x, None, where)
        if isinstance(x, _Layout) and x.from_right != 1:
            self.fix_layout(x, f"{where} mixes an axis that is not the channels")
            x = None
        out = _Layout(
            ((self.out_space_of(path, linear.out_features), linear.out_features),), len(shape) - 1, len(shape)
        )
        self.record(path, "linear", x, out, where)
        return out

    def norm(self, path: str, kind: str, x: Any, where: str, need_dim: int) -> _Layout | None:
        if not isinstance(x, _Layout) or x.dim != need_dim or x.spatial != 1:
            self.fix_layout(x, f"{where} normalises another axis")
            self.record(path, kind, None, None, where)
            return None
        self.record(path, kind, x, x, where)
        return x

    def join(self, node: torch.fx.Node, shape, where: str) -> _Layout | None:
        env_args = [a for a in _flat(node.args) if isinstance(a, torch.fx.Node)]
        operands = [(self_env, _shape(a)) for a, self_env in zip(env_args, self._env_of(node), strict=True)]
        layouts = [lay for lay, _ in operands if isinstance(lay, _Layout)]
        if not layouts or shape is None:
            return None
        reference = layouts[0]
        axis = reference.from_right
        for layout, operand_shape in operands:
            if operand_shape is None:
                continue
            position = len(operand_shape) - axis
            size = operand_shape[position] if position >= 0 else 1
            if size == 1 and not (isinstance(layout, _Layout) and layout.from_right == axis):
                continue
            if isinstance(layout, _Layout) and layout.from_right == axis:
                self.unify(reference, layout, where)
            else:
                self.fix_layout(layouts, f"{where} with a tensor it does not track (a parameter or constant)")
        if node.target == "expand_as":
            return self._env_of(node)[1] if isinstance(self._env_of(node)[1], _Layout) else None
        return reference.at(len(shape) - axis, len(shape))

    def cat(self, node, args, kwargs, shape, where) -> _Layout | None:
        tensors = list(args[0]) if args else list(kwargs.get("tensors", []))
        nodes = list(node.args[0]) if node.args else list(node.kwargs.get("tensors", []))
        dim = _arg(args, kwargs, 1, "dim", 0)
        if shape is None or not isinstance(dim, int):
            return self.opaque(args, kwargs, where)
        dim %= len(shape)
        layouts = [t for t in tensors if isinstance(t, _Layout)]
        if layouts and all(lay.dim == dim for lay in layouts) and len({lay.spatial for lay in layouts}) == 1:
            segments: list[tuple[int, int]] = []
            for tensor, source in zip(tensors, nodes, strict=True):
                if isinstance(tensor, _Layout):
                    segments += tensor.segments
                else:
                    size = _shape(source)[dim]
                    segments.append((self.new(size, f"{where} concatenates untracked channels"), size))
            return _Layout(tuple(segments), dim, len(shape), layouts[0].spatial)
        if layouts and all(lay.from_right == layouts[0].from_right for lay in layouts):
            # along another axis: every input's channels meet, as in an elementwise join
            for layout in layouts[1:]:
                self.unify(layouts[0], layout, where)
            if len(layouts) < len(tensors):
                self.fix_layout(layouts, f"{where} with a tensor it does not track (a parameter or constant)")
            return layouts[0].at(layouts[0].dim, len(shape))
        return self.opaque(args, kwargs, where)

    def flatten(self, x, start, end, node, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout) or shape is None:
            return None
        in_shape = _shape(node.args[0])
        start, end = start % x.ndim, end % x.ndim
        if start > x.dim or end < x.dim:
            return x.at(x.dim if start > x.dim else x.dim - (end - start), len(shape))
        if start == x.dim:
            return x.at(x.dim, len(shape), x.spatial * math.prod(in_shape[x.dim + 1 : end + 1]))
        return self.opaque(x, None, f"{where} (flattens the channels into another axis)")

    def reshape(self, node, x, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout) or shape is None:
            return None
        in_shape = _shape(node.args[0])
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], list | tuple):
            sizes = tuple(sizes[0])
        hard_coded = len(sizes) == len(shape) and x.dim < len(sizes) and _literal(sizes[x.dim])
        layout = None
        if list(shape[: x.dim + 1]) == list(in_shape[: x.dim + 1]):
            if math.prod(in_shape[x.dim + 1 :]) == math.prod(shape[x.dim + 1 :]):
                layout = x.at(x.dim, len(shape))
        elif len(shape) == x.dim + 1 and list(shape[: x.dim]) == list(in_shape[: x.dim]):
            layout = x.at(x.dim, len(shape), x.spatial * math.prod(in_shape[x.dim + 1 :]))
        if layout is None:
            return self.opaque(x, None, f"{where} (a reshape that splits or moves the channels)")
        if hard_coded:
            return self.opaque(x, None, f"{where} (a channel count hard-coded in a reshape)")
        return layout

    def permute(self, node, x, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout) or shape is None:
            return None
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], list | tuple):
            dims = tuple(dims[0])
        dims = [d % x.ndim for d in dims if isinstance(d, int)]
        if len(dims) != x.ndim or x.spatial != 1:
            return self.opaque(x, None, where)
        return x.at(dims.index(x.dim), len(shape))

    def transpose(self, node, x, args, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout) or shape is None:
            return None
        a, b = (d % x.ndim for d in args[1:3])
        return x.at({a: b, b: a}.get(x.dim, x.dim), len(shape))

    def squeeze(self, node, x, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout) or shape is None:
            return None
        in_shape = _shape(node.args[0])
        # the channel axis keeps its size; find it by the sizes on its right
        right = list(in_shape[x.dim + 1 :])
        for dim in range(len(shape)):
            if shape[dim] == in_shape[x.dim] and [s for s in shape[dim + 1 :] if s != 1] == [
                s for s in right if s != 1
            ]:
                return x.at(dim, len(shape))
        return self.opaque(x, None, where)

    def reduce(self, node, x, args, kwargs, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout) or shape is None:
            return None
        dims = _arg(args, kwargs, 1, "dim", None)
        keepdim = _arg(args, kwargs, 2, "keepdim", False)
        if dims is None:
            return self.opaque(x, None, f"{where} (reduces over the channels)")
        dims = [d % x.ndim for d in (dims if isinstance(dims, list | tuple) else [dims])]
        if x.dim in dims:
            return self.opaque(x, None, f"{where} (reduces over the channels)")
        return x.at(x.dim if keepdim else x.dim - sum(d < x.dim for d in dims), len(shape))

    def getitem(self, node, x, shape, where) -> _Layout | None:
        if not isinstance(x, _Layout):
            return None
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        full = slice(None, None, None)
        if shape is not None and len(index) > x.dim and all(i == full for i in index[: x.dim + 1]):
            if all(isinstance(i, slice | int) for i in index[x.dim + 1 :]):
                return x.at(x.dim, len(shape))
        if shape is not None and len(index) <= x.dim and all(i == full or isinstance(i, int) for i in index):
            removed = sum(isinstance(i, int) for i in index)
            return x.at(x.dim - removed, len(shape))
        return self.opaque(x, None, f"{where} (indexes the channels)")

    def _env_of(self, node: torch.fx.Node) -> list[Any]:
        return [self._current_env.get(a) for a in _flat(node.args) if isinstance(a, torch.fx.Node)]


def _library_pass(target: Any) -> bool:
    module, name = getattr(target, "__module__", "") or "", getattr(target, "__name__", "")
    return any(module.startswith(prefix) and name == known for prefix, known in _PASS_LIBRARY_FUNCTIONS)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [item for element in value for item in _flat(element)]
    if isinstance(value, dict):
        return [item for element in value.values() for item in _flat(element)]
    return [value]


def _layouts(value: Any) -> list[_Layout]:
    return [item for item in _flat(value) if isinstance(item, _Layout)]


def _literal(size: Any) -> bool:
    return isinstance(size, int) and size != -1


def _arg(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _describe(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name} at node {node.name}"


# ---------------------------------------------------------------------------------------------------
# Slicing ops of converted networks
# ---------------------------------------------------------------------------------------------------


def is_channel_multiple(value: object) -> bool:
    """A valid `channel_multiple`: a positive integer (not a bool); checked where one is given or read."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def width_channels(width: float, full: int, divisor: int = 1, multiple: int = 1) -> int:
    """Channels of a converted group at `width`: the nearest multiple of its divisor and, where the full
    count is two or more of them, of `multiple`; at least one such step. (A group of one step would
    never slim, so a tiny network's 8-channel layer still scales exactly.)

    Counts off a multiple of 8 cost CPU kernels their blocked layouts: onnxruntime ran torchvision's
    MobileNetV3-Small at 0.75x (54, 66, 18 ... channels) as slowly as at 1x, and 30% faster with the counts
    rounded to 8 (results/channel_multiple.md). torchvision, timm and TF-slim round widths to 8 alike.
    """
    step = math.lcm(divisor, multiple)
    if full % step or full < 2 * step:
        step = divisor
    blocks = full // step
    return step * max(1, min(blocks, int(width * blocks + 0.5)))


def _group_index(group: ChannelGroup, count: int) -> torch.Tensor:
    if group.divisor == 1 or not group.slimmable:
        return torch.arange(count)
    block = group.max_channels // group.divisor
    return (torch.arange(group.divisor)[:, None] * block + torch.arange(count // group.divisor)).reshape(-1)


@dataclass(eq=False)
class Side:
    """The channels one side of an op reads or writes: one group per concatenated segment, in order; on a
    flattened map each channel is `spatial` consecutive features."""

    segments: tuple[ChannelGroup, ...]
    spatial: int = 1

    @property
    def full(self) -> int:
        return sum(g.max_channels for g in self.segments) * self.spatial

    @property
    def group(self) -> ChannelGroup:
        """The side as one group, for code that knows single groups (fixed when it is several)."""
        if len(self.segments) == 1 and self.spatial == 1:
            return self.segments[0]
        return fixed_group(self.full)

    def channels(self, counts: Mapping[str, int]) -> list[int]:
        return [counts[g.name] if g.slimmable else g.max_channels for g in self.segments]

    def count(self, counts: Mapping[str, int]) -> int:
        return sum(self.channels(counts)) * self.spatial

    def at(self, width: float) -> int:
        return sum(g.at(width) for g in self.segments) * self.spatial

    def index(self, counts: Mapping[str, int]) -> int | torch.Tensor:
        """The active features: a prefix length, or the indices (per-segment or per-block prefixes)."""
        active = self.channels(counts)
        if len(self.segments) == 1 and (self.segments[0].divisor == 1 or not self.segments[0].slimmable):
            return active[0] * self.spatial
        parts, offset = [], 0
        for group, count in zip(self.segments, active, strict=True):
            parts.append(_group_index(group, count) + offset)
            offset += group.max_channels
        index = torch.cat(parts)
        if self.spatial > 1:
            index = (index[:, None] * self.spatial + torch.arange(self.spatial)).reshape(-1)
        return index

    def offsets(self, group: ChannelGroup) -> list[int]:
        """Channel offsets of the segments that are `group`."""
        found, offset = [], 0
        for segment in self.segments:
            if segment is group:
                found.append(offset)
            offset += segment.max_channels
        return found


def _take(tensor: torch.Tensor, dim: int, index: int | torch.Tensor) -> torch.Tensor:
    if isinstance(index, int):
        return tensor.narrow(dim, 0, index)
    return tensor.index_select(dim, index.to(tensor.device))


def _full_permutation(side: Side, orders: Mapping[ChannelGroup, torch.Tensor]) -> torch.Tensor | None:
    """The permutation of a side's features that applies each group's order to its segments (None: the
    side holds none of the groups)."""
    if not any(segment in orders for segment in side.segments):
        return None
    channels, offset = [], 0
    for segment in side.segments:
        order = orders.get(segment)
        channels.append((order if order is not None else torch.arange(segment.max_channels)) + offset)
        offset += segment.max_channels
    index = torch.cat(channels)
    if side.spatial > 1:
        index = (index[:, None] * side.spatial + torch.arange(side.spatial)).reshape(-1)
    return index


@torch.no_grad()
def _permute_outputs(layer: nn.Module, orders: Mapping[ChannelGroup, torch.Tensor]) -> torch.Tensor | None:
    """Reorder a conv's or linear's output filters (and bias) by its output group's order; return the
    order of its input side (None when that side is not reordered), for the caller to apply."""
    out = _full_permutation(layer.out_side, orders)
    if out is not None:
        layer.weight.copy_(layer.weight[out])
        if layer.bias is not None:
            layer.bias.copy_(layer.bias[out])
    return _full_permutation(layer.in_side, orders)


class ConvertedConv2d(SlimmableConv2d):
    """A converted network's conv: the original weight, sliced by the groups of its input and output.

    `kind`: "conv" (dense), "depthwise" (group count follows the channels, input side = output side) or
    "grouped" (keeps its group count; its groups' counts are multiples of it, sliced per block).
    """

    def __init__(self, conv: nn.Conv2d, kind: str, in_side: Side, out_side: Side) -> None:
        nn.Conv2d.__init__(
            self,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.kind = kind
        self.in_side, self.out_side = in_side, out_side
        self.in_group, self.out_group = in_side.group, out_side.group
        self.depthwise = kind == "depthwise"
        self.active_in, self.active_out = conv.in_channels, conv.out_channels
        self._in_index: int | torch.Tensor = conv.in_channels
        self._out_index: int | torch.Tensor = conv.out_channels

    def activate(self, counts: Mapping[str, int], trained_index: int | None) -> None:
        self.active_in, self.active_out = self.in_side.count(counts), self.out_side.count(counts)
        self._in_index, self._out_index = self.in_side.index(counts), self.out_side.index(counts)

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        weight = _take(self.weight, 0, self._out_index)
        bias = None if self.bias is None else _take(self.bias, 0, self._out_index)
        if self.kind == "depthwise":
            return weight, bias, self.active_out
        if self.kind == "grouped":
            return weight[:, : self.active_in // self.groups], bias, self.groups
        return _take(weight, 1, self._in_index), bias, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, groups = self.active_weight()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def sides(self) -> list[Side]:
        return [self.out_side] if self.kind == "depthwise" else [self.in_side, self.out_side]

    @torch.no_grad()
    def permute(self, orders: Mapping[ChannelGroup, torch.Tensor]) -> None:
        into = _permute_outputs(self, orders)
        if into is None or self.kind == "depthwise":
            return
        if self.kind == "conv":
            self.weight.copy_(self.weight[:, into])
            return
        per_in, per_out = self.in_channels // self.groups, self.out_channels // self.groups
        for block in range(self.groups):
            local = into[block * per_in : (block + 1) * per_in] - block * per_in
            rows = slice(block * per_out, (block + 1) * per_out)
            self.weight[rows] = self.weight[rows][:, local]


class ConvertedLinear(SlimmableLinear):
    """A converted network's linear layer; its input may be several segments or a flattened map."""

    def __init__(self, linear: nn.Linear, in_side: Side, out_side: Side) -> None:
        nn.Linear.__init__(
            self, linear.in_features, linear.out_features, linear.bias is not None, device="meta"
        )
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_side, self.out_side = in_side, out_side
        self.in_group, self.out_group = in_side.group, out_side.group
        self.active_in, self.active_out = linear.in_features, linear.out_features
        self._in_index: int | torch.Tensor = linear.in_features
        self._out_index: int | torch.Tensor = linear.out_features

    def activate(self, counts: Mapping[str, int], trained_index: int | None) -> None:
        self.active_in, self.active_out = self.in_side.count(counts), self.out_side.count(counts)
        self._in_index, self._out_index = self.in_side.index(counts), self.out_side.index(counts)

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = _take(_take(self.weight, 0, self._out_index), 1, self._in_index)
        bias = None if self.bias is None else _take(self.bias, 0, self._out_index)
        return weight, bias

    def sides(self) -> list[Side]:
        return [self.in_side, self.out_side]

    @torch.no_grad()
    def permute(self, orders: Mapping[ChannelGroup, torch.Tensor]) -> None:
        into = _permute_outputs(self, orders)
        if into is not None:
            self.weight.copy_(self.weight[:, into])


class _OneSideNorm:
    """A norm on one channel side: every per-channel tensor (last dimension: channels) follows its order."""

    side: Side

    def channel_tensors(self) -> tuple[torch.Tensor | None, ...]:
        raise NotImplementedError

    def sides(self) -> list[Side]:
        return [self.side]

    @torch.no_grad()
    def permute(self, orders: Mapping[ChannelGroup, torch.Tensor]) -> None:
        perm = _full_permutation(self.side, orders)
        if perm is None:
            return
        for tensor in self.channel_tensors():
            if tensor is not None:
                tensor.copy_(tensor[..., perm])


class ConvertedBatchNorm(_OneSideNorm, _CalibratedBatchNorm):
    """Switchable BN of a converted network: affine parameters and running statistics per width (shared
    affine parameters when universal), all stored at full size and started from the original BN's."""

    def __init__(
        self, norm: nn.modules.batchnorm._BatchNorm, side: Side, widths: Sequence[float], universal: bool
    ) -> None:
        nn.Module.__init__(self)
        n, full = len(widths), side.full
        self.side, self.group = side, side.group
        self.widths = list(widths)
        self.universal = universal
        self.kind = (
            type(norm) if type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) else nn.BatchNorm2d
        )
        self._eps = norm.eps
        self.momentum = norm.momentum if norm.momentum is not None else 0.1
        if norm.affine:
            weight, bias = norm.weight.detach().clone(), norm.bias.detach().clone()
            if not universal:
                weight, bias = weight.repeat(n, 1), bias.repeat(n, 1)
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        mean = norm.running_mean if norm.running_mean is not None else torch.zeros(full)
        var = norm.running_var if norm.running_var is not None else torch.ones(full)
        self.register_buffer("running_mean", mean.detach().clone().repeat(n, 1))
        self.register_buffer("running_var", var.detach().clone().repeat(n, 1))
        self.register_buffer("calibration_mean", torch.zeros(full), persistent=False)
        self.register_buffer("calibration_var", torch.ones(full), persistent=False)
        self.calibration_batches = 0
        self.calibrated = False
        self.width_counts = [side.at(w) for w in self.widths]
        self.active_index: int | None = n - 1
        self.active_channels = full
        self._index: int | torch.Tensor = full

    @property
    def eps(self) -> float:
        return self._eps

    def activate(self, counts: Mapping[str, int], trained_index: int | None) -> None:
        self.active_channels, self._index = self.side.count(counts), self.side.index(counts)
        self.active_index = trained_index
        self.calibrated = False

    @torch.no_grad()
    def adopt_calibration(self, index: int) -> None:
        c = self.active_channels
        at = self._index if isinstance(self._index, int) else self._index.to(self.running_mean.device)
        if isinstance(at, int):
            self.running_mean[index, :at] = self.calibration_mean[:c]
            self.running_var[index, :at] = self.calibration_var[:c]
        else:
            self.running_mean[index, at] = self.calibration_mean[:c]
            self.running_var[index, at] = self.calibration_var[:c]
        self.active_index, self.calibrated = index, False

    def _donor_index(self) -> int:
        covering = [i for i, count in enumerate(self.width_counts) if count >= self.active_channels]
        return covering[0] if covering else len(self.widths) - 1

    def _affine(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.weight is None:
            return None, None
        weight, bias = (self.weight, self.bias) if self.universal else (self.weight[index], self.bias[index])
        return _take(weight, 0, self._index), _take(bias, 0, self._index)

    def _trained_statistics(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _take(self.running_mean[index], 0, self._index), _take(self.running_var[index], 0, self._index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active_channels
        if self.training and self.calibrated:
            with torch.no_grad():
                dims = [0, *range(2, x.dim())]
                n = self.calibration_batches
                self.calibration_mean[:c] = (self.calibration_mean[:c] * n + x.mean(dim=dims)) / (n + 1)
                self.calibration_var[:c] = (self.calibration_var[:c] * n + x.var(dim=dims)) / (n + 1)
                self.calibration_batches = n + 1
        if self.training and self.active_index is not None and not self.calibrated:
            index = self.active_index
            weight, bias = self._affine(index)
            mean, var = self._trained_statistics(index)
            if not isinstance(self._index, int):
                mean, var = mean.clone(), var.clone()
            out = F.batch_norm(x, mean, var, weight, bias, True, self.momentum, self.eps)
            if not isinstance(self._index, int):
                with torch.no_grad():
                    at = self._index.to(x.device)
                    self.running_mean[index, at] = mean
                    self.running_var[index, at] = var
            return out
        if self.training:
            weight, bias = self._affine(self._donor_index())
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        mean, var, weight, bias = self.active_statistics()
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def densify(self) -> nn.Module:
        mean, var, weight, bias = self.active_statistics()
        return dense_batch_norm(self.kind, mean, var, weight, bias, self.eps)

    def channel_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.weight, self.bias, self.running_mean, self.running_var)


class ConvertedNorm(_OneSideNorm, nn.Module):
    """LayerNorm over the channels or GroupNorm, sliced (no running statistics to switch)."""

    def __init__(self, norm: nn.LayerNorm | nn.GroupNorm, side: Side) -> None:
        super().__init__()
        self.side = side
        self.num_groups = norm.num_groups if isinstance(norm, nn.GroupNorm) else None
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self._index: int | torch.Tensor = side.full
        self.active_channels = side.full

    def activate(self, counts: Mapping[str, int], trained_index: int | None) -> None:
        self.active_channels, self._index = self.side.count(counts), self.side.index(counts)

    def _affine(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        weight = None if self.weight is None else _take(self.weight, 0, self._index)
        bias = None if self.bias is None else _take(self.bias, 0, self._index)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._affine()
        if self.num_groups is None:
            return F.layer_norm(x, (self.active_channels,), weight, bias, self.eps)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)

    @torch.no_grad()
    def densify(self) -> nn.Module:
        weight, bias = self._affine()
        if self.num_groups is None:
            dense = nn.LayerNorm(self.active_channels, self.eps, elementwise_affine=weight is not None)
        else:
            dense = nn.GroupNorm(self.num_groups, self.active_channels, self.eps, affine=weight is not None)
        if weight is not None:
            dense.weight.copy_(weight)
        if bias is not None:
            dense.bias.copy_(bias)
        return dense

    def channel_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.weight, self.bias)


# ---------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupReport:
    """One channel group: its channels, the modules that read or write it, and why it is fixed."""

    name: str
    channels: int
    slimmable: bool
    divisor: int
    members: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ConversionReport:
    """What the analysis found: every channel group, and notes on what it could not see."""

    groups: tuple[GroupReport, ...]
    notes: tuple[str, ...] = ()

    @property
    def fixed(self) -> dict[str, str]:
        """Fixed groups (those a module reads or writes) by name, with the first reason."""
        return {g.name: g.reasons[0] for g in self.groups if not g.slimmable and g.members}

    def summary(self) -> str:
        slim = [g for g in self.groups if g.slimmable]
        lines = [f"{len(slim)} slimmable groups, {len(self.fixed)} fixed"]
        lines += [f"  fixed {name}: {reason}" for name, reason in self.fixed.items()]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


class _Tracer(torch.fx.Tracer):
    def __init__(self, keep: Sequence[str]) -> None:
        super().__init__()
        self.keep = tuple(keep)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if any(qualified_name == k or qualified_name.startswith(k + ".") for k in self.keep):
            return True
        return _norm_with_tail(module) or super().is_leaf_module(module, qualified_name)


def _norm_with_tail(module: nn.Module) -> bool:
    """A BatchNorm subclass that runs channel-wise modules `drop` then `act` after normalising (timm's
    BatchNormAct2d): one leaf of the trace, converted as a switchable BN followed by those modules. Traced
    through instead, its `F.batch_norm` on its own weights would fix its channels."""
    children = dict(module.named_children())
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and list(children) == ["drop", "act"]
        and all(isinstance(child, _PASS_MODULES) for child in children.values())
    )


def _trace(
    model: nn.Module, example: torch.Tensor, keep: Sequence[str], training: bool
) -> tuple[torch.fx.Graph, Any]:
    """The graph of the forward in train or eval mode, each node annotated with its shape, and the output.

    Eval mode runs on the model itself (its modes are restored); train mode on a copy, whose batch norms
    update their statistics."""
    modes = {module: module.training for module in model.modules()}
    try:
        return _trace_and_run(copy.deepcopy(model) if training else model, example, keep, training)
    finally:
        for module, mode in modes.items():
            module.training = mode


def _trace_and_run(
    model: nn.Module, example: torch.Tensor, keep: Sequence[str], training: bool
) -> tuple[torch.fx.Graph, Any]:
    from torch.fx.passes.shape_prop import ShapeProp

    traced_model = model.train(training)
    tracer = _Tracer(keep)
    try:
        graph = tracer.trace(traced_model)
    except Exception as error:  # fx raises many types for what it cannot trace
        where = _user_frame(error)
        stack = list(getattr(tracer, "module_stack", {}) or {})
        inside = f" in module {stack[-1]!r}" if stack and stack[-1] else ""
        raise PlannerError(
            f"cannot trace {type(model).__name__}'s forward{inside}{where}: {str(error).splitlines()[0]}; "
            "pass that module in keep= (it is kept as it is), or wrap the dynamic part in a function "
            "marked torch.fx.wrap"
        ) from None
    module = torch.fx.GraphModule(traced_model, graph)
    if training and example.shape[0] == 1:
        example = torch.cat([example, example])  # batch norm in train mode needs two values per channel
    try:
        with torch.no_grad():
            output = ShapeProp(module).propagate(example)
    except Exception as error:
        raise PlannerError(
            f"the example input {tuple(example.shape)} does not run through {type(model).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return graph, output


def _user_frame(error: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {frame.filename}:{frame.lineno} ({frame.line})"


def _analyse(
    model: nn.Module, example: torch.Tensor, keep: Sequence[str]
) -> tuple[_Analysis, list[str], Any]:
    modules = dict(model.named_modules())
    unknown = [k for k in keep if k not in modules]
    if unknown:
        raise PlannerError(f"keep names {unknown[0]!r}, which is not a module of {type(model).__name__}")
    analysis = _Analysis(modules, keep)
    graph, output = _trace(model, example, keep, training=False)
    analysis.run(graph)
    notes = []
    try:
        analysis.run(_trace(model, example, keep, training=True)[0])
    except PlannerError as error:
        notes.append(f"train-mode forward not analysed ({error}); modules only it reaches stay dense")
    return analysis, notes, output


def _build_groups(analysis: _Analysis, multiple: int = 1) -> dict[int, ChannelGroup]:
    """One ChannelGroup per united space, named after its first producer in graph order; slimmable ones
    take `multiple` channels at a time (see `width_channels`)."""
    order = {path: i for i, path in enumerate(analysis.uses)}
    groups: dict[int, ChannelGroup] = {}
    taken: set[str] = set()
    for i in range(len(analysis.spaces)):
        root = analysis.find(i)
        if root in groups:
            continue
        space = analysis.spaces[root]
        producers = sorted(space.producers, key=lambda p: order.get(p, len(order)))
        name = producers[0] if producers else ("input" if "network input" in space.fixed else f"group{root}")
        while name in taken:
            name += "'"
        taken.add(name)
        if space.fixed or not producers:
            groups[root] = fixed_group(space.size, name)
        else:
            rule = partial(width_channels, full=space.size, divisor=space.divisor, multiple=multiple)
            groups[root] = ChannelGroup(rule, name=name, divisor=space.divisor)
    return groups


def _report(analysis: _Analysis, groups: dict[int, ChannelGroup], notes: list[str]) -> ConversionReport:
    entries = []
    for root, group in groups.items():
        space = analysis.spaces[root]
        reasons = tuple(dict.fromkeys(space.fixed)) or (() if group.slimmable else ("no layer writes it",))
        entries.append(
            GroupReport(
                group.name,
                space.size,
                group.slimmable,
                space.divisor,
                tuple(dict.fromkeys(space.members)),
                reasons,
            )
        )
    return ConversionReport(tuple(entries), tuple(notes))


def analyse(model: nn.Module, example_input: torch.Tensor, keep: Sequence[str] = ()) -> ConversionReport:
    """The channel groups `slimmable` would make of `model`, and why each fixed one is fixed."""
    analysis, notes, _ = _analyse(model, example_input, keep)
    return _report(analysis, _build_groups(analysis), notes)


class ConvertedNetwork(SlimmableNetwork):
    """An ordinary network made slimmable: its own `forward`, its own module paths and weights, with
    convs, linears and norms replaced by slicing ops (see `slimmable`).

    Attributes:
        conversion_report: the channel groups found and why the fixed ones are fixed.
        permutation: per group, the channel order applied before slicing (old indices), if reordered.
        channel_multiple: what the groups' counts are rounded to at each width (see `width_channels`).
    """

    def __init__(
        self,
        network: nn.Module,
        name: str,
        widths: Sequence[float],
        example_shape: tuple[int, ...],
        num_classes: int,
        universal: bool,
        groups: Iterable[ChannelGroup],
        report: ConversionReport,
        channel_multiple: int = 1,
    ) -> None:
        super().__init__(
            name,
            list(widths),
            num_classes,
            example_shape[-1] if len(example_shape) > 2 else 1,
            example_shape[1],
            universal,
        )
        self._modules = network._modules
        self._parameters = network._parameters
        self._buffers = network._buffers
        object.__setattr__(self, "_network", network)  # not a submodule: its children are ours
        self.example_shape = (1, *example_shape[1:])
        self.groups = {g.name: g for g in groups if g.slimmable}
        self.conversion_report = report
        self.permutation: dict[str, list[int]] = {}
        self.channel_multiple = channel_multiple

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.example_shape

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._network(*args, **kwargs)

    def train(self, mode: bool = True) -> ConvertedNetwork:
        super().train(mode)
        self._network.training = mode
        return self

    def converted_ops(self) -> list[nn.Module]:
        return [m for m in self.modules() if hasattr(m, "activate") and hasattr(m, "sides")]

    def validate(self, config: WidthConfig) -> WidthConfig:
        super().validate(config)
        for name, count in config.channels.items():
            divisor = self.groups[name].divisor
            if count % divisor:
                raise PlannerError(
                    f"{name!r} feeds a grouped op with {divisor} groups: its channel count must be a "
                    f"multiple of {divisor}, got {count}"
                )
        return config

    def set_config(self, config: WidthConfig) -> None:
        if config == self.active_config:
            return
        self.validate(config)
        index = self.trained_index(config)
        for op in self.converted_ops():
            op.activate(config.channels, index)
        self.active_config = config


def _check_widths(widths: Sequence[float]) -> list[float]:
    try:
        values = sorted({float(w) for w in widths})
    except (TypeError, ValueError):
        raise PlannerError(f"widths must be numbers in (0, 1], got {list(widths)}") from None
    if not values or not all(0 < w <= 1 for w in values):
        raise PlannerError(f"widths must be in (0, 1], got {list(widths)}")
    return values


def _outputs(value: Any) -> list[torch.Tensor]:
    return [v for v in _flat(value) if isinstance(v, torch.Tensor)]


def slimmable(
    model: nn.Module,
    example_input: torch.Tensor,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    universal: bool = False,
    keep: Sequence[str] = (),
    reorder: bool = True,
    name: str | None = None,
    channel_multiple: int = CHANNEL_MULTIPLE,
) -> ConvertedNetwork:
    """Convert `model` into a slimmable network (the model itself is left untouched).

    Args:
        example_input: one input batch; its shape is the network's input shape (counting, export).
        widths: the trained widths (or, `universal`, the widths whose BN statistics are tracked).
        universal: any width in range (US-Nets: shared BN affine, calibration for untracked widths).
        keep: module paths kept as they are; their inputs and outputs are fixed groups.
        reorder: sort every group's channels by importance first (squared L2 of the filters, summed
            over the group), so a prefix keeps the best channels; the function is unchanged.
        name: the network's name in configurations (default: the model's class name, lowercase).
        channel_multiple: a width's channel counts are multiples of it wherever the full count is
            (fast kernels want multiples of 8); 1 scales every count exactly, as planner did before.
    """
    values = _check_widths(widths)
    if not is_channel_multiple(channel_multiple):
        raise PlannerError(f"channel_multiple must be a positive integer, got {channel_multiple!r}")
    name = name or type(model).__name__.lower()
    analysis, notes, output = _analyse(model, example_input, keep)
    groups = _build_groups(analysis, channel_multiple)
    if not any(g.slimmable for g in groups.values()):
        first = next((r for g in _report(analysis, groups, notes).groups for r in g.reasons), "no layers")
        raise PlannerError(f"{name} has nothing to slim: every channel group is fixed (first: {first})")
    report = _report(analysis, groups, notes)

    def side(layout: _Layout | None, full: int) -> Side:
        if layout is None:
            return Side((fixed_group(full),))
        return Side(tuple(groups[analysis.find(s)] for s, _ in layout.segments), layout.spatial)

    network = copy.deepcopy(model)
    for use in analysis.uses.values():
        module = network.get_submodule(use.path)
        if use.kind in ("conv", "depthwise", "grouped"):
            new = ConvertedConv2d(
                module, use.kind, side(use.inputs, module.in_channels), side(use.output, module.out_channels)
            )
        elif use.kind == "linear":
            new = ConvertedLinear(
                module, side(use.inputs, module.in_features), side(use.output, module.out_features)
            )
        elif use.kind == "batchnorm":
            new = ConvertedBatchNorm(module, side(use.inputs, module.num_features), values, universal)
            if _norm_with_tail(module):
                new = nn.Sequential(new, module.drop, module.act)
        elif use.inputs is not None:
            new = ConvertedNorm(module, side(use.inputs, module.weight.shape[0]))
        else:
            continue
        parent, _, leaf = use.path.rpartition(".")
        setattr(network.get_submodule(parent), leaf, new)

    expected = _outputs(output)  # the traced eval-mode forward's: the converted one must match it
    classes = expected[0].shape[-1] if len(expected) == 1 and expected[0].dim() == 2 else 0
    net = ConvertedNetwork(
        network,
        name,
        values,
        tuple(example_input.shape),
        classes,
        universal,
        [groups[r] for r in sorted(groups)],
        report,
        channel_multiple,
    )
    if reorder:
        from planner.nn.reorder import reorder_groups

        net.permutation = reorder_groups(net)
    net.set_width(values[-1])
    was_training = model.training
    with torch.no_grad():
        got = _outputs(net.eval()(example_input))
    net.train(was_training)
    for a, b in zip(expected, got, strict=True):
        if a.shape != b.shape or (a - b).abs().max() > 1e-4 * max(1.0, float(a.abs().max())):
            raise PlannerError(
                f"converting {name} changed its output at full width (a bug of the conversion, please "
                "report it); keep= the modules around the difference to convert the rest"
            )
    return net
