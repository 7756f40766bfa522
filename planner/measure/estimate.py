"""Roofline estimates: a latency prediction from a target's published peak figures, for unreachable devices.

Each layer of the dense network takes `max(FLOPs / peak, bytes / bandwidth) + overhead`: it is bound by
compute or by moving its input, output and weights through DRAM, plus a fixed dispatch cost. BatchNorm
and activations are taken as fused into the convolution before them, as every runtime here does; residual
adds are not counted. The sum is an optimistic bound (peaks are never reached), useful to rank
configurations and to sanity-check a measurement, never a substitute for one: rows made here carry
`estimated=True`, and the solver ignores them unless asked.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from torch import nn

from planner.errors import PlannerError
from planner.measure.targets import Hardware, Target
from planner.models.base import SlimmableNetwork
from planner.nn.counting import count
from planner.nn.materialize import materialize
from planner.widths import WidthConfig

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# An assumed per-operator dispatch cost (kernel launch / runtime op overhead); not a vendor figure.
DEFAULT_LAYER_OVERHEAD_US = 5.0
_TIMED_LAYERS = (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d)


@dataclass(frozen=True)
class LayerEstimate:
    """One layer's roofline: which bound wins tells whether slimming it saves time."""

    name: str
    kind: str
    macs: int
    bytes: int
    compute_ms: float
    memory_ms: float
    overhead_ms: float

    @property
    def ms(self) -> float:
        return max(self.compute_ms, self.memory_ms) + self.overhead_ms

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def roofline_figures(target: Target) -> tuple[float, float]:
    """(peak GFLOP/s, bandwidth GB/s) of a target, or a PlannerError saying which figure to add."""
    hardware = target.hardware
    where = target.path or f"{target.name}.toml"
    if hardware is None:
        raise PlannerError(
            f"target {target.name} has no [hardware] figures to estimate from; add peak_fp32_gflops, "
            f"memory_bandwidth_gbs and source to {where} (see planner/targets/README.md)"
        )
    peak = hardware.peak_gflops(target.precision)
    if peak is None or hardware.memory_bandwidth_gbs is None:
        missing = "memory_bandwidth_gbs" if peak is not None else "peak_fp32_gflops"
        raise PlannerError(f"target {target.name} needs hardware.{missing} in {where} to estimate latency")
    return peak, hardware.memory_bandwidth_gbs


def estimate_layers(
    dense: nn.Module,
    input_shape: tuple[int, ...],
    target: Target,
    overhead_us: float = DEFAULT_LAYER_OVERHEAD_US,
) -> list[LayerEstimate]:
    """Per-layer roofline of a dense network, from one forward pass at `input_shape`."""
    peak_gflops, bandwidth_gbs = roofline_figures(target)
    element = BYTES_PER_ELEMENT[target.precision]
    layers: list[LayerEstimate] = []

    def record(name: str, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = inputs[0]
        weights = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            kind = "conv"
            per_output = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs = output.numel() * per_output
        elif isinstance(module, nn.Linear):
            kind, macs = "linear", output.numel() * module.in_features
        else:
            kind, macs = "pool", x.numel()
        moved = (x.numel() + output.numel() + weights) * element
        layers.append(
            LayerEstimate(
                name=name,
                kind=kind,
                macs=macs,
                bytes=moved,
                compute_ms=2 * macs / (peak_gflops * 1e9) * 1e3,
                memory_ms=moved / (bandwidth_gbs * 1e9) * 1e3,
                overhead_ms=overhead_us / 1e3,
            )
        )

    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: record(name, m, i, o))
        for name, module in dense.named_modules()
        if isinstance(module, _TIMED_LAYERS)
    ]
    try:
        with torch.no_grad():
            dense.eval()(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return layers


def estimate_rows(
    model: SlimmableNetwork, configs: list[WidthConfig], target: Target
) -> list[dict[str, object]]:
    """One latency-table row per configuration, marked `estimated=True` (see docs/ARCHITECTURE.md)."""
    run_id = uuid.uuid4().hex[:12]
    peak_gflops, bandwidth_gbs = roofline_figures(target)
    hardware: Hardware = target.hardware
    overhead_us = DEFAULT_LAYER_OVERHEAD_US
    timestamp = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    for config in configs:
        dense = materialize(model, config, fold_bn=True)
        shape = (target.batch, *dense.input_shape[1:])
        layers = estimate_layers(dense, shape, target, overhead_us)
        latency_ms = sum(layer.ms for layer in layers)
        cost = count(model, config)
        rows.append(
            {
                "model": model.name,
                "config_id": config.id,
                "width": math.nan if config.width is None else config.width,
                "config": config.to_json(indent=None),
                "target": target.name,
                "backend": target.backend,
                "device": target.device,
                "precision": target.precision,
                "batch": target.batch,
                "input_shape": "x".join(str(size) for size in shape),
                "run_id": run_id,
                "timestamp": timestamp,
                "status": "ok",
                "error": "",
                "estimated": True,
                "p50_ms": latency_ms,
                "p90_ms": latency_ms,
                "p99_ms": latency_ms,
                "mean_ms": latency_ms,
                "min_ms": latency_ms,
                "n": 0,
                "throughput_ips": target.batch * 1e3 / latency_ms,
                "weight_bytes": cost.params * BYTES_PER_ELEMENT[target.precision],
                "macs": cost.macs,
                "params": cost.params,
                "env_runtime": "roofline",
                "env_libs": json.dumps(
                    {
                        "peak_gflops": peak_gflops,
                        "memory_bandwidth_gbs": bandwidth_gbs,
                        "layer_overhead_us": overhead_us,
                        "layers": len(layers),
                        "memory_bound_layers": sum(layer.bound == "memory" for layer in layers),
                        "source": hardware.source,
                    }
                ),
            }
        )
    return rows
