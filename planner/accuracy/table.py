"""The accuracy table: one row per (configuration, metric), beside the latency table in OUT/.

    accuracy_rows(model_name, results, dataset, split, checkpoint) -> DataFrame
    write_accuracy(out_dir, rows) -> Path
    load_accuracy(out_dir) -> DataFrame
    planner.accuracy.imported.read_accuracy_csv(path) -> DataFrame   (accuracy measured elsewhere)

Rows join the latency rows on (model, config_id): the id is `WidthConfig.id`, the same hash
`planner profile` records. Writing upserts: a row replaces the stored row with the same key (a
re-evaluation), and both files are replaced atomically (temp file + os.replace) under a lock file, so a
reader never sees a half-written table and two writers never drop each other's rows. Columns are
documented in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from profilers.files import locked, replacing
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
    return normalised(pd.DataFrame(rows, columns=COLUMNS))


def normalised(frame: pd.DataFrame) -> pd.DataFrame:
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
        return normalised(pd.read_parquet(path))
    except (OSError, ValueError, KeyError) as error:
        raise PlannerError(f"cannot read accuracy table {path}: {str(error).splitlines()[0]}") from None


def write_accuracy(out_dir: str | Path, rows: pd.DataFrame) -> Path:
    """Upsert `rows` into OUT/accuracy.parquet and accuracy.csv; return the parquet path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PlannerError(f"cannot create output directory {out}: {error.strerror}") from None
    new = normalised(rows)
    try:
        with locked(out / ".accuracy.lock"):
            stored = load_accuracy(out)
            kept = stored.merge(new[KEY].drop_duplicates(), on=KEY, how="left", indicator=True)
            kept = kept[kept["_merge"] == "left_only"].drop(columns="_merge")
            parts = [frame for frame in (kept, new) if len(frame)] or [_empty()]
            table = normalised(pd.concat(parts, ignore_index=True))
            with replacing(out / PARQUET) as tmp:
                table.to_parquet(tmp, index=False)
            with replacing(out / CSV) as tmp:
                table.to_csv(tmp, index=False)
    except OSError as error:
        raise PlannerError(f"cannot write the accuracy table in {out}: {error.strerror}") from None
    return out / PARQUET
