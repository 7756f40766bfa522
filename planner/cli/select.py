"""`planner select`, `planner manifest`, `planner report`: from the results tables to what ships."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from planner.cli import app
from planner.cli.options import DEFAULT_RESULTS_DIR, ResultsOption, TargetsDirOption
from planner.errors import PlannerError
from planner.measure.targets import Target, load_target
from planner.plan.budgets import budget_for
from planner.plan.select import Proposal, Selection, describe_row, label
from planner.units import format_bytes, format_interval, format_ms, parse_duration_ms
from planner.workflows import select_on_target, write_manifests

MaxLatencyOption = Annotated[
    str | None,
    typer.Option("--max-latency", help="Latency budget with a unit, e.g. 20ms (default: the target's)."),
]
MaxMemoryOption = Annotated[
    str | None, typer.Option("--max-memory", help="Memory budget with a unit, e.g. 64MB or 1GiB.")
]
MetricOption = Annotated[
    str, typer.Option("--metric", help="Latency statistic the budget applies to: p50, p90, p99.")
]
MinThroughputOption = Annotated[
    str | None,
    typer.Option("--min-throughput", help="Images per second at least, e.g. 500/s (batched rows count b)."),
]
ModelOption = Annotated[str | None, typer.Option("--model", help="Model, when the results hold several.")]
EstimatesOption = Annotated[
    bool, typer.Option("--allow-estimates", help="Also consider roofline estimates (never mixed silently).")
]


@app.command("select")
def select_command(
    target_name: Annotated[
        str, typer.Option("--target", "-t", help="Target to select for (see planner targets).")
    ],
    max_latency: MaxLatencyOption = None,
    max_memory: MaxMemoryOption = None,
    metric: MetricOption = "p90",
    results_dir: ResultsOption = DEFAULT_RESULTS_DIR,
    model: ModelOption = None,
    allow_estimates: EstimatesOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the choice as JSON.")] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure", help="US models: measure the proposed width before accepting it."
        ),
    ] = True,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Weights to export a proposed width with.")
    ] = None,
    max_seconds: Annotated[
        float | None, typer.Option("--max-seconds", help="Time limit for measuring a proposed width.")
    ] = None,
    targets_dir: TargetsDirOption = None,
    no_significance: Annotated[
        bool,
        typer.Option(
            "--no-significance",
            help="Take the most accurate even when a faster one is not significantly worse (McNemar).",
        ),
    ] = False,
    min_throughput: MinThroughputOption = None,
) -> None:
    """The most accurate configuration whose latency upper bound fits the budget (exit 1 if none fits).

    A faster configuration that is not significantly less accurate on the same images (McNemar's exact
    test, p >= 0.05) is preferred, and the output says so; --no-significance turns that off.

    For a universally slimmable model the widest width predicted to fit (monotone interpolation over
    the measured widths) is measured on the target and accepted only if it fits and has an accuracy.
    """
    target = load_target(target_name, targets_dir)
    budget = budget_for(target, max_latency, max_memory, metric, min_throughput)
    chosen = select_on_target(
        target,
        budget,
        results_dir,
        model=model,
        allow_estimates=allow_estimates,
        measure=measure,
        checkpoint=checkpoint,
        max_seconds=max_seconds,
        significance=not no_significance,
        log=Console(stderr=True).print,
    )
    selection, proposal = chosen.selection, chosen.proposal
    if as_json:
        typer.echo(json.dumps(selection_json(target, selection, proposal, results_dir), indent=2))
    else:
        print_selection(Console(), target, selection, proposal, results_dir)
    if not selection.fits:
        raise typer.Exit(1)


def selection_json(
    target: Target, selection: Selection, proposal: Proposal | None, results_dir: Path
) -> dict[str, Any]:
    choice, runner_up = selection.choice, selection.runner_up
    return {
        "target": target.name,
        "backend": target.backend,
        "device": target.device,
        "precision": target.precision,
        "model": selection.candidates["model"].iloc[0],
        "budget": selection.budget.to_dict(),
        "fits": selection.fits,
        "choice": describe_row(choice) if choice is not None else None,
        "runner_up": describe_row(runner_up) if runner_up is not None else None,
        "fastest": describe_row(selection.fastest),
        "ladder": [describe_row(row) for _, row in selection.ladder.iterrows()],
        "proposal": _proposal_json(target, selection, proposal, results_dir),
        "within_noise": selection.within_noise,
        "margins": [margin.to_dict() for margin in selection.margins],
        "candidates": len(selection.candidates),
        "unscored": int(selection.candidates.attrs.get("unscored", 0)),
        "significance_note": selection.significance_note,
    }


def _proposal_json(
    target: Target, selection: Selection, proposal: Proposal | None, results_dir: Path
) -> dict[str, Any] | None:
    if proposal is None:
        return None
    return {
        **proposal.to_dict(selection),
        "commands": _measure_commands(target, selection, proposal, results_dir),
    }


def _measure_commands(
    target: Target, selection: Selection, proposal: Proposal, results_dir: Path
) -> list[str]:
    """What a user still has to run before the proposal can be accepted."""
    model, width = selection.candidates["model"].iloc[0], f"{proposal.width:g}"
    status = proposal.status(selection)
    commands = []
    if status == "needs measurement":
        commands.append(
            f"planner profile --target {target.name} --model {model} --widths {width} --out {results_dir}"
        )
    if status in ("needs measurement", "measured: fits, needs accuracy"):
        commands.append(
            f"planner evaluate {model} --checkpoint CKPT --data DATA --widths {width} --out {results_dir}"
        )
    return commands


def _print_unsettled(console: Console, selection: Selection, where: str = "") -> None:
    """One line per budget margin a re-measurement could overturn (issue 14: never flip silently)."""
    for margin in selection.margins:
        if margin.within_noise:
            console.print(f"[yellow]{where}unsettled[/]: {margin.describe()}; a re-run may choose otherwise")


def print_selection(
    console: Console, target: Target, selection: Selection, proposal: Proposal | None, results_dir: Path
) -> None:
    model = selection.candidates["model"].iloc[0]
    console.print(
        f"[bold]{model}[/] on [bold]{target.name}[/] ({target.backend} {target.device} "
        f"{', '.join(target.planned_precisions)}); "
        f"budget: {selection.budget.describe()}; {len(selection.candidates)} measured configurations"
    )
    unscored = int(selection.candidates.attrs.get("unscored", 0))
    if unscored:
        console.print(f"[yellow]{unscored} measured configurations have no accuracy and were left out[/]")
    rows = [("choice", selection.choice), ("runner-up", selection.runner_up)]
    if not selection.fits:
        console.print(
            f"[red]nothing fits[/]: no configuration meets {selection.budget.describe()}; "
            f"the fastest is {label(selection.fastest)}"
        )
        rows = [("fastest", selection.fastest)]
    console.print(candidate_table(rows, selection.budget.metric))
    _print_unsettled(console, selection)
    if selection.significance_note:
        console.print(f"within noise: {selection.significance_note}", highlight=False)
    if selection.fits and len(selection.ladder) > 1:
        steps = " -> ".join(label(row) for _, row in selection.ladder.iterrows())
        console.print(f"ladder (fastest to most accurate): {steps}")
    if proposal is not None:
        measured = (
            ""
            if proposal.measured_bound_ms is None
            else f", measured {format_ms(proposal.measured_bound_ms)}"
        )
        console.print(
            f"proposal: width {proposal.width:g} (interpolated bound {format_ms(proposal.predicted_bound_ms)}"
            f"{measured}): {proposal.status(selection)}"
        )
        for command in _measure_commands(target, selection, proposal, results_dir):
            console.print(f"  {command}", soft_wrap=True, highlight=False)


def candidate_table(rows: list[tuple[str, pd.Series | None]], metric: str) -> Table:
    """choice / runner-up / fastest side by side, one line per number a budget is decided on."""
    rows = [(name, row) for name, row in rows if row is not None]
    bound = "p50 upper 95% bound" if metric == "p50" else f"{metric} (compared)"
    lines = {
        "configuration": lambda r: f"{label(r)} ({r['config_id']})",
        "top-1 accuracy": lambda r: _number(r["accuracy"], "{:.2f}%"),
        "top-1 95% interval": lambda r: (
            f"{_number(r.get('accuracy_ci_low'), '{:.1f}')}-{_number(r.get('accuracy_ci_high'), '{:.1f}')}% "
            f"of {_number(r.get('accuracy_n'), '{:.0f}')} ({_scored_by(r)})"
        ),
        bound: lambda r: format_ms(r["bound_ms"]),
        "p50 [95% CI]": lambda r: format_interval(r["p50_ms"], r["ci_low_ms"], r["ci_high_ms"]),
        "p90 / p99": lambda r: f"{format_ms(r['p90_ms'])} / {format_ms(r['p99_ms'])}",
        "memory": lambda r: format_bytes(r["memory_bytes"]),
        "MACs / params": lambda r: (
            f"{_number(r.get('macs'), '{:,.0f}')} / {_number(r.get('params'), '{:,.0f}')}"
        ),
        "inferences timed": lambda r: _number(r.get("n"), "{:.0f}"),
    }
    table = Table()
    table.add_column("")
    for name, row in rows:
        table.add_column(name + (" (estimate)" if bool(row.get("estimated", False)) else ""))
    for title, show in lines.items():
        table.add_row(title, *(show(row) for _, row in rows))
    return table


def _scored_by(row: pd.Series) -> str:
    """The runtime that scored a row's accuracy, and the batch size when it was another one's file."""
    runtime = row.get("accuracy_runtime") or "torch"
    scored, batch = row.get("accuracy_batch"), row.get("batch")
    if scored is None or pd.isna(scored) or batch is None or pd.isna(batch) or int(scored) == int(batch):
        return runtime
    return f"{runtime}, scored at batch {int(scored)}"


def _number(value: Any, pattern: str = "{:.3g}") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return pattern.format(value) if math.isfinite(value) else "-"


@app.command("manifest")
def manifest_command(
    target_names: Annotated[
        list[str], typer.Option("--target", "-t", help="Target to write a manifest for (repeatable).")
    ],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="Trained weights to ship (the ones evaluated).")
    ],
    deploy_dir: Annotated[
        Path, typer.Option("--output", "-o", help="Deployment directory: one folder per target.")
    ] = Path("deploy"),
    max_latency: MaxLatencyOption = None,
    max_memory: MaxMemoryOption = None,
    metric: MetricOption = "p90",
    results_dir: ResultsOption = DEFAULT_RESULTS_DIR,
    model: ModelOption = None,
    allow_estimates: EstimatesOption = False,
    targets_dir: TargetsDirOption = None,
    min_throughput: MinThroughputOption = None,
) -> None:
    """Per target, the chosen configuration's artifact and a JSON manifest with the ladder to step down on
    (every rung at the choice's batch size)."""
    targets = [load_target(name, targets_dir) for name in target_names]
    budgets = [budget_for(target, max_latency, max_memory, metric, min_throughput) for target in targets]
    deployed = write_manifests(
        targets, budgets, checkpoint, results_dir, deploy_dir, model=model, allow_estimates=allow_estimates
    )
    console = Console()
    for entry in deployed:
        selection = entry.selection
        if entry.manifest is None:
            budget = selection.budget
            console.print(f"[red]{entry.target.name}: nothing fits[/] {budget.describe()}; fastest:")
            console.print(candidate_table([("fastest", selection.fastest)], budget.metric))
            continue
        rungs = ", ".join(label(row) for _, row in selection.ladder.iterrows())
        console.print(
            f"{entry.target.name}: {label(selection.choice)} -> {entry.manifest} (ladder: {rungs})",
            highlight=False,
            soft_wrap=True,
        )
        _print_unsettled(console, selection, f"{entry.target.name}: ")
    if any(entry.manifest is None for entry in deployed):
        raise typer.Exit(1)


@app.command("report")
def report_command(
    target_names: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Targets to plot (default: every measured one)."),
    ] = None,
    report_dir: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the plots and tables.")
    ] = Path("report"),
    results_dir: ResultsOption = DEFAULT_RESULTS_DIR,
    max_latency: Annotated[
        str | None, typer.Option("--max-latency", help="Budget line to draw (default: each target's).")
    ] = None,
    model: ModelOption = None,
    allow_estimates: EstimatesOption = False,
    targets_dir: TargetsDirOption = None,
) -> None:
    """Pareto plots per target (PNG and offline HTML) and a table of every configuration (CSV, Markdown)."""
    from planner.deploy.report import build_report

    budget_ms = parse_duration_ms(max_latency) if max_latency is not None else None
    targets = [load_target(name, targets_dir) for name in target_names] if target_names else None
    console = Console()
    paths = build_report(
        results_dir,
        report_dir,
        targets=targets,
        budget_ms=budget_ms,
        default_budget=lambda name: _default_budget(name, targets_dir),
        model=model,
        allow_estimates=allow_estimates,
        warn=lambda line: console.print(f"[yellow]{line}[/]"),
    )
    for path in paths:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def _default_budget(name: str, targets_dir: Path | None) -> float | None:
    try:
        return load_target(name, targets_dir).budgets.max_latency_ms
    except PlannerError:  # results of a target whose file is not here: plot without a budget line
        return None
