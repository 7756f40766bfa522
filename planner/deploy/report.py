"""The trade-off on each target, as people read it: Pareto plots (PNG and offline HTML) and a table.

Each target gets one panel: top-1 accuracy against latency, marker area proportional to memory, the
Pareto-optimal configurations joined by a line and labelled, the dominated ones greyed out, and the
latency budget as a dashed line. The table lists every candidate with its numbers and whether it is on
the front; it is written as CSV (for tools) and Markdown (for people).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.plan.pareto import candidates, front_mask, pareto_mask, read_tables
from planner.plan.select import label
from planner.units import format_ms
from profilers.files import replacing

PNG_NAME = "pareto.png"
HTML_NAME = "pareto.html"
CSV_NAME = "pareto.csv"
MARKDOWN_NAME = "pareto.md"
TABLE_COLUMNS = {
    "target": "target",
    "backend": "backend",
    "label": "config",
    "config_id": "id",
    "accuracy": "top-1 %",
    "p50_ms": "p50 ms",
    "ci_low_ms": "p50 CI low ms",
    "ci_high_ms": "p50 CI high ms",
    "p90_ms": "p90 ms",
    "p99_ms": "p99 ms",
    "memory_mib": "memory MiB",
    "macs": "MACs",
    "params": "params",
    "n": "n",
    "estimated": "estimated",
    "pareto": "Pareto",
}


@dataclass(frozen=True)
class Panel:
    """One target's candidates (planner.plan.pareto.candidates, p90) and its latency budget, if any."""

    target: str
    table: pd.DataFrame
    budget_ms: float | None = None


def front_flags(table: pd.DataFrame) -> pd.Series:
    """Pareto-optimal over accuracy, p90 latency and memory (a point may be there for its memory alone)."""
    return pd.Series(front_mask(table, "p90_ms"), index=table.index)


def summary_table(panels: list[Panel]) -> pd.DataFrame:
    """Every candidate of every panel, fastest first per target, with the Pareto flag."""
    frames = []
    for panel in panels:
        table = panel.table.assign(
            label=[label(row) for _, row in panel.table.iterrows()],
            memory_mib=panel.table["memory_bytes"] / 2**20,
            pareto=front_flags(panel.table),
        )
        frames.append(table.sort_values("p90_ms")[list(TABLE_COLUMNS)])
    return pd.concat(frames, ignore_index=True).rename(columns=TABLE_COLUMNS)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers to three significant digits)."""

    def cell(value: object) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else ""
        if isinstance(value, (float, np.floating)):
            return "-" if math.isnan(value) else f"{value:.4g}"
        if value is None or value is pd.NA:
            return "-"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _largest_memory(panels: list[Panel]) -> float:
    memory = np.concatenate([panel.table["memory_bytes"].to_numpy(dtype=float) for panel in panels])
    known = memory[np.isfinite(memory)]
    return float(known.max()) if known.size and known.max() > 0 else math.nan


def _marker_sizes(memory: pd.Series, reference: float, smallest: float, largest: float) -> np.ndarray:
    """Marker sizes proportional to memory on one scale for all panels (unknown memory: the smallest)."""
    values = memory.to_numpy(dtype=float)
    if not math.isfinite(reference):
        return np.full(values.shape, smallest)
    scaled = np.where(np.isfinite(values), np.clip(values / reference, 0, 1), 0.0)
    return smallest + (largest - smallest) * scaled


def plot_png(panels: list[Panel], path: Path, title: str) -> Path:
    """Matplotlib (Agg) figure with one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 4.8 * rows), squeeze=False)
    reference = _largest_memory(panels)
    for axis, panel in zip(axes.flat, panels, strict=False):
        table = panel.table.sort_values("p90_ms")
        on_front = front_flags(table).to_numpy()
        sizes = _marker_sizes(table["memory_bytes"], reference, 30, 400)
        x, y = table["p90_ms"].to_numpy(float), table["accuracy"].to_numpy(float)
        axis.scatter(x[~on_front], y[~on_front], s=sizes[~on_front], c="lightgrey", edgecolors="grey",
                     label="dominated", zorder=2)  # fmt: skip
        axis.scatter(x[on_front], y[on_front], s=sizes[on_front], c="tab:blue", edgecolors="navy",
                     alpha=0.8, label="Pareto-optimal", zorder=3)  # fmt: skip
        staircase = pareto_mask(y, x)
        axis.plot(x[staircase], y[staircase], color="tab:blue", linewidth=1, drawstyle="steps-post",
                  label="best accuracy within latency", zorder=1)  # fmt: skip
        for (_, row), optimal in zip(table.iterrows(), on_front, strict=True):
            axis.annotate(label(row), (row["p90_ms"], row["accuracy"]), textcoords="offset points",
                          xytext=(6, -12), fontsize=8, color="black" if optimal else "grey")  # fmt: skip
        if panel.budget_ms is not None:
            axis.axvline(panel.budget_ms, color="tab:red", linestyle="--", linewidth=1,
                         label=f"budget {format_ms(panel.budget_ms)}")  # fmt: skip
        backend = table["backend"].iloc[0]
        axis.set_title(f"{panel.target} ({backend})")
        axis.set_xlabel("p90 latency (ms)")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.grid(True, alpha=0.3)
        legend = axis.legend(loc="lower right", fontsize=8)
        for handle in legend.legend_handles:
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([40])
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(f"{title} (marker area: peak memory)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_html(panels: list[Panel], path: Path, title: str) -> Path:
    """Interactive Plotly page with plotly.js inline, so it opens offline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[panel.target for panel in panels])
    reference = _largest_memory(panels)
    for index, panel in enumerate(panels):
        row, column = index // columns + 1, index % columns + 1
        table = panel.table.sort_values("p90_ms").assign(on_front=lambda t: front_flags(t))
        table = table.assign(size=_marker_sizes(table["memory_bytes"], reference, 8, 40))
        for optimal, colour, name in (
            (False, "lightgrey", "dominated"),
            (True, "royalblue", "Pareto-optimal"),
        ):
            part = table[table["on_front"] == optimal]
            hover = [
                f"{label(r)} ({r['config_id']})<br>top-1 {r['accuracy']:.2f}%<br>p90 {r['p90_ms']:.3g} ms"
                f"<br>p50 {r['p50_ms']:.3g} ms [{r['ci_low_ms']:.3g}, {r['ci_high_ms']:.3g}]"
                f"<br>memory {r['memory_bytes'] / 2**20:.3g} MiB"
                for _, r in part.iterrows()
            ]
            figure.add_trace(
                go.Scatter(
                    x=part["p90_ms"],
                    y=part["accuracy"],
                    mode="markers+lines" if optimal else "markers",
                    marker={"size": part["size"], "color": colour, "line": {"width": 1, "color": "grey"}},
                    name=f"{panel.target}: {name}",
                    text=hover,
                    hoverinfo="text",
                ),
                row=row,
                col=column,
            )
        if panel.budget_ms is not None:
            figure.add_vline(x=panel.budget_ms, line_dash="dash", line_color="red", row=row, col=column)
        figure.update_xaxes(title_text="p90 latency (ms)", row=row, col=column)
        figure.update_yaxes(title_text="top-1 accuracy (%)", row=row, col=column)
    figure.update_layout(title=f"{title} (marker size: peak memory)", height=450 * rows)
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def write_report(panels: list[Panel], out_dir: Path, title: str) -> list[Path]:
    """PNG, HTML, CSV and Markdown under `out_dir`; returns their paths."""
    missing = [name for name in ("matplotlib", "plotly") if importlib.util.find_spec(name) is None]
    if missing:
        raise PlannerError(f"planner report needs {' and '.join(missing)}: pip install 'planner[report]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(panels)
    writers = {
        PNG_NAME: lambda path: plot_png(panels, path, title),
        HTML_NAME: lambda path: plot_html(panels, path, title),
        CSV_NAME: lambda path: table.to_csv(path, index=False),
        MARKDOWN_NAME: lambda path: path.write_text(f"# {title}\n\n" + markdown(table), encoding="utf-8"),
    }
    return [_write_atomically(out_dir / name, write) for name, write in writers.items()]


def build_report(
    results_dir: Path,
    report_dir: Path,
    *,
    targets: list[Target] | None = None,
    budget_ms: float | None = None,
    default_budget: Callable[[str], float | None] = lambda name: None,
    model: str | None = None,
    allow_estimates: bool = False,
    warn: Callable[[str], None] = lambda line: None,
) -> list[Path]:
    """`planner report`: one panel per target (the given ones, or every measured one) from RESULTS.

    A target asked for by name must have candidates; of the measured ones, those without are skipped
    with a warning. The budget line is `budget_ms`, else each target's default.
    """
    latency, accuracy = read_tables(results_dir)
    names = [target.name for target in targets] if targets else None
    if names is None:
        names = sorted(latency.loc[latency["status"] == "ok", "target"].dropna().unique())
    panels = []
    for name in dict.fromkeys(names):
        try:
            table = candidates(
                latency, accuracy, name, model=model, allow_estimates=allow_estimates, results_dir=results_dir
            )
        except PlannerError as error:
            if targets:
                raise
            warn(f"skipping {name}: {error}")
            continue
        panels.append(Panel(name, table, budget_ms if budget_ms is not None else default_budget(name)))
    if not panels:
        raise PlannerError(f"nothing to report in {results_dir}: no target has measured latency and accuracy")
    models = sorted({panel.table["model"].iloc[0] for panel in panels})
    return write_report(panels, report_dir, f"{', '.join(models)}: accuracy vs latency")


def _write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    with replacing(path) as tmp:
        write(tmp)
    return path
