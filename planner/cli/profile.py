"""`planner profile`: export configurations, measure them on targets (local, SSH, Ray), store the rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from planner.cli import app, parse_widths
from planner.cli.targets import TargetsDirOption
from planner.errors import PlannerError
from planner.measure.targets import load_target

console = Console(stderr=True)


@app.command("profile")
def profile_command(
    target_names: Annotated[
        list[str], typer.Option("--target", "-t", help="Target name or alias (repeat for several).")
    ],
    model_name: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name (default: the checkpoint's model).")
    ] = None,
    widths: Annotated[
        list[str] | None,
        typer.Option("--widths", "-w", help="Widths, e.g. 0.25,0.5 (default: every trained width)."),
    ] = None,
    config_files: Annotated[
        list[Path] | None, typer.Option("--config", help="Width configuration JSON file (repeatable).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Weights; planner checkpoints also give the model.")
    ] = None,
    in_channels: Annotated[int | None, typer.Option(help="Input channels.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Output classes.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Input height and width.")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Reach the target over SSH at [user@]host[:port].")
    ] = None,
    targets_dir: TargetsDirOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory.")] = Path("out"),
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
    from planner.measure import profile as stage
    from profilers.jobs import Settings

    targets = [load_target(name, targets_dir) for name in target_names]
    if host is not None:
        if len(targets) != 1:
            raise PlannerError("--host names one device: give it with a single --target")
        targets = [targets[0].with_host(host)]
    if ray and host:
        raise PlannerError("--ray and --host exclude each other: Ray finds a fleet node by its target")
    if ray and estimate:
        raise PlannerError("--estimate needs no device: drop --ray")

    model = stage.build_model(
        model_name, checkpoint, in_channels=in_channels, num_classes=num_classes, input_size=input_size
    )
    configs = stage.configurations(model, parse_widths(widths), config_files)
    calibration = None
    if calibration_data is not None:
        from planner.measure.quantize import calibration_inputs

        shape = (1, model.in_channels, model.input_size, model.input_size)
        calibration = calibration_inputs(calibration_data, shape, calibration_size)
    if estimate:
        rows, skipped = stage.estimate_configs(model, configs, targets, out)
        for key in skipped:
            console.print(f"[yellow]{key}: OUT holds a measurement; the estimate is not stored[/yellow]")
        _summary(rows, out, estimated=True)
        return

    overrides = {"ci_rel": ci, "max_seconds": max_seconds, "min_queries": min_queries}
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

        rows = stage.profile_configs(
            model,
            configs,
            targets,
            out,
            settings=settings,
            force=force,
            ray_address=ray,
            weights=stage.weights_key(checkpoint),
            progress=progress,
            calibration=calibration,
            log=lambda line: bar.console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    _summary(rows, out, estimated=False)


def _summary(rows: pd.DataFrame, out: Path, estimated: bool) -> None:
    title = "estimated latency (roofline, not measured)" if estimated else "measured latency"
    rows = rows.sort_values(["target", "macs", "precision", "batch"]) if len(rows) else rows
    labels = [
        f"{width:g}x" if pd.notna(width) else f"layers:{config_id}"
        for width, config_id in zip(rows.get("width", []), rows.get("config_id", []), strict=True)
    ]
    table = Table(title=title)
    table.add_column("target", no_wrap=True)
    table.add_column("config", no_wrap=True, min_width=max(map(len, labels), default=6))
    table.add_column("precision")
    table.add_column("status")
    for column in ("p50 ms", "p90 ms", "95% CI of p50", "n", "MMACs", "peak MB"):
        table.add_column(column, justify="right")
    for label, (_, row) in zip(labels, rows.iterrows(), strict=True):
        interval = "-"
        if pd.notna(row.get("ci_low_ms")):
            interval = f"{row['ci_low_ms']:.3f}-{row['ci_high_ms']:.3f}"
        table.add_row(
            str(row["target"]),
            label,
            str(row["precision"]) + (f" b{int(row['batch'])}" if int(row["batch"]) != 1 else ""),
            str(row["status"]) if row["status"] == "ok" else f"{row['status']}: {row['error']}",
            _number(row.get("p50_ms"), 3),
            _number(row.get("p90_ms"), 3),
            interval,
            _number(row.get("n"), 0),
            _number(row["macs"] / 1e6 if pd.notna(row.get("macs")) else None, 1),
            _number(row["peak_rss_bytes"] / 2**20 if pd.notna(row.get("peak_rss_bytes")) else None, 1),
        )
    output = Console()
    output.print(table)
    output.print(f"{len(rows)} rows in {out / 'latency.parquet'}", soft_wrap=True)


def _number(value, digits: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"
