"""`planner demo`: train, evaluate, profile, select, deploy and report on this machine, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from planner.cli import app
from planner.cli.loadtest import verdict_lines
from planner.cli.select import candidate_table
from planner.errors import PlannerError
from planner.plan.select import label


@app.command("demo")
def demo_command(
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for everything the demo makes.")
    ] = Path("demo"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs on digits-distorted.")] = 6,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", help="Profiling time limit per width and runtime.")
    ] = 8.0,
) -> None:
    """The whole pipeline on s_cnn_small and digits-distorted, FP32 and INT8 on ONNX Runtime and OpenVINO."""
    from planner.demo import run_demo

    if epochs < 1:
        raise PlannerError(f"--epochs must be at least 1, got {epochs}")
    if max_seconds <= 0:
        raise PlannerError(f"--max-seconds must be positive, got {max_seconds:g}")
    if out_dir.exists() and not out_dir.is_dir():
        raise PlannerError(f"--out {out_dir} is a file; give a directory")
    console = Console()
    start = time.perf_counter()
    result = run_demo(
        out_dir,
        epochs=epochs,
        max_seconds=max_seconds,
        say=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    for name, selection in result.selections.items():
        console.print(
            f"\n[bold]{name}[/]: budget {selection.budget.describe()} (middle of the measured range)"
        )
        console.print(
            candidate_table([("choice", selection.choice), ("runner-up", selection.runner_up)], "p90")
        )
        if selection.significance_note:
            console.print(f"within noise: {selection.significance_note}", highlight=False)
        steps = " -> ".join(label(row) for _, row in selection.ladder.iterrows())
        console.print(f"ladder: {steps}")
    console.print(f"\ndone in {time.perf_counter() - start:.0f} s", highlight=False, soft_wrap=True)
    console.print(f"  checkpoint: {result.checkpoint}", highlight=False, soft_wrap=True)
    console.print(f"  results:    {result.results_dir}", highlight=False, soft_wrap=True)
    for name, path in result.manifests.items():
        console.print(f"  manifest:   {path} ({name})", highlight=False, soft_wrap=True)
    for path in result.report:
        console.print(f"  report:     {path}", highlight=False, soft_wrap=True)
    for path in result.loadtest.files:
        console.print(f"  load test:  {path}", highlight=False, soft_wrap=True)
    for line in verdict_lines(result.loadtest.report):
        console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
