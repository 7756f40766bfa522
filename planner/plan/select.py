"""The most accurate configuration under a budget, and the ladder of cheaper ones a runtime can step to.

`select()` is a pure function of the candidates table (planner.plan.pareto): a configuration fits when its
latency bound (the upper 95% bound of the median for p50, the measured value for p90/p99) and its
memory are within the budget. Among those, the most accurate wins, unless a faster one is not
significantly less accurate on the same images (McNemar's exact test on the per-image hits the accuracy
rows carry, p >= 0.05): then the fastest such one wins, and `Selection.significance_note` says why
(`significance=False` restores the plain argmax). For a universally slimmable model, `propose_width()`
interpolates the measured latencies over width (monotone PCHIP) to find the widest width that should
fit; a proposal is only a prediction until that width is measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from planner.plan.pareto import METRICS, pareto_mask
from planner.stats import SIGNIFICANCE, decode_hits, mcnemar_p
from planner.units import format_ms

# best first: most accurate, then fastest, then tightest bound, then smallest
_PREFERENCE = {
    "by": ["accuracy", "latency_ms", "bound_ms", "memory_bytes"],
    "ascending": [False, True, True, True],
}
# width resolution of a proposal for a universally slimmable model
WIDTH_STEP = 0.005


@dataclass(frozen=True)
class Budget:
    """What a configuration may cost on the target: latency (ms, of `metric`) and optionally memory."""

    max_latency_ms: float
    metric: str = "p90"
    max_memory_bytes: int | None = None
    min_throughput_ips: float | None = None  # images per second (a batch of b counts b images)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "metric": self.metric,
            "max_latency_ms": self.max_latency_ms,
            "max_memory_bytes": self.max_memory_bytes,
        }
        if self.min_throughput_ips is not None:
            data["min_throughput_ips"] = self.min_throughput_ips
        return data

    def describe(self) -> str:
        bound = "upper 95% bound of p50" if self.metric == "p50" else self.metric
        text = f"{bound} <= {format_ms(self.max_latency_ms)}"
        if self.max_memory_bytes is not None:
            text += f", memory <= {self.max_memory_bytes / 2**20:.4g} MiB"
        if self.min_throughput_ips is not None:
            text += f", throughput >= {self.min_throughput_ips:g}/s"
        return text


@dataclass(frozen=True)
class Proposal:
    """A width the interpolated latency says should fit; a prediction until `measured_bound_ms` is set."""

    width: float
    predicted_bound_ms: float
    measured_widths: tuple[float, ...]
    config_id: str | None = None
    measured_bound_ms: float | None = None

    def status(self, selection: Selection) -> str:
        if self.measured_bound_ms is None:
            return "needs measurement"
        if self.measured_bound_ms > selection.budget.max_latency_ms:
            return "measured: does not fit"
        choice = selection.choice
        if choice is not None and choice["config_id"] == self.config_id:
            return "accepted"
        if self.config_id not in set(selection.candidates["config_id"]):
            return "measured: fits, needs accuracy"
        return "measured: fits, not the most accurate"

    def to_dict(self, selection: Selection) -> dict[str, Any]:
        return {
            "width": self.width,
            "config_id": self.config_id,
            "predicted_bound_ms": self.predicted_bound_ms,
            "measured_bound_ms": self.measured_bound_ms,
            "measured_widths": list(self.measured_widths),
            "status": self.status(selection),
        }


@dataclass(frozen=True)
class Selection:
    """The outcome of `select()`: rows of the candidates table, best first."""

    budget: Budget
    candidates: pd.DataFrame
    fitting: pd.DataFrame
    ladder: pd.DataFrame
    fastest: pd.Series
    significance_note: str | None = None  # why a faster configuration beat the most accurate one

    @property
    def fits(self) -> bool:
        return not self.fitting.empty

    @property
    def choice(self) -> pd.Series | None:
        return self.fitting.iloc[0] if self.fits else None

    @property
    def runner_up(self) -> pd.Series | None:
        return self.fitting.iloc[1] if len(self.fitting) > 1 else None

    @property
    def margins(self) -> list[Margin]:
        """How close the choice, and the best candidate that just misses, are to the budget."""
        return budget_margins(self)

    @property
    def within_noise(self) -> bool:
        """A re-measurement could change the choice: a margin lies within the run-to-run spread."""
        return any(margin.within_noise for margin in self.margins)


@dataclass(frozen=True)
class Margin:
    """A configuration's distance to the latency budget against the spread a re-run would show.

    `margin` is (budget - bound) / budget: positive fits, negative misses. `spread` is the half-width of
    the row's 95% interval of p50 relative to p50 (the run-to-run spread, see docs/ARCHITECTURE.md);
    NaN when the row has no interval. `contended`: the row was measured on a busy machine (profilers.load),
    where runs differed by far more than any interval from inside one run (results/selection_stability.md).
    `history_move`: how far the row's p50 lay from its job's earlier runs on this machine when that was
    beyond their spread (`off_history`), else NaN; such a run caught the machine in another state, so a
    re-run may land elsewhere whatever its own interval says.
    """

    config_id: str
    label: str
    margin: float
    spread: float
    contended: bool = False
    history_move: float = math.nan

    @property
    def within_noise(self) -> bool:
        """Within the spread, measured on a busy machine, or off this machine's earlier runs: in the last two
        cases the next run may differ by any amount."""
        if self.contended or not math.isnan(self.history_move):
            return True
        return not math.isnan(self.spread) and abs(self.margin) <= self.spread

    def describe(self) -> str:
        verb = "fits" if self.margin >= 0 else "misses"
        text = f"{self.label} {verb} by {abs(self.margin):.1%}"
        if math.isnan(self.spread):
            text += " (no interval measured)"
        else:
            relation = "within" if abs(self.margin) <= self.spread else "beyond"
            text += f", {relation} the run-to-run spread (+-{self.spread:.1%})"
        if not math.isnan(self.history_move):
            how = "slower" if self.history_move > 0 else "faster"
            text += f", ran {abs(self.history_move):.0%} {how} than this machine's earlier runs of it"
        return text + (", measured on a busy machine" if self.contended else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "label": self.label,
            "margin": self.margin,
            "spread": None if math.isnan(self.spread) else self.spread,
            "contended": self.contended,
            "history_move": None if math.isnan(self.history_move) else self.history_move,
            "within_noise": self.within_noise,
            "text": self.describe(),
        }


def _margin(row: pd.Series, budget: Budget) -> Margin:
    low, high, p50 = (
        pd.to_numeric(row.get(k), errors="coerce") for k in ("ci_low_ms", "ci_high_ms", "p50_ms")
    )
    spread = float((high - low) / 2 / p50) if pd.notna(low) and pd.notna(high) and p50 > 0 else math.nan
    bound = float(row["bound_ms"])
    contended = row.get("contended")
    busy = bool(contended) if contended is not None and pd.notna(contended) else False
    margin = (budget.max_latency_ms - bound) / budget.max_latency_ms
    return Margin(str(row["config_id"]), label(row), margin, spread, busy, _history_move(row, p50))


def _history_move(row: pd.Series, p50: float) -> float:
    """p50 / the job's earlier median - 1 for a row marked off its earlier runs; NaN otherwise, and for
    tables written before rows carried the comparison."""
    off = row.get("off_history")
    earlier = pd.to_numeric(row.get("history_p50_ms"), errors="coerce")
    if off is None or pd.isna(off) or not bool(off) or pd.isna(earlier) or not earlier > 0 or pd.isna(p50):
        return math.nan
    return float(p50 / earlier - 1)


def budget_margins(selection: Selection) -> list[Margin]:
    """The choice's margin, and that of the most accurate candidate more accurate than it that misses
    the latency budget (only by latency: one that misses on memory is not near)."""
    budget = selection.budget
    out = []
    choice = selection.choice
    if choice is not None:
        out.append(_margin(choice, budget))
    table = selection.candidates
    fits_memory = (
        table["memory_bytes"].fillna(math.inf) <= budget.max_memory_bytes
        if budget.max_memory_bytes is not None
        else pd.Series(True, index=table.index)
    )
    missing = table[(table["bound_ms"] > budget.max_latency_ms) & fits_memory]
    if choice is not None:
        missing = missing[missing["accuracy"] > choice["accuracy"]]
    if len(missing):
        nearest = missing.sort_values("bound_ms", kind="stable").iloc[0]
        out.append(_margin(nearest, budget))
    return out


def fits_budget(table: pd.DataFrame, budget: Budget) -> pd.Series:
    """Rows within the budget; a row whose memory was not measured cannot be shown to fit a memory budget."""
    fits = table["bound_ms"] <= budget.max_latency_ms
    if budget.max_memory_bytes is not None:
        fits &= table["memory_bytes"].fillna(math.inf) <= budget.max_memory_bytes
    if budget.min_throughput_ips is not None:
        throughput = (
            table["throughput_ips"] if "throughput_ips" in table else pd.Series(math.nan, table.index)
        )
        fits &= pd.to_numeric(throughput, errors="coerce").fillna(0) >= budget.min_throughput_ips
    return fits.fillna(False).astype(bool)


def select(table: pd.DataFrame, budget: Budget, significance: bool = True) -> Selection:
    """Pick from a candidates table (pareto.candidates); ties in accuracy go to the lower latency, and
    so do differences the paired test cannot tell from noise unless `significance` is False."""
    if table.empty:
        raise ValueError("select() needs at least one candidate")
    fitting = table[fits_budget(table, budget)]
    fitting = fitting.sort_values(**_PREFERENCE, kind="stable").reset_index(drop=True)
    fastest = table.sort_values(["bound_ms", "accuracy"], ascending=[True, False], kind="stable").iloc[0]
    note = None
    if significance and len(fitting) > 1:
        fitting, note = _faster_within_noise(fitting)
    rungs = fitting
    if note is not None:
        choice = fitting.iloc[0]
        rungs = fitting[
            (fitting["latency_ms"] <= choice["latency_ms"]) & (fitting["accuracy"] <= choice["accuracy"])
        ]
    if len(rungs) and "batch" in rungs:  # a runtime feeds one static batch size: the choice's
        batches = pd.to_numeric(rungs["batch"], errors="coerce").fillna(1)
        rungs = rungs[batches == batches.iloc[0]]
    return Selection(budget, table, fitting, ladder(rungs), fastest, note)


def _faster_within_noise(fitting: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """`fitting` with the fastest configuration not significantly less accurate than the best moved first.

    Only rows scored on the same images as the best (same dataset, split and count, with hits stored)
    are compared; anything else keeps the plain order.
    """
    best = fitting.iloc[0]
    best_hits = _hits(best)
    if best_hits is None:
        return fitting, None
    faster = fitting[fitting["latency_ms"] < best["latency_ms"]].sort_values("latency_ms", kind="stable")
    for index, row in faster.iterrows():
        hits = _hits(row)
        same_images = all(row.get(key) == best.get(key) for key in ("accuracy_dataset", "accuracy_split"))
        if hits is None or not same_images or hits.shape != best_hits.shape:
            continue
        p = mcnemar_p(best_hits, hits)
        if p < SIGNIFICANCE:
            continue
        order = [index] + [i for i in fitting.index if i != index]
        note = (
            f"{label(row)} ({row['accuracy']:.2f}%, {format_ms(row['latency_ms'])}) is faster than "
            f"{label(best)} ({best['accuracy']:.2f}%, {format_ms(best['latency_ms'])}) and not significantly "
            f"less accurate on the same {len(hits)} images (McNemar exact p = {p:.2f}); "
            "--no-significance picks the most accurate"
        )
        return fitting.loc[order].reset_index(drop=True), note
    return fitting, None


def _hits(row: pd.Series) -> np.ndarray | None:
    n = row.get("accuracy_n")
    if n is None or pd.isna(n):
        return None
    return decode_hits(row.get("accuracy_hits", ""), int(n))


def ladder(fitting: pd.DataFrame) -> pd.DataFrame:
    """Configurations a runtime can step down to under load, fastest to most accurate.

    The accuracy-latency Pareto front of the fitting configurations (memory is already a constraint),
    so each rung is both slower and more accurate than the one below it; the top rung is the choice.
    `select` passes only rows of the choice's batch size: the runtime serves one static batch shape.
    """
    if fitting.empty:
        return fitting
    best_first = fitting.sort_values(**_PREFERENCE, kind="stable")
    rungs = best_first[pareto_mask(best_first["accuracy"].to_numpy(), best_first["latency_ms"].to_numpy())]
    rungs = rungs.drop_duplicates(["accuracy", "latency_ms"])
    return rungs.iloc[::-1].reset_index(drop=True)


def propose_width(table: pd.DataFrame, budget: Budget, width_range: tuple[float, float]) -> Proposal | None:
    """The widest unmeasured width of a universally slimmable model whose interpolated bound fits.

    Interpolates the latency bound of the measured uniform widths with PCHIP, which stays monotone
    where the measurements are and never overshoots between them; it does not extrapolate past the
    widest measured width. Returns None when no width wider than the widest fitting measured one is
    predicted to fit (the measured choice is then already the best).
    """
    from scipy.interpolate import PchipInterpolator  # here: importing it cost every command 0.7 s

    uniform = table[table["width"].notna()].groupby("width")["bound_ms"].max().sort_index()
    low, high = width_range
    uniform = uniform[(uniform.index >= low - 1e-9) & (uniform.index <= high + 1e-9)]
    if len(uniform) < 2:
        return None
    widths = uniform.index.to_numpy(dtype=float)
    curve = PchipInterpolator(widths, uniform.to_numpy(dtype=float), extrapolate=False)
    measured_fit = widths[uniform.to_numpy() <= budget.max_latency_ms]
    start = measured_fit.max() if measured_fit.size else widths[0]
    grid = np.arange(math.ceil(start / WIDTH_STEP) * WIDTH_STEP, widths[-1] + 1e-9, WIDTH_STEP)
    grid = grid[grid > start + 1e-9]
    if grid.size == 0:
        return None
    predicted = curve(grid)
    # widest width such that every width from the fitting one up to it is predicted to fit
    over = np.flatnonzero(~(predicted <= budget.max_latency_ms))
    last = (over[0] if over.size else grid.size) - 1
    if last < 0:
        return None
    width = round(float(grid[last]), 6)
    if any(abs(width - w) < 1e-9 for w in widths):
        return None
    return Proposal(width, float(predicted[last]), tuple(float(w) for w in widths))


def describe_row(row: pd.Series) -> dict[str, Any]:
    """A candidate as plain JSON-ready numbers (what `planner select --json` prints)."""

    def number(key: str) -> float | int | None:
        value = row.get(key)
        if value is None or pd.isna(value):
            return None
        integers = ("n", "macs", "params", "memory_bytes", "accuracy_n", "batch", "accuracy_batch")
        return int(value) if key in integers else float(value)

    width = row.get("width")
    return {
        "model": row["model"],
        "config_id": row["config_id"],
        "width": None if width is None or pd.isna(width) else float(width),
        "precision": row.get("precision") if isinstance(row.get("precision"), str) else "fp32",
        "batch": number("batch"),
        "throughput_ips": number("throughput_ips"),
        "accuracy_top1": number("accuracy"),
        "accuracy_ci": [number("accuracy_ci_low"), number("accuracy_ci_high")],
        "accuracy_images": number("accuracy_n"),
        "accuracy_runtime": row.get("accuracy_runtime") or None,
        "accuracy_batch": number("accuracy_batch"),
        "latency_ms": number("latency_ms"),
        "bound_ms": number("bound_ms"),
        **{key: number(key) for key in ("p50_ms", "p90_ms", "p99_ms", "ci_low_ms", "ci_high_ms", "n")},
        "memory_bytes": number("memory_bytes"),
        "macs": number("macs"),
        "params": number("params"),
        "estimated": bool(row.get("estimated", False)),
    }


def rung_key(row: pd.Series | Mapping[str, Any]) -> str:
    """A rung's identity: the configuration id, with the precision unless fp32 (`0b455aa42d-int8`) and the
    batch unless 1 (`-b8`): what a manifest's ladder and its exported files are keyed by."""
    key = str(row["config_id"])
    precision = row.get("precision")
    if isinstance(precision, str) and precision not in ("", "fp32"):
        key += f"-{precision}"
    batch = row.get("batch")
    if batch is not None and not pd.isna(batch) and int(batch) != 1:
        key += f"-b{int(batch)}"
    return key


def label(row: pd.Series) -> str:
    """How a person names a configuration: its width, or its id for a per-layer one."""
    width = row.get("width")
    name = f"{float(width):g}x" if width is not None and not pd.isna(width) else f"layers:{row['config_id']}"
    precision = row.get("precision")
    if isinstance(precision, str) and precision not in ("", "fp32"):
        name = f"{name} {precision}"
    batch = row.get("batch")
    return f"{name} b{int(batch)}" if batch is not None and not pd.isna(batch) and int(batch) != 1 else name
