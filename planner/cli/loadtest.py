"""`planner loadtest`: the ladder runtime under its own CPU interference, against every fixed width."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import app
from planner.errors import PlannerError
from planner.units import format_bytes, parse_duration_ms


@app.command("loadtest")
def loadtest_command(
    manifest: Annotated[Path, typer.Option("--manifest", "-m", help="Manifest (or its directory) to serve.")],
    interference: Annotated[
        str,
        typer.Option(
            "--interference",
            help="CPU-spinning phases, e.g. quiet:20s,spin2:20s,quiet:20s (at most one spinner per core).",
        ),
    ] = "quiet:20s,spin2:20s,quiet:20s",
    duration: Annotated[
        str | None, typer.Option("--duration", help="Length of each run, e.g. 60s (default: the schedule's).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Open loop: requests per second (default: closed loop).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Closed loop: callers back to back (default 1).")
    ] = None,
    budget: Annotated[
        str | None, typer.Option("--budget", help="Latency budget, e.g. 5ms (default: the manifest's).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Intra-op threads (default: the manifest target's).")
    ] = None,
    fixed: Annotated[bool, typer.Option("--fixed/--no-fixed", help="Also run each rung pinned.")] = True,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="Measure the ladder's resident memory.")
    ] = True,
    out_dir: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write loadtest.json, .csv and .png to.")
    ] = Path("loadtest"),
) -> None:
    """Serve the manifest's ladder under an interference schedule; per 1-s window p50/p90 vs the budget."""
    from planner.deploy.loadtest import run_loadtest

    if rate is not None and concurrency is not None:
        raise PlannerError("give --rate (open loop) or --concurrency (closed loop), not both")
    if threads is not None and threads < 0:
        raise PlannerError(f"--threads must be 0 (every core) or more, got {threads}")
    if out_dir.exists() and not out_dir.is_dir():
        raise PlannerError(f"--output {out_dir} is a file; give a directory")
    console = Console()
    result = run_loadtest(
        manifest,
        out_dir,
        interference,
        duration_s=None if duration is None else parse_duration_ms(duration) / 1e3,
        rate=rate,
        concurrency=1 if concurrency is None else concurrency,
        budget_ms=None if budget is None else parse_duration_ms(budget),
        fixed=fixed,
        memory=memory,
        threads=threads,
        say=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False),
    )
    report = result.report
    console.print(runs_table(report))
    for line in verdict_lines(report):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    for path in result.files:
        console.print(f"  wrote {path}", highlight=False, soft_wrap=True, markup=False)


def runs_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['metric']} budget {report['budget_ms']:.3f} ms, 1-s windows")
    for column in ("run", "requests", "p50 ms", "p90 ms", "windows within", "busy within", "top-1 served",
                   "switches"):  # fmt: skip
        table.add_column(column, justify="left" if column == "run" else "right")
    for run in report["runs"]:
        busy = run["busy_within_pct"]
        table.add_row(
            run["run"],
            str(run["requests"]),
            f"{run['p50_ms']:.3f}",
            f"{run['p90_ms']:.3f}",
            f"{run['windows_within_pct']:.0f}%",
            "-" if busy is None else f"{busy:.0f}%",
            f"{run['accuracy']:.2f}%",
            str(run["switches"]),
        )
    return table


def verdict_lines(report: dict[str, Any]) -> list[str]:
    verdict, cost = report["verdict"], report["switching_cost"]
    lines = [
        f"adaptive: within budget in {verdict['adaptive_within_pct']:.0f}% of windows "
        f"({'holds' if verdict['adaptive_holds'] else 'does NOT hold'} the budget in >= 95%), "
        f"top-1 served {verdict['adaptive_accuracy']:.2f}%"
    ]
    if verdict["best_fixed_holding"]:
        lines.append(
            f"most accurate fixed rung holding the budget: {verdict['best_fixed_holding']} "
            f"({verdict['best_fixed_holding_accuracy']:.2f}%)"
        )
    elif verdict["widest_fixed"]:
        lines.append("no fixed rung holds the budget in >= 95% of windows")
    wait = cost["decision_to_first_inference_ms"]["median"]
    if cost["switches"]:
        lines.append(
            f"{cost['switches']} switches; decision to first inference on the new rung: median {wait:.3f} ms"
        )
    memory = report.get("memory") or {}
    if "all_rungs_bytes" in memory:
        lines.append(
            f"memory: all rungs {format_bytes(memory['all_rungs_bytes'])}, neighbours "
            f"{format_bytes(memory['neighbours_bytes'])}, widest alone {format_bytes(memory['widest_bytes'])}"
        )
    elif "error" in memory:
        lines.append(f"memory not measured: {memory['error']}")
    return lines
