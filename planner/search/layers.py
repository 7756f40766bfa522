"""A slimmable network's layers as a latency table measures them: each conv or linear with its folded BN
and activation, on a grid of the channel counts it can take, written as its own small ONNX."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from planner.models.base import SlimmableNetwork
from planner.models.ops import ChannelGroup, SlimmableConv2d, SlimmableLinear, _CalibratedBatchNorm
from planner.models.space import allowed_counts, default_granularity
from planner.nn.counting import forward_at_full_width
from profilers.files import replacing

DEFAULT_POINTS = 3
_OPSET = 17
_IR_VERSION = 8


def model_fingerprint(model: SlimmableNetwork) -> str:
    """Hash of what a layer's latency depends on: layer shapes, groups, strides, the input size."""
    layers = [
        [
            path,
            type(m).__name__,
            list(m.weight.shape),
            list(getattr(m, "stride", ())),
            list(getattr(m, "padding", ())),
            m.in_group.name,
            m.out_group.name,
        ]
        for path, m in model.named_modules()
        if isinstance(m, (SlimmableConv2d, SlimmableLinear))
    ]
    data = [model.name, model.in_channels, model.input_size, model.num_classes, model.widths, layers]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LayerOp:
    """What one sliced layer's latency depends on besides its channel counts, plus its grid."""

    path: str
    kind: str  # "conv" or "linear"
    in_group: str | None  # None: the side is not slimmable (fixed count = the single axis value)
    out_group: str | None
    in_axis: tuple[int, ...]
    out_axis: tuple[int, ...]
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    size: int = 1
    depthwise: bool = False
    activation: str = ""
    groups: int = 1  # a grouped conv that keeps its group count (converted networks)

    @property
    def signature(self) -> str:
        """Identical for layers that cost the same (repeated blocks), so they are measured once."""
        shape = [
            self.kind,
            self.kernel,
            self.stride,
            self.padding,
            self.size,
            self.depthwise,
            self.activation,
        ] + ([self.groups] if self.groups != 1 else [])
        return hashlib.sha256(json.dumps([shape, self.in_axis, self.out_axis]).encode()).hexdigest()[:12]

    def grid(self) -> list[tuple[int, int]]:
        """(input, output) channel counts to measure; a depthwise conv keeps in == out."""
        if self.depthwise:
            return [(c, c) for c in self.out_axis]
        return [(cin, cout) for cin in self.in_axis for cout in self.out_axis]


def _grid_axis(
    model: SlimmableNetwork, group: ChannelGroup, points: int, granularity: int
) -> tuple[int, ...]:
    if not group.slimmable:
        return (group.max_channels,)
    counts = allowed_counts(model, group, granularity)
    picks = np.linspace(0, len(counts) - 1, max(2, points)).round().astype(int)
    return tuple(sorted({counts[i] for i in picks}))


def _activation_after(model: nn.Module) -> dict[nn.Module, str]:
    """The activation that follows each layer in its Sequential (BN in between is folded away)."""
    found: dict[nn.Module, str] = {}
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent)
        for i, child in enumerate(children):
            following = [
                c for c in children[i + 1 :] if not isinstance(c, (_CalibratedBatchNorm, nn.BatchNorm2d))
            ]
            nxt = following[0] if following else None
            found[child] = (
                "relu6" if isinstance(nxt, nn.ReLU6) else "relu" if isinstance(nxt, nn.ReLU) else ""
            )
    return found


def layer_ops(
    model: SlimmableNetwork, points: int = DEFAULT_POINTS, granularity: int | None = None
) -> list[LayerOp]:
    """Every sliced layer with its shape (from one forward pass at the widest width) and its grid."""
    granularity = granularity or default_granularity(model)
    sliced = (SlimmableConv2d, SlimmableLinear)
    layers = {m: path for path, m in model.named_modules() if isinstance(m, sliced)}
    sizes: dict[str, int] = {}

    def record_size(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        sizes[layers[module]] = inputs[0].shape[-1]

    forward_at_full_width(model, list(layers), record_size)
    activations = _activation_after(model)
    ops = []
    for path, m in model.named_modules():
        if not isinstance(m, (SlimmableConv2d, SlimmableLinear)):
            continue
        common = dict(
            path=path,
            in_group=m.in_group.name if m.in_group.slimmable else None,
            out_group=m.out_group.name if m.out_group.slimmable else None,
            in_axis=_grid_axis(model, m.in_group, points, granularity),
            out_axis=_grid_axis(model, m.out_group, points, granularity),
            activation=activations.get(m, ""),
        )
        if isinstance(m, SlimmableConv2d):
            ops.append(
                LayerOp(
                    kind="conv",
                    kernel=m.kernel_size[0],
                    stride=m.stride[0],
                    padding=m.padding[0],
                    size=sizes[path],
                    depthwise=m.depthwise,
                    groups=1 if m.depthwise else m.groups,
                    **common,
                )
            )
        else:
            ops.append(LayerOp(kind="linear", **common))
    return ops


def write_layer_onnx(op: LayerOp, cin: int, cout: int, path: Path) -> Path:
    """The layer alone at (cin, cout) as a static ONNX: Conv (BN folded into its bias) + activation, or
    Gemm. Built directly with onnx.helper: instant, where exporting through torch takes seconds."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op.kind == "conv":
        groups = cin if op.depthwise else op.groups
        weight = rng.standard_normal((cout, cin // groups, op.kernel, op.kernel)).astype(np.float32) * 0.1
        out_size = (op.size + 2 * op.padding - op.kernel) // op.stride + 1
        in_shape, out_shape = [1, cin, op.size, op.size], [1, cout, out_size, out_size]
        attributes = dict(
            kernel_shape=[op.kernel] * 2, strides=[op.stride] * 2, pads=[op.padding] * 4, group=groups
        )
        nodes = [helper.make_node("Conv", ["input", "weight", "bias"], ["linear"], **attributes)]
    else:
        weight = rng.standard_normal((cout, cin)).astype(np.float32) * 0.1
        in_shape, out_shape = [1, cin], [1, cout]
        nodes = [helper.make_node("Gemm", ["input", "weight", "bias"], ["linear"], transB=1)]
    initializers = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.zeros(cout, np.float32), "bias"),
    ]
    if op.activation == "relu":
        nodes.append(helper.make_node("Relu", ["linear"], ["output"]))
    elif op.activation == "relu6":
        initializers += [
            numpy_helper.from_array(np.array(0.0, np.float32), "low"),
            numpy_helper.from_array(np.array(6.0, np.float32), "high"),
        ]
        nodes.append(helper.make_node("Clip", ["linear", "low", "high"], ["output"]))
    else:
        nodes.append(helper.make_node("Identity", ["linear"], ["output"]))
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    with replacing(path) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return path
