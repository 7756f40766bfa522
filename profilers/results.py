"""The latency table: one row per measured job, with the schema documented in docs/ARCHITECTURE.md.

Rows are merged into OUT/latency.parquet (+ latency.csv) after every finished job, each file written to
a temporary name, flushed to disk and renamed into place, under a lock: killing the run at any moment
leaves the previous complete table. A job re-measured (after an error, or with force) replaces its row.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pandas as pd

from profilers.files import locked, replacing
from profilers.jobs import KEY_COLUMNS

PARQUET = "latency.parquet"
CSV = "latency.csv"

# column -> pandas dtype, in table order.
SCHEMA: dict[str, str] = {
    "model": "string",
    "config_id": "string",
    "width": "float64",
    "config": "string",
    "target": "string",
    "backend": "string",
    "device": "string",
    "precision": "string",
    "batch": "Int64",
    "input_shape": "string",
    "run_id": "string",
    "timestamp": "string",
    "status": "string",
    "error": "string",
    "estimated": "boolean",
    "converged": "boolean",
    "p50_ms": "float64",
    "p90_ms": "float64",
    "p99_ms": "float64",
    "mean_ms": "float64",
    "std_ms": "float64",
    "min_ms": "float64",
    "n": "Int64",
    "ci_low_ms": "float64",
    "ci_high_ms": "float64",
    "run_spread": "float64",
    "spread_runs": "Int64",
    "history_p50_ms": "float64",
    "off_history": "boolean",
    "ref_config_id": "string",
    "ratio_to_ref": "float64",
    "ratio_ci_low": "float64",
    "ratio_ci_high": "float64",
    "rounds": "Int64",
    "round_ms": "string",
    "first_ms": "float64",
    "throughput_ips": "float64",
    "wall_s": "float64",
    "peak_rss_bytes": "Int64",
    "weight_bytes": "Int64",
    "artifact_bytes": "Int64",
    "device_mem_bytes": "Int64",
    "macs": "Int64",
    "params": "Int64",
    "contended": "boolean",
    "contention": "string",
    "load_avg": "float64",
    "other_cores": "float64",
    "steal_pct": "float64",
    "wait_pct": "float64",
    "cpu_mhz": "float64",
    "gpu_mhz": "float64",
    "temp_c": "float64",
    "throttle_events": "Int64",
    "speed_before_ms": "float64",
    "speed_after_ms": "float64",
    "speed_probes_ms": "string",
    "parallel_cpus": "float64",
    "quiet_wait_s": "float64",
    "cpus_awake": "boolean",
    "env_cpu": "string",
    "env_cores": "Int64",
    "env_threads": "Int64",
    "env_governor": "string",
    "env_host": "string",
    "env_runtime": "string",
    "env_runtime_version": "string",
    "env_libs": "string",
    "env_nvpmodel": "string",
    "env_jetson_clocks": "string",
}
# the dtypes themselves: as a string, "string" also equals pandas' "str" dtype, whose missing value is NaN
DTYPES = {column: pd.api.types.pandas_dtype(dtype) for column, dtype in SCHEMA.items()}
STATUSES = ("ok", "error", "timeout")


def _cell(value: Any) -> Any:
    """Caller metadata may hold dicts or lists (a WidthConfig as a dict): stored as JSON text."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def _conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Every schema column present with its dtype, in order; extra metadata columns after them."""
    frame = frame.copy()
    current = frame.dtypes
    for column, dtype in SCHEMA.items():
        if column not in current:
            missing = float("nan") if dtype == "float64" else pd.NA
            frame[column] = pd.Series([missing] * len(frame), dtype=dtype, index=frame.index)
        elif current[column] == DTYPES[column]:  # a table read back: converting cost 30 ms a row
            continue
        elif dtype == "float64":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif dtype == "Int64":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
        else:
            frame[column] = frame[column].astype(dtype)
    extras = [c for c in frame.columns if c not in SCHEMA]
    for column in extras:
        frame[column] = frame[column].map(_cell)
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return frame[list(SCHEMA) + extras].reset_index(drop=True)


@functools.cache
def _empty_table() -> pd.DataFrame:
    return _conform(pd.DataFrame())


def empty_latency() -> pd.DataFrame:
    """A table with the schema's columns and no rows: a copy (shaping one costs 50 ms; callers add to it)."""
    return _empty_table().copy()


def load_latency(out_dir: Path) -> pd.DataFrame:
    """The latency table under `out_dir` (an empty frame with the schema's columns when there is none)."""
    path = Path(out_dir) / PARQUET
    if not path.exists():
        return empty_latency()
    return _conform(pd.read_parquet(path))


def measured_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that were measured and succeeded (not errors, timeouts or roofline estimates)."""
    estimated = table["estimated"].fillna(False).astype(bool)
    return table[(table["status"] == "ok") & ~estimated]


def row_key(row: dict[str, Any] | pd.Series) -> tuple:
    return tuple(str(row[c]) if c != "batch" else int(row[c]) for c in KEY_COLUMNS)


class LatencyStore:
    """The results directory of one run: which keys are measured, and adding rows as they finish."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _locked(self):
        return locked(self.out_dir / ".latency.lock")

    def measured_keys(self) -> set[tuple]:
        """Keys with a measured `ok` row: an estimate is not a measurement, so it never skips a job."""
        return {
            row_key(row)
            for row in measured_rows(load_latency(self.out_dir))[list(KEY_COLUMNS)].to_dict("records")
        }

    def add(self, row: dict[str, Any]) -> None:
        """Merge one finished row (replacing an older row with the same key) and rewrite both files."""
        new = _conform(pd.DataFrame([{k: _cell(v) for k, v in row.items()}]))
        with self._locked():
            table = load_latency(self.out_dir)
            if len(table):
                key = row_key(row)
                table = table[[row_key(r) != key for r in table[list(KEY_COLUMNS)].to_dict("records")]]
                table = _conform(pd.concat([table, new], ignore_index=True)) if len(table) else new
            else:
                table = new
            with replacing(self.out_dir / PARQUET) as tmp:
                table.to_parquet(tmp, index=False)
            with replacing(self.out_dir / CSV) as tmp:
                table.to_csv(tmp, index=False)
