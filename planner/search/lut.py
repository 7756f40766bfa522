"""Latency lookup table: predict a per-layer configuration's latency on a target without exporting it.

This module holds the table and its format; planner.search.layers writes each layer as its own ONNX,
planner.search.lut_runs measures, fits and checks tables on a target.

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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.models.base import SlimmableNetwork
from planner.models.sources import file_name
from planner.search.layers import model_fingerprint
from planner.widths import WidthConfig
from profilers.documents import load_schema, read_json
from profilers.files import replacing

LUT_FORMAT = 1
METRIC = "p50_ms"


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

    def speed_change(self, anchor_ms: float) -> float | None:
        """How much slower (+) or faster (-) the full width runs now than at the build, as a fraction; None
        for a table that predates the anchor. Re-anchoring rescales every width alike, but a host that
        changed speed does not change every width alike: a check with the full width 49% slower than at the
        build scored 38% within +-10% (results/legr_lut_error_spanning_rounds3.md)."""
        built = self.calibration.anchor_ms
        return anchor_ms / built - 1.0 if built else None

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
        data = read_json(
            path,
            "latency table",
            load_schema("planner", "latency_table"),
            missing_hint="build it with planner lut build",
            error=PlannerError,
        )
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
    return Path(out_dir) / "lut" / f"{target}-{file_name(model)}.json"


def work_dir(out_dir: str | Path, target: str, model: str) -> Path:
    """The layer measurements' own results directory: layer rows never mix with configurations in OUT."""
    return Path(out_dir) / "lut" / f"{target}-{file_name(model)}"


def fit_calibration(sums_ms: Sequence[float], measured_ms: Sequence[float]) -> tuple[float, float]:
    """Least-squares `measured = scale * sum + offset`; only an offset when the sums do not vary."""
    x, y = np.asarray(sums_ms, float), np.asarray(measured_ms, float)
    if len(x) >= 2 and np.ptp(x) > 1e-9 * max(1.0, float(x.max())):
        scale, offset = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)[0]
        if scale > 0:
            return float(scale), float(offset)
    return 1.0, float(np.mean(y - x))


def within(errors: pd.Series, tolerance: float = 0.10) -> float:
    """Share of predictions within +-tolerance of the measurement."""
    return float((errors.abs() <= tolerance).mean())
