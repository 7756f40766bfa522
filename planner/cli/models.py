"""Commands of the model core: `planner models`, `planner info`, `planner export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import app
from planner.cli.options import InChannelsOption, InputSizeOption, NumClassesOption, parse_widths

console = Console()


@app.command("models")
def models_command() -> None:
    """List the registered models."""
    from planner.models import create_model, list_models

    table = Table("model", "trained widths", "input", "classes")
    for name in list_models():
        model = create_model(name)
        widths = model.widths
        shown = (
            f"{widths[0]:g} … {widths[-1]:g} (any)"
            if model.universal
            else ", ".join(f"{w:g}" for w in widths)
        )
        table.add_row(
            name, shown, f"{model.in_channels}x{model.input_size}x{model.input_size}", str(model.num_classes)
        )
    console.print(table)


@app.command("info")
def info_command(
    model_name: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="Registered model, or torchvision:NAME, timm:NAME, FILE.py:FN."),
    ],
    widths: Annotated[
        list[str] | None,
        typer.Option("--widths", "-w", help="Widths to show, e.g. 0.25,0.5 (a converted network's widths)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
) -> None:
    """Channels, MACs and params of each width (the reference's counting convention)."""
    from planner.models.sources import is_source
    from planner.nn.build import build_model
    from planner.nn.counting import count, layer_channels

    shown = parse_widths(widths)
    converted = shown if is_source(model_name) else None  # a source is converted at the widths shown
    model = build_model(model_name, widths=converted, num_classes=num_classes, input_size=input_size)
    rows = []
    for width in shown or model.widths:
        config = model.config(width)
        cost = count(model, config)
        rows.append(
            {
                "width": width,
                "config_id": config.id,
                "macs": cost.macs,
                "params": cost.params,
                "channels": layer_channels(model, config),
            }
        )
    if as_json:
        typer.echo(
            json.dumps({"model": model.name, "input_size": model.input_size, "widths": rows}, indent=2)
        )
        return
    table = Table(
        "width", "config id", "MACs (M)", "params (M)", "channels (first 8 layers)", title=model.name
    )
    for row in rows:
        channels = ", ".join(str(c) for c in row["channels"][:8]) + (" …" if len(row["channels"]) > 8 else "")
        table.add_row(
            f"{row['width']:g}",
            row["config_id"],
            f"{row['macs'] / 1e6:.1f}",
            f"{row['params'] / 1e6:.3f}",
            channels,
        )
    console.print(table)


@app.command("export")
def export_command(
    model_name: Annotated[str, typer.Argument(metavar="MODEL")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    width: Annotated[float | None, typer.Option("--width", help="Uniform width.")] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Per-layer configuration JSON.")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to load.")] = None,
    fold_bn: Annotated[bool, typer.Option("--fold-bn", help="Fold BatchNorm into the convs.")] = False,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
    in_channels: InChannelsOption = None,
) -> None:
    """Write one configuration as a single-file, static-shape ONNX holding only its sliced weights."""
    from planner.nn.build import build_model, one_configuration
    from planner.nn.counting import count
    from planner.nn.export import export_onnx

    model = build_model(
        model_name, checkpoint, num_classes=num_classes, input_size=input_size, in_channels=in_channels
    )
    config = one_configuration(model, width, config_file)
    if model.needs_calibration(config) and config.id not in model.calibrations:
        console.print(
            "[yellow]note:[/] this per-layer configuration has no trained BN statistics; it borrows the "
            "nearest width's until calibrated (planner calibrate)",
            highlight=False,
        )
    path = export_onnx(model, config, output, fold_bn=fold_bn)
    cost = count(model, config)
    console.print(
        f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {model.name} {config.label}, "
        f"config {config.id}, {cost.macs / 1e6:.1f} MMACs, {cost.params / 1e6:.3f} M params",
        highlight=False,
    )
