"""Accuracy measured elsewhere (a paper, another pipeline), imported into the accuracy table.

Width rows are resolved to configuration ids through the model registry, so this module builds models
(torch); the table itself (planner.accuracy.table) stays torch-free for the planning stages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from planner.accuracy.table import COLUMNS, METRICS, normalised, now
from planner.errors import PlannerError


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
    return normalised(pd.DataFrame(rows, columns=COLUMNS))


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
