"""Budgets from the command line or the target's defaults, and selection for one target from the tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.plan.pareto import METRICS, candidates, read_tables
from planner.plan.select import Budget, Selection, select
from planner.units import parse_duration_ms, parse_rate_per_s, parse_size_bytes


def budget_for(
    target: Target,
    max_latency: str | None = None,
    max_memory: str | None = None,
    metric: str = "p90",
    min_throughput: str | None = None,
) -> Budget:
    """The budget from the given texts ("20ms", "64MB", "500/s"), falling back to the target's default
    budgets for latency and memory."""
    if metric not in METRICS:
        raise PlannerError(f"unknown --metric {metric!r}; use one of {', '.join(METRICS)}")
    if max_latency is not None:
        latency_ms = parse_duration_ms(max_latency)
    elif target.budgets.max_latency_ms is not None:
        latency_ms = target.budgets.max_latency_ms
    else:
        raise PlannerError(
            f"target {target.name!r} has no default latency budget; give --max-latency, e.g. 20ms"
        )
    if max_memory is not None:
        memory = parse_size_bytes(max_memory)
    elif target.budgets.max_memory_mb is not None:
        memory = int(target.budgets.max_memory_mb * 10**6)
    else:
        memory = None
    throughput = parse_rate_per_s(min_throughput) if min_throughput is not None else None
    return Budget(latency_ms, metric, memory, throughput)


def select_for_target(
    target: Target,
    budget: Budget,
    results_dir: Path,
    model: str | None = None,
    allow_estimates: bool = False,
    tables: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    significance: bool = True,
) -> Selection:
    """Select on `target` from the results directory's tables (or the already read `tables`); with
    `significance`, a faster candidate whose accuracy is not significantly lower is preferred."""
    latency, accuracy = tables if tables is not None else read_tables(results_dir)
    table = candidates(
        latency,
        accuracy,
        target.name,
        metric=budget.metric,
        model=model,
        allow_estimates=allow_estimates,
        results_dir=results_dir,
    )
    return select(table, budget, significance)
