"""The accuracy table: one row per (configuration, metric), beside the latency table in OUT/.

    accuracy_rows(model_name, results, dataset, split, checkpoint) -> DataFrame
    write_accuracy(out_dir, rows) -> Path
    load_accuracy(out_dir) -> DataFrame
    read_accuracy_csv(path) -> DataFrame

Rows join the latency rows on (model, config_id): the id is `WidthConfig.id`, the same hash
`planner profile` records. Writing upserts: a row replaces the stored row with the same key (a
re-evaluation), and both files are replaced atomically (temp file + os.replace) under a lock file, so a
reader never sees a half-written table and two writers never drop each other's rows. Columns are
documented in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import fcntl
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from profilers.files import replacing
from profilers.jobs import file_digest

COLUMNS = [
    "model",
    "config_id",
    "width",
    "config",
    "metric",
    "value",
    "dataset",
    "split",
    "checkpoint",
    "source",
    "timestamp",
]
KEY = ["model", "config_id", "metric", "dataset", "split", "checkpoint", "source"]
METRICS = ("top1", "top5")
PARQUET, CSV = "accuracy.parquet", "accuracy.csv"


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})
    return frame.astype({"width": float, "value": float})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checkpoint_digest(path: str | Path | None) -> str:
    """The first 12 hex digits of the checkpoint file's sha256 (empty without a checkpoint)."""
    return file_digest(Path(path))[:12] if path is not None else ""


def accuracy_rows(
    model_name: str, results: Sequence, dataset: str, split: str, checkpoint: str = ""
) -> pd.DataFrame:
    """Measured rows from `planner.accuracy.evaluate.ConfigAccuracy` results."""
    stamp = now()
    rows = [
        {
            "model": model_name,
            "config_id": result.config.id,
            "width": np.nan if result.config.width is None else result.config.width,
            "config": result.config.to_json(indent=None),
            "metric": metric,
            "value": value,
            "dataset": dataset,
            "split": split,
            "checkpoint": checkpoint,
            "source": "measured",
            "timestamp": stamp,
        }
        for result in results
        for metric, value in result.metrics().items()
    ]
    return _normalised(pd.DataFrame(rows, columns=COLUMNS))


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[COLUMNS].copy()
    frame["width"] = pd.to_numeric(frame["width"]).astype(float)
    frame["value"] = pd.to_numeric(frame["value"]).astype(float)
    for column in COLUMNS:
        if column not in ("width", "value"):
            frame[column] = frame[column].fillna("").astype(str)
    return frame.reset_index(drop=True)


def load_accuracy(out_dir: str | Path) -> pd.DataFrame:
    """The accuracy table under `out_dir` (empty, with the columns, when none was written yet)."""
    path = Path(out_dir) / PARQUET
    if not path.is_file():
        return _empty()
    try:
        return _normalised(pd.read_parquet(path))
    except (OSError, ValueError, KeyError) as error:
        raise PlannerError(f"cannot read accuracy table {path}: {str(error).splitlines()[0]}") from None


def write_accuracy(out_dir: str | Path, rows: pd.DataFrame) -> Path:
    """Upsert `rows` into OUT/accuracy.parquet and accuracy.csv; return the parquet path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PlannerError(f"cannot create output directory {out}: {error.strerror}") from None
    new = _normalised(rows)
    try:
        with open(out / ".accuracy.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = load_accuracy(out)
            kept = stored.merge(new[KEY].drop_duplicates(), on=KEY, how="left", indicator=True)
            kept = kept[kept["_merge"] == "left_only"].drop(columns="_merge")
            parts = [frame for frame in (kept, new) if len(frame)] or [_empty()]
            table = _normalised(pd.concat(parts, ignore_index=True))
            with replacing(out / PARQUET) as tmp:
                table.to_parquet(tmp, index=False)
            with replacing(out / CSV) as tmp:
                table.to_csv(tmp, index=False)
    except OSError as error:
        raise PlannerError(f"cannot write the accuracy table in {out}: {error.strerror}") from None
    return out / PARQUET


def read_accuracy_csv(path: str | Path) -> pd.DataFrame:
    """Accuracy measured elsewhere: columns model, width or config_id, metric, value (+ optional
    dataset, split, checkpoint). Width rows are resolved to config ids through the model registry."""
    from planner.models import create_model

    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype={"config_id": str, "model": str, "metric": str})
    except (OSError, ValueError) as error:
        raise PlannerError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    missing = [c for c in ("model", "metric", "value") if c not in raw.columns]
    if missing or not {"width", "config_id"} & set(raw.columns):
        need = ", ".join(missing) if missing else "width or config_id"
        raise PlannerError(f"{path} needs columns model, width or config_id, metric, value (missing: {need})")
    if raw.empty:
        raise PlannerError(f"{path} has no rows")
    models: dict = {}
    rows = []
    for number, record in enumerate(raw.to_dict("records"), start=2):
        where = f"{path}:{number}"
        metric = str(record["metric"]).strip().lower()
        if metric not in METRICS:
            raise PlannerError(
                f"{where}: metric must be one of {', '.join(METRICS)}, got {record['metric']!r}"
            )
        value = pd.to_numeric(record["value"], errors="coerce")
        if pd.isna(value) or not 0 <= value <= 100:
            raise PlannerError(f"{where}: value must be a percentage from 0 to 100, got {record['value']!r}")
        name = str(record["model"]).strip()
        if name not in models:
            models[name] = create_model(name)
        width = pd.to_numeric(record.get("width"), errors="coerce")
        config_id = record.get("config_id")
        if pd.notna(width):
            config = models[name].config(float(width))
            if isinstance(config_id, str) and config_id.strip() and config_id.strip() != config.id:
                raise PlannerError(f"{where}: config_id {config_id} is not width {width:g}'s ({config.id})")
            config_id, config_json = config.id, config.to_json(indent=None)
        elif isinstance(config_id, str) and config_id.strip():
            config_id, width, config_json = config_id.strip(), np.nan, ""
        else:
            raise PlannerError(f"{where}: give a width or a config_id")
        rows.append(
            {
                "model": name,
                "config_id": config_id,
                "width": width,
                "config": config_json,
                "metric": metric,
                "value": float(value),
                "dataset": _text(record.get("dataset")),
                "split": _text(record.get("split")),
                "checkpoint": _text(record.get("checkpoint")),
                "source": "imported",
                "timestamp": now(),
            }
        )
    return _normalised(pd.DataFrame(rows, columns=COLUMNS))


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
