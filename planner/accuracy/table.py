"""The accuracy table: one row per (configuration, metric), beside the latency table in OUT/.

    accuracy_rows(model_name, results, dataset, split, checkpoint) -> DataFrame
    write_accuracy(out_dir, rows) -> Path
    load_accuracy(out_dir) -> DataFrame
    planner.accuracy.imported.read_accuracy_csv(path) -> DataFrame   (accuracy measured elsewhere)

Rows join the latency rows on (model, config_id, precision): the id is `WidthConfig.id`, the same hash
`planner profile` records. `runtime` says where a row was scored: `torch` (the slimmable model in
torch, FP32, `target` empty) or a backend (`onnxruntime`, `openvino`) running the exact artifact a
target measured, at that target's `precision` and static `batch` (empty for torch and imported rows,
which stand for every batch size). Every row carries `n` (images), a 95% Wilson interval
(`ci_low`, `ci_high`, percent) and, for top-1, `hits`: which images were right, as a hex bitset
(planner.stats), so two rows scored on the same images can be compared pairwise. Tables written before
these columns load with them empty (`runtime` torch for measured rows, `precision` fp32; a runtime row
from before `batch` was recorded was scored on the batch-1 artifact and loads with batch 1).

Writing upserts: a row replaces the stored row with the same key (a re-evaluation), and both files are
replaced atomically (temp file + os.replace) under a lock file, so a reader never sees a half-written
table and two writers never drop each other's rows. Columns are documented in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.stats import encode_hits, wilson_interval
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
    "target",
    "precision",
    "runtime",
    "batch",
    "n",
    "ci_low",
    "ci_high",
    "hits",
]
KEY = [
    "model",
    "config_id",
    "metric",
    "dataset",
    "split",
    "checkpoint",
    "source",
    "target",
    "precision",
    "batch",
]
INTEGER = ("n", "batch")
NUMERIC = {"width": float, "value": float, "ci_low": float, "ci_high": float}
METRICS = ("top1", "top5")
PARQUET, CSV = "accuracy.parquet", "accuracy.csv"


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})
    return frame.astype({**NUMERIC, **dict.fromkeys(INTEGER, "Int64")})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checkpoint_digest(path: str | Path | None) -> str:
    """The first 12 hex digits of the checkpoint file's sha256 (empty without a checkpoint)."""
    return file_digest(Path(path))[:12] if path is not None else ""


def accuracy_rows(
    model_name: str,
    results: Sequence,
    dataset: str,
    split: str,
    checkpoint: str = "",
    *,
    target: str = "",
    precision: str = "fp32",
    runtime: str = "torch",
    batch: int | None = None,
) -> pd.DataFrame:
    """Measured rows from `ConfigAccuracy` results (torch's, or a runtime's: planner.accuracy.runtime, at
    the static `batch` of the artifact that was run)."""
    stamp = now()
    rows = []
    for result in results:
        for metric, value in result.metrics().items():
            n = int(result.samples)
            low, high = wilson_interval(round(value * n / 100.0), n)
            hits = getattr(result, "hits", None)
            rows.append(
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
                    "target": target,
                    "precision": precision,
                    "runtime": runtime,
                    "batch": batch,
                    "n": n,
                    "ci_low": low,
                    "ci_high": high,
                    "hits": encode_hits(hits) if metric == "top1" and hits is not None else "",
                }
            )
    return normalised(pd.DataFrame(rows, columns=COLUMNS))


def normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if "runtime" not in frame:  # a table from before runtimes: measured rows were scored in torch
        source = frame["source"] if "source" in frame else pd.Series("", index=frame.index)
        frame["runtime"] = np.where(source.astype(str) == "measured", "torch", "")
    if "batch" not in frame:  # runtime rows from before batches were scored on the batch-1 artifact
        target = frame["target"] if "target" in frame else pd.Series("", index=frame.index)
        frame["batch"] = np.where(target.fillna("").astype(str) != "", 1, np.nan)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = np.nan if column in NUMERIC or column in INTEGER else ""
    frame = frame[COLUMNS]
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in INTEGER:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    for column in COLUMNS:
        if column not in NUMERIC and column not in INTEGER:
            frame[column] = frame[column].astype(object).fillna("").astype(str)
    frame.loc[frame["precision"] == "", "precision"] = "fp32"
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
