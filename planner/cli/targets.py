"""`planner targets`: the devices `planner profile --target` accepts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import app
from planner.cli.options import TargetsDirOption
from planner.measure.targets import Target, list_targets


@app.command("targets")
def targets_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the targets as JSON.")] = False,
    targets_dir: TargetsDirOption = None,
) -> None:
    """List the targets: name, aliases, runtime, how each is reached, and its hardware figures."""
    targets = list_targets(targets_dir)
    if as_json:
        typer.echo(json.dumps([target.to_dict() for target in targets], indent=2))
        return
    Console().print(_table(targets))


def _table(targets: list[Target]) -> Table:
    table = Table(title="targets")
    table.add_column("name", no_wrap=True)
    for column in ("aliases", "backend", "device", "precision", "reached by", "peak GFLOP/s", "GB/s"):
        table.add_column(column)
    for target in targets:
        hardware = target.hardware
        peak = hardware.peak_gflops(target.precision) if hardware else None
        bandwidth = hardware.memory_bandwidth_gbs if hardware else None
        reached = "local"
        if target.is_remote:
            reached = f"ssh {target.connection.address}" if target.connection.host else "ssh (--host)"
        table.add_row(
            target.name,
            ", ".join(target.aliases),
            target.backend,
            target.device,
            target.precision,
            reached,
            f"{peak:g}" if peak else "-",
            f"{bandwidth:g}" if bandwidth else "-",
        )
    return table
