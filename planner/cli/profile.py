"""`planner profile`: export configurations, measure them on targets (local, SSH, Ray), store the rows."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from planner.cli import app
from planner.cli.options import (
    DEFAULT_RESULTS_DIR,
    ChannelMultipleOption,
    ConfigFilesOption,
    InChannelsOption,
    InputSizeOption,
    NumClassesOption,
    ResultsOption,
    TargetsDirOption,
    WidthsOption,
    parse_widths,
)
from planner.errors import PlannerError
from planner.measure.targets import load_target
from planner.plan.select import label as row_label

console = Console(stderr=True)


@app.command("profile")
def profile_command(
    target_names: Annotated[
        list[str], typer.Option("--target", "-t", help="Target name or alias (repeat for several).")
    ],
    model_name: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name (default: the checkpoint's model).")
    ] = None,
    widths: WidthsOption = None,
    config_files: ConfigFilesOption = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Weights; planner checkpoints also give the model.")
    ] = None,
    in_channels: InChannelsOption = None,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
    channel_multiple: ChannelMultipleOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Reach the target over SSH at [user@]host[:port].")
    ] = None,
    targets_dir: TargetsDirOption = None,
    out: ResultsOption = DEFAULT_RESULTS_DIR,
    force: Annotated[bool, typer.Option("--force", help="Measure again what OUT already holds.")] = False,
    ray: Annotated[
        str | None, typer.Option("--ray", help="Ray cluster address: profile on its target:<name> nodes.")
    ] = None,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Predict latency from the target's hardware figures instead.")
    ] = False,
    ci: Annotated[float | None, typer.Option(help="Stop at a median CI of +-this.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Time limit per configuration.")] = None,
    min_queries: Annotated[int | None, typer.Option(help="Inferences before stopping.")] = None,
    wait_quiet: Annotated[
        str | None,
        typer.Option("--wait-quiet", help="First wait up to this long (e.g. 2min) for a quiet machine."),
    ] = None,
    require_quiet: Annotated[
        bool, typer.Option("--require-quiet", help="Exit 1 when a row was measured on a busy machine.")
    ] = False,
    keep_cpus_awake: Annotated[
        bool,
        typer.Option(
            "--keep-cpus-awake",
            help="Hold idle CPUs out of their idle states while measuring (root: /dev/cpu_dma_latency).",
        ),
    ] = False,
    calibration_data: Annotated[
        str | None,
        typer.Option(
            "--calibration-data",
            help="Images that calibrate int8 quantization (a --data source: digits, a folder, an .npz).",
        ),
    ] = None,
    calibration_size: Annotated[
        int, typer.Option(help="Calibration images (from the data's calibration split).")
    ] = 128,
) -> None:
    """Profile configurations of a model on one or more targets and add the rows to OUT/latency.parquet.

    A target listing int8 among its precisions quantizes each configuration with --calibration-data
    first. The model is rebuilt from a planner checkpoint's recorded options; --in-channels, --num-classes and
    --input-size set them for a reference checkpoint or a fresh model. A re-run resumes: what OUT already
    holds is not measured again unless --force.
    """
    from planner.measure.artifacts import weights_key
    from planner.measure.profile import estimate_configs, profile_configs
    from planner.nn.build import build_model, configurations
    from planner.units import parse_wait_s
    from profilers.jobs import MAX_WAIT_QUIET_S, Settings

    wait_s = parse_wait_s(wait_quiet, MAX_WAIT_QUIET_S) if wait_quiet is not None else 0.0

    targets = [load_target(name, targets_dir) for name in target_names]
    if host is not None:
        if len(targets) != 1:
            raise PlannerError("--host names one device: give it with a single --target")
        targets = [targets[0].with_host(host)]
    if ray and host:
        raise PlannerError("--ray and --host exclude each other: Ray finds a fleet node by its target")
    if ray and estimate:
        raise PlannerError("--estimate needs no device: drop --ray")

    model = build_model(
        model_name,
        checkpoint,
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        channel_multiple=channel_multiple,
    )
    configs = configurations(model, parse_widths(widths), config_files)
    calibration = None
    if calibration_data is not None:
        from planner.measure.quantize import calibration_inputs

        shape = (1, model.in_channels, model.input_size, model.input_size)
        calibration = calibration_inputs(calibration_data, shape, calibration_size)
    if estimate:
        rows, skipped = estimate_configs(model, configs, targets, out)
        for key in skipped:
            console.print(f"[yellow]{key}: OUT holds a measurement; the estimate is not stored[/yellow]")
        _summary(rows, out, estimated=True)
        return

    overrides = {
        "ci_rel": ci,
        "max_seconds": max_seconds,
        "min_queries": min_queries,
        "wait_quiet_s": wait_s,
        "keep_cpus_awake": keep_cpus_awake,
    }
    settings = dataclasses.replace(Settings(), **{k: v for k, v in overrides.items() if v is not None})
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log file gets the summary, not bar frames
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(target: str, done: int, total: int) -> None:
            if target not in tasks:
                tasks[target] = bar.add_task(target, total=total)
            bar.update(tasks[target], completed=done, total=total)

        rows = profile_configs(
            model,
            configs,
            targets,
            out,
            settings=settings,
            force=force,
            ray_address=ray,
            weights=weights_key(checkpoint),
            progress=progress,
            calibration=calibration,
            log=lambda line: bar.console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    _summary(rows, out, estimated=False)
    _note_assumed_spread(rows)
    _warn_off_history(rows)
    if not _warn_contended(rows, wait_quiet) and require_quiet:
        raise typer.Exit(1)


def _note_assumed_spread(rows: pd.DataFrame) -> None:
    """One line when some intervals rest on an assumed run-to-run spread, not yet on this machine's own."""
    from profilers.history import BUSY, CROWDED, PRIOR_SIGMA, QUIET

    measured = rows[rows["status"] == "ok"] if len(rows) else rows
    if "spread_runs" not in measured or not len(measured):
        return
    assumed = measured[measured["spread_runs"].fillna(0) < 2]
    if len(assumed):
        quiet, busy, crowded = (PRIOR_SIGMA["p50_ms", state] for state in (QUIET, BUSY, CROWDED))
        console.print(
            f"note: {len(assumed)} of {len(measured)} intervals assume how far whole runs move apart "
            f"({quiet:.1%} quiet, {busy:.0%} busy, {crowded:.0%} crowded): this machine has no earlier runs "
            "of these jobs; "
            "re-runs (--force) measure its own spread",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


def _warn_off_history(rows: pd.DataFrame) -> None:
    """One line when rows moved further from their earlier runs than this machine's runs have."""
    from planner.measure.profile import off_history_note

    note = off_history_note(rows)
    if note is not None:
        console.print(
            f"[yellow]warning: {note}: the machine's state (or the job) changed; re-run (--force) before "
            "trusting them[/yellow]",
            soft_wrap=True,
        )


def _warn_contended(rows: pd.DataFrame, wait_quiet: str | None) -> bool:
    """One line when rows were measured on a busy machine; True when none was."""
    from planner.measure.profile import busy_rows_note

    note = busy_rows_note(rows)
    if note is None:
        return True
    if wait_quiet is None:
        advice = "re-run with --force --wait-quiet 5min, or when the machine is idle"
    else:
        advice = f"the machine did not stay quiet within --wait-quiet {wait_quiet}; measured anyway"
    console.print(
        f"[yellow]warning: {note}: {advice}[/yellow]",
        soft_wrap=True,
    )
    return False


def _summary(rows: pd.DataFrame, out: Path, estimated: bool, output: Console | None = None) -> None:
    """The rows as a table that fits an 80-column terminal: the interval as +-% of p50, errors below it."""
    title = "estimated latency (roofline, not measured)" if estimated else "measured latency"
    order = [column for column in ("target", "macs", "precision", "batch") if column in rows]
    rows = rows.sort_values(order) if len(rows) else rows
    labels = [row_label(row) for _, row in rows.iterrows()]
    cells, errors = [], []
    for label, (_, row) in zip(labels, rows.iterrows(), strict=True):
        interval = "-"
        if pd.notna(row.get("ci_low_ms")) and row.get("p50_ms", 0) > 0:
            interval = f"+-{(row['ci_high_ms'] - row['ci_low_ms']) / 2 / row['p50_ms']:.1%}"
        status = str(row["status"])
        if status != "ok":
            errors.append(f"{row['target']} {label}: {status}: {row['error']}")
        elif pd.notna(row.get("contended")) and bool(row.get("contended")):
            status = "busy"
        cells.append(
            (
                str(row["target"]),
                label,
                status,
                _ms(row.get("p50_ms")),
                interval,
                _ms(row.get("p90_ms")),
                _number(row.get("n"), 0),
                _number(row["macs"] / 1e6 if pd.notna(row.get("macs")) else None, 1),
                _number(row["peak_rss_bytes"] / 2**20 if pd.notna(row.get("peak_rss_bytes")) else None, 1),
            )
        )
    headers = ("target", "config", "status", "p50 ms", "95% CI", "p90 ms", "n", "MMACs", "peak MB")
    table = Table(title=title, box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold underline")
    for index, header in enumerate(headers):
        width = max([len(header), *(len(row[index]) for row in cells)])
        table.add_column(header, justify="left" if index < 3 else "right", no_wrap=True, min_width=width)
    for row in cells:
        table.add_row(*row)
    output = output or Console()
    output.print(table)
    for line in errors:
        output.print(line, markup=False, highlight=False)
    output.print(f"{len(rows)} rows in {out / 'latency.parquet'}", soft_wrap=True)


def _ms(value) -> str:
    """Four significant digits, at most three decimals: 1235, 12.35, 0.012."""
    if value is None or pd.isna(value):
        return "-"
    value = float(value)
    digits = 3 if value <= 0 else min(3, max(0, 3 - math.floor(math.log10(value))))
    return f"{value:.{digits}f}"


def _number(value, digits: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"
