"""Results tables with exactly the documented columns (docs/ARCHITECTURE.md), for the selection tests.

The solver is a pure function of these tables, so tests build them with the numbers each case needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

LATENCY_COLUMNS = [
    "model", "config_id", "width", "config", "target", "backend", "device", "precision", "batch",
    "input_shape", "run_id", "timestamp", "status", "error", "estimated", "p50_ms", "p90_ms", "p99_ms",
    "mean_ms", "std_ms", "min_ms", "n", "ci_low_ms", "ci_high_ms", "first_ms", "throughput_ips", "wall_s",
    "peak_rss_bytes", "weight_bytes", "artifact_bytes", "device_mem_bytes", "macs", "params", "env_cpu",
    "env_cores", "env_threads", "env_governor", "env_host", "env_runtime", "env_runtime_version", "env_libs",
    "env_nvpmodel", "env_jetson_clocks",
]  # fmt: skip
ACCURACY_COLUMNS = [
    "model", "config_id", "width", "config", "metric", "value", "dataset", "split", "checkpoint", "source",
    "timestamp",
]  # fmt: skip

BACKENDS = {"cpu": ("onnxruntime", "CPU", "fp32"), "openvino-cpu": ("openvino", "CPU", "fp32")}


def small_model():
    import planner

    return planner.create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)


def small_checkpoint(path: Path) -> Path:
    """The seeded, untrained small model saved as a planner checkpoint: weights to ship in a test."""
    import torch

    import planner

    torch.manual_seed(0)
    return planner.save_checkpoint(small_model(), path)


def latency_row(config, target: str, p50: float, **overrides) -> dict:
    """One ok measurement: p90/p99 and the interval derived from p50 unless given."""
    backend, device, precision = BACKENDS.get(target, ("tensorrt", "GPU", "fp16"))
    row = {
        "model": config.model,
        "config_id": config.id,
        "width": np.nan if config.width is None else config.width,
        "config": config.to_json(indent=None),
        "target": target,
        "backend": backend,
        "device": device,
        "precision": precision,
        "batch": 1,
        "input_shape": "1x1x8x8",
        "run_id": "run-1",
        "timestamp": "2026-11-23T20:00:00+00:00",
        "status": "ok",
        "error": "",
        "estimated": False,
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5,
        "mean_ms": p50 * 1.05,
        "std_ms": p50 * 0.1,
        "min_ms": p50 * 0.9,
        "n": 200,
        "ci_low_ms": p50 * 0.98,
        "ci_high_ms": p50 * 1.02,
        "first_ms": p50 * 10,
        "throughput_ips": 1000.0 / p50,
        "wall_s": 1.5,
        "peak_rss_bytes": 1_000_000,
        "weight_bytes": 10_000,
        "artifact_bytes": 12_000,
        "device_mem_bytes": np.nan,
        "macs": 100_000,
        "params": 10_000,
        "env_cpu": "Test CPU",
        "env_cores": 2,
        "env_threads": 2,
        "env_governor": "performance",
        "env_host": "testhost",
        "env_runtime": backend,
        "env_runtime_version": "1.0",
        "env_libs": json.dumps({"numpy": np.__version__}),
        "env_nvpmodel": "",
        "env_jetson_clocks": "",
    }
    row.update(overrides)
    return row


def accuracy_row(config, value: float, **overrides) -> dict:
    row = {
        "model": config.model,
        "config_id": config.id,
        "width": np.nan if config.width is None else config.width,
        "config": config.to_json(indent=None),
        "metric": "top1",
        "value": value,
        "dataset": "digits",
        "split": "val",
        "checkpoint": "",
        "source": "measured",
        "timestamp": "2026-11-23T20:00:00+00:00",
    }
    row.update(overrides)
    return row


def latency_table(rows: Iterable[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=LATENCY_COLUMNS)


def accuracy_table(rows: Iterable[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=ACCURACY_COLUMNS)


def write_results(directory: Path, latency: pd.DataFrame, accuracy: pd.DataFrame | None = None) -> Path:
    """Write the tables where `planner profile/evaluate --out DIR` put them."""
    directory.mkdir(parents=True, exist_ok=True)
    latency.to_parquet(directory / "latency.parquet", index=False)
    if accuracy is not None:
        accuracy.to_parquet(directory / "accuracy.parquet", index=False)
    return directory


def four_widths(target: str = "cpu", latencies=(1.0, 2.0, 3.0, 4.0), accuracies=(80.0, 88.0, 92.0, 94.0)):
    """s_cnn_small's trained widths with the given p50 latencies and top-1 accuracies."""
    model = small_model()
    configs = [model.config(w) for w in model.widths]
    latency = latency_table(latency_row(c, target, p) for c, p in zip(configs, latencies, strict=True))
    accuracy = accuracy_table(accuracy_row(c, a) for c, a in zip(configs, accuracies, strict=True))
    return configs, latency, accuracy
