"""Latency lookup table: predict a per-layer configuration's latency on a target without exporting it.

A search scores thousands of configurations; exporting and measuring each is minutes. Instead each
slimmable layer (a conv with its folded BN and activation, or a linear layer) is measured on the target as
its own small ONNX, on a grid of the channel counts it can take, with the profilers. A configuration's
latency is predicted as `scale * sum(layer latencies) + offset`: bilinear interpolation in (input,
output) channels per layer (a conv's cost is bilinear in them), and `scale`, `offset` fitted by least
squares on a few end-to-end measurements, which absorb what the layers alone miss (session overhead,
residual adds, pooling, the fixed classifier, cache effects between layers).

The table is JSON (data, never code) and names the target, the model, a fingerprint of the model's
structure and the runtime version it was measured with; a table of another target or model is refused.
Layers with the same shape (the repeated blocks of a stage) are measured once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.models.base import SlimmableNetwork
from planner.models.ops import ChannelGroup, SlimmableConv2d, SlimmableLinear, _CalibratedBatchNorm
from planner.nn.counting import forward_at_full_width
from planner.widths import WidthConfig
from profilers.files import replacing
from profilers.jobs import Job, Settings

LUT_FORMAT = 1
DEFAULT_POINTS = 3
MIN_FRACTION = 0.1
METRIC = "p50_ms"
# Per-layer measurements are short and many: fewer queries and a looser interval than a whole model.
LAYER_SETTINGS = Settings(
    ci_rel=0.05, min_queries=32, max_seconds=3.0, warmup_s=0.2, burst_size=64, burst_seconds=0.1
)
END_TO_END_SETTINGS = Settings(ci_rel=0.03, min_queries=48, max_seconds=10.0, warmup_s=0.5)
# Channel step of the configurations a model is planned in (TF-slim's rounding for MobileNets).
GRANULARITY = {"s_mobilenet_v1": 8, "s_mobilenet_v2": 8, "us_mobilenet_v2": 8, "us_cnn_small": 8}
_OPSET = 17
_IR_VERSION = 8


def default_granularity(model: SlimmableNetwork) -> int:
    return GRANULARITY.get(model.name, 1)


def channel_floor(model: SlimmableNetwork, group: ChannelGroup, min_fraction: float = MIN_FRACTION) -> int:
    """The fewest channels a group is given: `min_fraction` of it (LeGR keeps 10%), and never fewer than
    at the narrowest trained width, below which a slimmable network was never trained; a multiple of the
    group's divisor (a grouped conv keeps its group count)."""
    floor = max(1, math.ceil(min_fraction * group.max_channels), group.at(model.widths[0]))
    return -(-floor // group.divisor) * group.divisor


def allowed_counts(
    model: SlimmableNetwork, group: ChannelGroup, granularity: int, min_fraction: float = MIN_FRACTION
) -> list[int]:
    """Channel counts a planned configuration may give a group: multiples of the granularity (and of the
    group's divisor) between the floor and the maximum, plus both ends."""
    floor = channel_floor(model, group, min_fraction)
    step = math.lcm(granularity, group.divisor)
    steps = range(-(-floor // step) * step, group.max_channels, step)
    return sorted({floor, *steps, group.max_channels})


def random_configs(
    model: SlimmableNetwork, count: int, rng: np.random.Generator, granularity: int | None = None
) -> list[WidthConfig]:
    """Per-layer configurations with every group's count drawn uniformly from its allowed counts."""
    granularity = granularity or default_granularity(model)
    domains = {name: allowed_counts(model, group, granularity) for name, group in model.groups.items()}
    return [
        model.config_from_channels({name: int(rng.choice(counts)) for name, counts in domains.items()})
        for _ in range(count)
    ]


def calibration_widths(model: SlimmableNetwork, count: int = 4) -> list[float]:
    """Uniform widths whose end-to-end latency calibrates a table: the trained widths of an S-Net; for a
    US-Net, `count` of its tracked widths spread over the range (it tracks dozens)."""
    if not model.universal or len(model.widths) <= count:
        return list(model.widths)
    picks = np.linspace(0, len(model.widths) - 1, count).round().astype(int)
    return [model.widths[i] for i in sorted(set(picks))]


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


@dataclass(frozen=True)
class Entry:
    """Measured latency (ms) of one layer shape on a channel grid: `ms[i][j]` at (in_axis[i], out_axis[j])."""

    in_axis: tuple[int, ...]
    out_axis: tuple[int, ...]
    ms: np.ndarray
    depthwise: bool = False

    def at(self, cin: int, cout: int) -> float:
        """Bilinear interpolation (clamped at the grid's edges)."""
        if self.depthwise:
            return float(np.interp(cout, self.out_axis, self.ms[0]))
        rows = [np.interp(cout, self.out_axis, row) for row in self.ms]
        return float(np.interp(cin, self.in_axis, rows))


@dataclass(frozen=True)
class Calibration:
    """`measured = scale * layer_sum + offset_ms`, fitted on end-to-end measurements.

    `anchor_ms`: the full width's latency at the time of the fit (None in tables that predate it).
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    points: tuple[dict[str, Any], ...] = ()
    anchor_ms: float | None = None


@dataclass(frozen=True)
class LatencyTable:
    """The lookup table of one model on one target. `predict_ms` is what a search calls."""

    target: dict[str, Any]
    model: str
    fingerprint: str
    input_shape: tuple[int, ...]
    runtime: str
    runtime_version: str
    layers: tuple[dict[str, Any], ...]  # path, entry (signature), in_group, out_group, in_fixed, out_fixed
    entries: dict[str, Entry]
    calibration: Calibration = field(default_factory=Calibration)
    metric: str = METRIC
    created: str = ""

    def layer_sum_ms(self, channels: Mapping[str, int]) -> float:
        total = 0.0
        for layer in self.layers:
            cin = channels[layer["in_group"]] if layer["in_group"] else layer["in_fixed"]
            cout = channels[layer["out_group"]] if layer["out_group"] else layer["out_fixed"]
            total += self.entries[layer["entry"]].at(cin, cout)
        return total

    def predict_ms(self, channels: Mapping[str, int] | WidthConfig) -> float:
        """Predicted latency (the table's metric, ms) of a configuration or its channel counts."""
        counts = channels.channels if isinstance(channels, WidthConfig) else channels
        return self.calibration.scale * self.layer_sum_ms(counts) + self.calibration.offset_ms

    def reanchored(self, anchor_ms: float) -> LatencyTable:
        """The table rescaled to the machine's speed now, given the full width's latency measured now.

        A shared or throttled machine drifts by several percent between the build and later use; every
        prediction is scaled by anchor_ms / the full width's latency at the build. Unchanged for a table
        that predates the anchor.
        """
        built = self.calibration.anchor_ms
        if not built:
            return self
        factor = anchor_ms / built
        calibration = replace(
            self.calibration,
            scale=self.calibration.scale * factor,
            offset_ms=self.calibration.offset_ms * factor,
            anchor_ms=anchor_ms,
        )
        return replace(self, calibration=calibration)

    def check(self, model: SlimmableNetwork, target: Target | None = None) -> LatencyTable:
        """Refuse a table measured for another target or another version of the model; return self."""
        if self.model != model.name:
            raise PlannerError(
                f"latency table is for model {self.model!r}, not {model.name!r}: build one for it"
            )
        if self.fingerprint != model_fingerprint(model):
            raise PlannerError(
                f"latency table was built for another version of {model.name} (structure or input size "
                f"{'x'.join(map(str, self.input_shape))} differs): rebuild it with planner lut build"
            )
        if target is not None and self.target != target_identity(target):
            raise PlannerError(
                f"latency table was measured on target {self.target['name']!r} "
                f"({self.target['backend']}/{self.target['device']}), not on {target.name!r}: "
                f"build one with planner lut build --target {target.name} --model {model.name}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "target": self.target,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "input_shape": list(self.input_shape),
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "metric": self.metric,
            "created": self.created,
            "calibration": {
                "scale": self.calibration.scale,
                "offset_ms": self.calibration.offset_ms,
                "points": list(self.calibration.points),
                "anchor_ms": self.calibration.anchor_ms,
            },
            "layers": list(self.layers),
            "entries": {
                key: {
                    "in": list(e.in_axis),
                    "out": list(e.out_axis),
                    "depthwise": e.depthwise,
                    "ms": e.ms.tolist(),
                }
                for key, e in self.entries.items()
            },
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlannerError(
                f"latency table {path} does not exist: build it with planner lut build"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PlannerError(f"cannot read latency table {path}: {error}") from None
        if not isinstance(data, dict) or data.get("format") != LUT_FORMAT:
            raise PlannerError(f"{path} is not a planner latency table (format {LUT_FORMAT})")
        try:
            entries = {
                key: Entry(
                    tuple(e["in"]), tuple(e["out"]), np.asarray(e["ms"], dtype=float), bool(e["depthwise"])
                )
                for key, e in data["entries"].items()
            }
            calibration = data["calibration"]
            return cls(
                target=dict(data["target"]),
                model=str(data["model"]),
                fingerprint=str(data["fingerprint"]),
                input_shape=tuple(data["input_shape"]),
                runtime=str(data["runtime"]),
                runtime_version=str(data["runtime_version"]),
                layers=tuple(dict(layer) for layer in data["layers"]),
                entries=entries,
                calibration=Calibration(
                    float(calibration["scale"]),
                    float(calibration["offset_ms"]),
                    tuple(calibration["points"]),
                    float(calibration["anchor_ms"]) if calibration.get("anchor_ms") else None,
                ),
                metric=str(data.get("metric", METRIC)),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PlannerError(f"latency table {path} is malformed ({error})") from None


def target_identity(target: Target) -> dict[str, Any]:
    """What a table must match to be used on a target."""
    return {
        "name": target.name,
        "backend": target.backend,
        "device": target.device,
        "precision": target.precision,
        "threads": target.threads,
    }


def table_path(out_dir: str | Path, target: str, model: str) -> Path:
    """Where `planner lut build --out DIR` writes a table and `legr config` looks for it."""
    return Path(out_dir) / "lut" / f"{target}-{model}.json"


def work_dir(out_dir: str | Path, target: str, model: str) -> Path:
    """The layer measurements' own results directory: layer rows never mix with configurations in OUT."""
    return Path(out_dir) / "lut" / f"{target}-{model}"


Log = Callable[[str], None]


def measure_layers(
    ops: Sequence[LayerOp],
    target: Target,
    model_name: str,
    directory: Path,
    settings: Settings = LAYER_SETTINGS,
) -> tuple[dict[str, Entry], pd.DataFrame]:
    """Measure each distinct layer shape at its grid points on the target; rows land in `directory`."""
    from profilers.scheduler import run_jobs

    layers_dir = directory / "layers"
    layers_dir.mkdir(parents=True, exist_ok=True)
    unique = {op.signature: op for op in ops}
    jobs, where = [], []
    for signature, op in unique.items():
        for cin, cout in op.grid():
            onnx = write_layer_onnx(op, cin, cout, layers_dir / f"{signature}-{cin}x{cout}.onnx")
            config_id = f"{signature}-{cin}x{cout}"
            jobs.append(
                Job(
                    onnx,
                    target.backend,
                    target.device,
                    target.precision,
                    target.threads,
                    target.batch,
                    metadata={"model": f"{model_name}:layer", "config_id": config_id, "target": target.name},
                )
            )
            where.append((signature, cin, cout))
    rows = run_jobs(jobs, directory, settings)
    measured = _ok_rows(rows)
    latency = dict(zip(measured["config_id"], measured[METRIC], strict=True))
    entries = {}
    for signature, op in unique.items():
        missing = [
            f"{signature}-{cin}x{cout}"
            for cin, cout in op.grid()
            if f"{signature}-{cin}x{cout}" not in latency
        ]
        if missing:
            raise PlannerError(f"measuring layer {op.path} failed ({_first_error(rows, missing[0])})")
        if op.depthwise:
            ms = np.array([[latency[f"{signature}-{c}x{c}"] for c in op.out_axis]])
        else:
            ms = np.array([[latency[f"{signature}-{i}x{o}"] for o in op.out_axis] for i in op.in_axis])
        entries[signature] = Entry(op.in_axis, op.out_axis, ms, op.depthwise)
    return entries, rows


def _ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"]


def _first_error(rows: pd.DataFrame, config_id: str) -> str:
    failed = rows[rows["config_id"] == config_id]
    return str(failed["error"].iloc[0]) if len(failed) else "no row"


def measure_configs(
    model: SlimmableNetwork,
    configs: Sequence[WidthConfig],
    target: Target,
    out_dir: Path,
    settings: Settings = END_TO_END_SETTINGS,
) -> dict[str, float]:
    """End-to-end latency (the table's metric) of whole configurations, exported and measured as `planner
    profile` does; the rows land in OUT like any other (a configuration OUT already holds is not re-measured).
    """
    from planner.measure.profile import profile_configs

    rows = profile_configs(model, list(configs), [target], out_dir, settings=settings)
    measured = _ok_rows(rows)
    return dict(zip(measured["config_id"], measured[METRIC].astype(float), strict=True))


def measure_anchored(
    model: SlimmableNetwork,
    configs: Sequence[WidthConfig],
    target: Target,
    out_dir: Path,
    settings: Settings = END_TO_END_SETTINGS,
) -> pd.DataFrame:
    """End-to-end latency of whole configurations, corrected for the machine's drift during the run.

    The profiler interleaves at most `max_workers` jobs, so a long list is measured group after group,
    and a slow minute moves one group's medians alike (measured here: one group of 8 ran 40% slow in a
    50-configuration check). So every group is measured beside the widest uniform width (the anchor), and
    a configuration's latency is its paired per-round ratio to the anchor times the anchor's median p50 over
    all groups. Columns: config_id, p50_ms (as measured), anchored_ms; the first row is the anchor's (its
    median p50 over the groups). Rows land in the table's work dir.
    """
    from planner.measure.profile import export_artifacts, make_jobs
    from profilers.scheduler import run_jobs

    anchor = model.config(model.widths[-1])
    others = list({c.id: c for c in configs if c.id != anchor.id}.values())
    anchor_job, *jobs = make_jobs(export_artifacts(model, [anchor, *others], out_dir, target), target)
    size = max(1, settings.max_workers - 1)
    groups = []
    for start in range(0, max(1, len(jobs)), size):
        chunk = jobs[start : start + size]
        # A directory per set of jobs: a re-run resumes it, another set never shares its anchor row.
        digest = hashlib.sha256(" ".join(j.identity()["config_id"] for j in chunk).encode()).hexdigest()
        directory = work_dir(out_dir, target.name, model.name) / "anchored" / digest[:12]
        groups.append(_ok_rows(run_jobs([anchor_job, *chunk], directory, settings)))
    rows = pd.concat(groups, ignore_index=True)
    anchor_rows = rows[rows["config_id"] == anchor.id]
    if anchor_rows.empty:
        raise PlannerError(f"measuring {model.name} at its full width failed on {target.name}")
    level = float(anchor_rows["p50_ms"].median())
    paired = rows[(rows["ref_config_id"] == anchor.id) & (rows["config_id"] != anchor.id)]
    frame = pd.DataFrame(
        {
            "config_id": [anchor.id, *paired["config_id"]],
            "p50_ms": [level, *paired["p50_ms"].astype(float)],
            "anchored_ms": [level, *(paired["ratio_to_ref"].astype(float) * level)],
        }
    )
    return frame


def fit_calibration(sums_ms: Sequence[float], measured_ms: Sequence[float]) -> tuple[float, float]:
    """Least-squares `measured = scale * sum + offset`; only an offset when the sums do not vary."""
    x, y = np.asarray(sums_ms, float), np.asarray(measured_ms, float)
    if len(x) >= 2 and np.ptp(x) > 1e-9 * max(1.0, float(x.max())):
        scale, offset = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)[0]
        if scale > 0:
            return float(scale), float(offset)
    return 1.0, float(np.mean(y - x))


def build_table(
    model: SlimmableNetwork,
    target: Target,
    out_dir: str | Path,
    points: int = DEFAULT_POINTS,
    calibration_configs: Sequence[WidthConfig] | None = None,
    granularity: int | None = None,
    layer_settings: Settings = LAYER_SETTINGS,
    end_to_end_settings: Settings = END_TO_END_SETTINGS,
    log: Log | None = None,
) -> LatencyTable:
    """Measure the layers of `model` on `target`, calibrate on end-to-end runs, return the table.

    The calibration configurations default to `calibration_widths` plus two random per-layer ones.
    """
    say = log or (lambda line: None)
    if target.is_remote:
        raise PlannerError(
            f"target {target.name} is remote; latency tables are built on local targets for now"
        )
    if points < 2:
        raise PlannerError(f"a latency table needs at least 2 grid points per layer, got {points}")
    directory = work_dir(out_dir, target.name, model.name)
    ops = layer_ops(model, points, granularity)
    unique = {op.signature: op for op in ops}
    points_total = sum(len(op.grid()) for op in unique.values())
    say(f"measuring {len(unique)} distinct layers of {len(ops)} at {points_total} grid points")
    entries, rows = measure_layers(ops, target, model.name, directory, layer_settings)
    if calibration_configs is None:
        rng = np.random.default_rng(0)
        calibration_configs = [model.config(w) for w in calibration_widths(model)] + random_configs(
            model, 2, rng, granularity
        )
    say(f"measuring {len(calibration_configs)} whole configurations to calibrate the sum")
    layers = tuple(
        {
            "path": op.path,
            "entry": op.signature,
            "in_group": op.in_group,
            "out_group": op.out_group,
            "in_fixed": op.in_axis[0],
            "out_fixed": op.out_axis[0],
        }
        for op in ops
    )
    ok = _ok_rows(rows)
    table = LatencyTable(
        target=target_identity(target),
        model=model.name,
        fingerprint=model_fingerprint(model),
        input_shape=(1, model.in_channels, model.input_size, model.input_size),
        runtime=str(ok["env_runtime"].iloc[0]) if len(ok) else target.backend,
        runtime_version=str(ok["env_runtime_version"].iloc[0]) if len(ok) else "",
        layers=layers,
        entries=entries,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    anchored = measure_anchored(model, calibration_configs, target, Path(out_dir), end_to_end_settings)
    measured = dict(zip(anchored["config_id"], anchored["anchored_ms"], strict=True))
    anchor_ms = float(anchored["anchored_ms"].iloc[0])
    used = [c for c in calibration_configs if c.id in measured]
    if not used:
        raise PlannerError(f"no end-to-end measurement of {model.name} succeeded on {target.name}")
    sums = [table.layer_sum_ms(c.channels) for c in used]
    scale, offset = fit_calibration(sums, [measured[c.id] for c in used])
    points_used = tuple(
        {"config_id": c.id, "label": c.label, "layer_sum_ms": s, "measured_ms": measured[c.id]}
        for c, s in zip(used, sums, strict=True)
    )
    return replace(table, calibration=Calibration(scale, offset, points_used, anchor_ms))


def check_table(
    table: LatencyTable,
    model: SlimmableNetwork,
    target: Target,
    out_dir: str | Path,
    samples: int = 20,
    seed: int = 1,
    granularity: int | None = None,
    settings: Settings = END_TO_END_SETTINGS,
) -> pd.DataFrame:
    """Prediction against end-to-end measurement on random per-layer configurations.

    The table is first re-anchored (`LatencyTable.reanchored`) on the full width measured with them.
    Columns: config_id, predicted_ms (re-anchored), built_predicted_ms (the table as built), measured_ms
    (drift-corrected, see `measure_anchored`), p50_ms (as measured), error (relative, signed: predicted_ms
    against measured_ms).
    """
    if samples < 1:
        raise PlannerError(f"--samples must be at least 1, got {samples}")
    table.check(model, target)
    configs = random_configs(model, samples, np.random.default_rng(seed), granularity)
    measured = measure_anchored(model, configs, target, Path(out_dir), settings)
    now = table.reanchored(float(measured["anchored_ms"].iloc[0]))
    measured = measured.set_index("config_id")
    rows = [
        {
            "config_id": c.id,
            "predicted_ms": now.predict_ms(c),
            "built_predicted_ms": table.predict_ms(c),
            "measured_ms": measured.loc[c.id, "anchored_ms"],
            "p50_ms": measured.loc[c.id, "p50_ms"],
        }
        for c in configs
        if c.id in measured.index
    ]
    if not rows:
        raise PlannerError(f"no end-to-end measurement of {model.name} succeeded on {target.name}")
    frame = pd.DataFrame(rows)
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1.0
    return frame


def within(errors: pd.Series, tolerance: float = 0.10) -> float:
    """Share of predictions within +-tolerance of the measurement."""
    return float((errors.abs() <= tolerance).mean())
