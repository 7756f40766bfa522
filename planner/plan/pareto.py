"""Pareto front per target over accuracy (max), latency (min) and memory (min).

The solver reads only the results tables: `candidates()` joins the latency rows of one target with the
accuracy rows on `(model, config_id, precision, batch)` into one row per configuration, precision and
batch size (accuracy measured through the target's runtime on that very artifact first, torch's for fp32
otherwise; see `_top1`), and `pareto_mask()` marks the rows
no other row beats on all three objectives at once. Everything after this stage (select, manifest,
report) works on the candidates table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError

METRICS = ("p50", "p90", "p99")
ACCURACY_METRIC = "top1"
# Peak RSS of the same artifact moves by a few hundred KiB between runs: memory closer than this is a tie.
MEMORY_RESOLUTION_BYTES = 2**20


def pareto_mask(accuracy: np.ndarray, latency: np.ndarray, memory: np.ndarray | None = None) -> np.ndarray:
    """True for each point that no other point dominates (>= accuracy, <= latency, <= memory, one strict).

    Exact duplicates do not dominate each other, so all copies of a Pareto-optimal point are kept.
    NaN latency or accuracy never makes the front; NaN memory counts as unknown, i.e. worst.

    Runs in O(n log^2 n) with numpy only: points are sorted best accuracy first, so a point's possible
    dominators are exactly the points before it with latency and memory no larger. That prefix query is
    answered for all points at once by a bottom-up divide and conquer over the sorted order: at each of
    the log n levels every left half is merged with its right half by latency, and a running minimum of
    the left halves' memory (reset per block) tells each right-half point whether a left point beats it.
    10^5 points take well under a second.
    """
    accuracy = np.asarray(accuracy, dtype=float)
    latency = np.asarray(latency, dtype=float)
    memory = np.zeros_like(latency) if memory is None else np.asarray(memory, dtype=float)
    if not accuracy.shape == latency.shape == memory.shape or accuracy.ndim != 1:
        raise ValueError("accuracy, latency and memory must be 1-d arrays of the same length")
    mask = np.zeros(accuracy.shape, dtype=bool)
    valid = np.flatnonzero(np.isfinite(accuracy) & np.isfinite(latency))
    if valid.size == 0:
        return mask
    memory = np.where(np.isnan(memory), np.inf, memory)
    points = np.column_stack([-accuracy[valid], latency[valid], memory[valid]])
    order = np.lexsort(points.T[::-1])  # best accuracy first, then lowest latency, then lowest memory
    ordered = points[order]
    starts = np.ones(len(ordered), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group = np.cumsum(starts) - 1  # copies of one point share a group
    front = ~_dominated_by_earlier(ordered[starts])
    mask[valid[order]] = front[group]
    return mask


def _dominated_by_earlier(points: np.ndarray) -> np.ndarray:
    """For distinct rows sorted lexicographically (minimise all columns): is any earlier row <= this one?

    For distinct rows in lexicographic order every dominator of a row comes before it, and an earlier
    row with the second and third columns <= is a dominator (its first column is <= by the order).
    """
    n = len(points)
    latency_rank = np.unique(points[:, 1], return_inverse=True)[1].ravel()
    memory_rank = np.unique(points[:, 2], return_inverse=True)[1].ravel().astype(np.int64)
    position = np.arange(n, dtype=np.int64)
    dominated = np.zeros(n, dtype=bool)
    no_left = n  # larger than any memory rank: "no left point seen yet in this block"
    stride = n + 1  # block offsets keep the running minimum from leaking across blocks
    half = 1
    while half < n:
        block = position // (2 * half)
        is_right = (position % (2 * half)) >= half
        # within a block: by latency, left points before right points on equal latency
        order = np.argsort(block * (2 * n) + latency_rank * 2 + is_right, kind="quicksort")
        offset = (block[order].max() + 1 - block[order]) * stride
        left_memory = np.where(is_right[order], no_left, memory_rank[order]) + offset
        best_left = np.minimum.accumulate(left_memory) - offset
        right = is_right[order]
        dominated[order[right]] |= best_left[right] <= memory_rank[order[right]]
        half *= 2
    return dominated


def memory_bytes(latency: pd.DataFrame) -> pd.Series:
    """The memory a configuration costs on its device: GPU memory where measured, else peak RSS."""
    device = latency.get("device_mem_bytes", pd.Series(np.nan, index=latency.index))
    rss = latency.get("peak_rss_bytes", pd.Series(np.nan, index=latency.index))
    device = pd.to_numeric(device, errors="coerce").astype(float)
    return device.fillna(pd.to_numeric(rss, errors="coerce").astype(float))


def latency_bound(latency: pd.DataFrame, metric: str) -> pd.Series:
    """The latency a budget is checked against: the upper 95% bound of the median for p50, else the value.

    The table carries an interval for the median only; a p90/p99 value is compared as measured.
    """
    if metric not in METRICS:
        raise PlannerError(f"unknown latency metric {metric!r}; use one of {', '.join(METRICS)}")
    value = pd.to_numeric(latency[f"{metric}_ms"], errors="coerce")
    if metric == "p50":
        return pd.to_numeric(latency["ci_high_ms"], errors="coerce").fillna(value)
    return value


def candidates(
    latency: pd.DataFrame,
    accuracy: pd.DataFrame,
    target: str,
    *,
    metric: str = "p90",
    model: str | None = None,
    allow_estimates: bool = False,
    results_dir: Path | str = "DIR",
) -> pd.DataFrame:
    """One row per configuration measured on `target`: its latest ok latency row joined with its accuracy.

    Adds `accuracy` (top-1, percent), `latency_ms` (the chosen metric), `bound_ms` (what a budget is
    checked against) and `memory_bytes`. Raises a PlannerError naming the command that produces what
    is missing.
    """
    rows = latency[latency["target"] == target] if len(latency) else latency
    if rows.empty:
        raise PlannerError(
            f"no latency results for target {target!r} in {results_dir}; "
            f"run `planner profile --target {target} --model MODEL --out {results_dir}` first"
        )
    rows = rows[rows["status"] == "ok"]
    precision = column_of(rows, "precision", "fp32")
    rows = rows.assign(precision=precision.astype(object).fillna("fp32").astype(str))
    estimated = rows["estimated"].fillna(False).astype(bool)
    if not allow_estimates:
        if estimated.all() and len(rows):
            raise PlannerError(
                f"target {target!r} has only estimated latencies in {results_dir}; measure it with "
                f"`planner profile --target {target} --out {results_dir}` or pass --allow-estimates"
            )
        rows = rows[~estimated]
    if rows.empty:
        raise PlannerError(
            f"no successful latency measurements for target {target!r} in {results_dir} "
            f"(every row failed); re-run `planner profile --target {target} --out {results_dir}`"
        )
    models = sorted(rows["model"].unique())
    if model is not None:
        if model not in models:
            raise PlannerError(
                f"no latency results for model {model!r} on target {target!r}; measured models: "
                f"{', '.join(models)}"
            )
        rows = rows[rows["model"] == model]
    elif len(models) > 1:
        raise PlannerError(
            f"target {target!r} has results for several models ({', '.join(models)}); choose one with --model"
        )
    model = rows["model"].iloc[0]
    # a measurement beats an estimate of the same configuration; then the newest run wins
    rows = rows.assign(_estimated=rows["estimated"].fillna(False).astype(bool))
    rows = rows.sort_values(["_estimated", "timestamp"], ascending=[True, False], kind="stable")
    if "batch" not in rows:
        rows = rows.assign(batch=1)
    rows = rows.drop_duplicates(["model", "config_id", "precision", "batch"]).drop(columns="_estimated")

    rows = rows.assign(batch=pd.to_numeric(rows["batch"], errors="coerce").fillna(1).astype(int))
    scores = _top1(
        accuracy,
        model,
        results_dir,
        target,
        sorted(rows["precision"].unique()),
        sorted(rows["batch"].unique()),
    )
    joined = rows.merge(
        scores, on=["model", "config_id", "precision", "batch"], how="inner", validate="one_to_one"
    )
    if joined.empty:
        raise PlannerError(
            f"no accuracy for the configurations of {model} measured on {target!r}; run "
            f"`planner evaluate {model} --checkpoint CKPT --data DATA --out {results_dir}` first"
        )
    joined["estimated"] = joined["estimated"].fillna(False).astype(bool)
    joined["latency_ms"] = pd.to_numeric(joined[f"{metric}_ms"], errors="coerce")
    joined["bound_ms"] = latency_bound(joined, metric)
    joined["memory_bytes"] = memory_bytes(joined)
    joined.attrs["unscored"] = len(rows) - len(joined)
    joined.attrs["metric"] = metric
    return joined.sort_values(["bound_ms", "accuracy"], ascending=[True, False]).reset_index(drop=True)


def _top1(
    accuracy: pd.DataFrame,
    model: str,
    results_dir: Path | str,
    target: str,
    precisions: list[str],
    batches: list[int],
) -> pd.DataFrame:
    """The top-1 per (configuration, precision, batch) of `model` on `target`, for the latency `precisions`
    and `batches`.

    Best first: measured through this target's runtime at that precision on the artifact of that batch
    size (the file that ships), then the same at another batch size of the target (the same weights and
    graph with another static batch dimension: equal in exact arithmetic), then measured in torch (FP32),
    then imported; the newest of each. `accuracy_batch` says which batch was scored (empty for torch and
    imported rows). Torch's FP32 figure stands in for fp16/bf16 (TensorRT cannot be evaluated everywhere;
    `accuracy_runtime` says torch), never for int8: an int8 row with no accuracy through the runtime
    stays unscored.
    """
    rows = (
        accuracy[(accuracy["model"] == model) & (accuracy["metric"] == ACCURACY_METRIC)]
        if len(accuracy)
        else accuracy
    )
    if rows.empty:
        raise PlannerError(
            f"no accuracy results for {model} in {results_dir}; run `planner evaluate {model} "
            f"--checkpoint CKPT --data DATA --out {results_dir}` (or `planner accuracy import FILE.csv`)"
        )
    target_column = column_of(rows, "target")
    precision = column_of(rows, "precision", "fp32")
    rows = rows.assign(precision=precision.astype(object).replace("", "fp32").fillna("fp32").astype(str))
    precision = rows["precision"]
    on_target = target_column == target
    reference = (target_column == "") & (precision == "fp32")
    rank = np.where(on_target, 0, np.where(rows["source"] == "measured", 1, 2))
    rows = rows.assign(_rank=rank)[on_target | reference]
    stand_ins = [
        rows[rows["_rank"] > 0].assign(precision=other)
        for other in precisions
        if other not in ("fp32", "int8")
    ]
    rows = pd.concat([rows, *stand_ins], ignore_index=True) if stand_ins else rows
    scored_batch = pd.to_numeric(column_of(rows, "batch", np.nan), errors="coerce").astype(float)
    rows = rows.assign(_scored_batch=scored_batch)
    per_batch = []
    for batch in batches:
        other_batch = (rows["_rank"] == 0) & (rows["_scored_batch"] != batch)
        per_batch.append(rows.assign(batch=batch, _rank=np.where(other_batch, 0.5, rows["_rank"])))
    rows = pd.concat(per_batch, ignore_index=True)
    rows = rows.sort_values(["_rank", "timestamp"], ascending=[True, False], kind="stable")
    rows = rows.drop_duplicates(["model", "config_id", "precision", "batch"])

    return pd.DataFrame(
        {
            "model": rows["model"],
            "config_id": rows["config_id"],
            "precision": column_of(rows, "precision", "fp32"),
            "batch": rows["batch"].astype(int),
            "accuracy_batch": rows["_scored_batch"].astype("Int64"),
            "accuracy": pd.to_numeric(rows["value"], errors="coerce"),
            "accuracy_dataset": rows["dataset"],
            "accuracy_split": rows["split"],
            "accuracy_checkpoint": rows["checkpoint"],
            "accuracy_source": rows["source"],
            "accuracy_runtime": column_of(rows, "runtime"),
            "accuracy_n": pd.to_numeric(column_of(rows, "n", np.nan), errors="coerce"),
            "accuracy_ci_low": pd.to_numeric(column_of(rows, "ci_low", np.nan), errors="coerce"),
            "accuracy_ci_high": pd.to_numeric(column_of(rows, "ci_high", np.nan), errors="coerce"),
            "accuracy_hits": column_of(rows, "hits"),
        }
    )


def column_of(frame: pd.DataFrame, name: str, default: object = "") -> pd.Series:
    """A column of a table that may predate it, else `default` on every row."""
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def comparable_memory(memory: pd.Series) -> np.ndarray:
    """Memory in units of MEMORY_RESOLUTION_BYTES, so measurement noise does not make a point optimal."""
    return np.round(pd.to_numeric(memory, errors="coerce").to_numpy(dtype=float) / MEMORY_RESOLUTION_BYTES)


def front_mask(table: pd.DataFrame, latency_column: str = "latency_ms") -> np.ndarray:
    """Pareto-optimal rows of a candidates table over accuracy, latency and memory (at MiB resolution)."""
    return pareto_mask(
        table["accuracy"].to_numpy(dtype=float),
        table[latency_column].to_numpy(dtype=float),
        comparable_memory(table["memory_bytes"]),
    )


def front(table: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal rows of a candidates table, fastest first."""
    mask = front_mask(table)
    return table[mask].sort_values(["latency_ms", "accuracy"], ascending=[True, False]).reset_index(drop=True)


def read_tables(results_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latency and accuracy tables under a results directory (`--out` of profile and evaluate)."""
    from planner.accuracy.table import load_accuracy
    from profilers.results import load_latency

    results_dir = Path(results_dir)
    if not any((results_dir / f"latency.{suffix}").is_file() for suffix in ("parquet",)):
        raise PlannerError(
            f"no latency results in {results_dir}; run `planner profile --target TARGET --model MODEL "
            f"--out {results_dir}` first (or pass the directory it wrote with --results)"
        )
    if not any((results_dir / f"accuracy.{suffix}").is_file() for suffix in ("parquet",)):
        raise PlannerError(
            f"no accuracy results in {results_dir}; run `planner evaluate MODEL --checkpoint CKPT "
            f"--data DATA --out {results_dir}` (or `planner accuracy import FILE.csv`) first"
        )
    return load_latency(results_dir), load_accuracy(results_dir)
