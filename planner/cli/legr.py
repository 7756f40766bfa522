"""`planner lut build|check` (latency lookup tables), `planner legr learn|config` (LeGR per-layer widths)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import app
from planner.cli.options import (
    DEFAULT_RESULTS_DIR,
    DataOption,
    InputSizeOption,
    LutOption,
    ModelArgument,
    ResultsOption,
    TargetsDirOption,
)
from planner.errors import PlannerError
from profilers.files import replacing

console = Console(stderr=True)
lut_app = typer.Typer(
    no_args_is_help=True, help="Latency lookup tables: per-layer latency measured on a target."
)
legr_app = typer.Typer(
    no_args_is_help=True, help="LeGR: learned channel ranking -> per-layer widths for a budget."
)
app.add_typer(lut_app, name="lut")
app.add_typer(legr_app, name="legr")

TargetOption = Annotated[str, typer.Option("--target", "-t", help="Target name or alias.")]
CheckpointOption = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Weights; planner checkpoints also give the model's options."),
]
MaxSecondsOption = Annotated[
    float | None, typer.Option(help="Time limit per measurement (default: 3 s per layer, 10 s per model).")
]
MinQueriesOption = Annotated[int | None, typer.Option(help="Inferences before a measurement may stop.")]


def _settings(base, max_seconds: float | None, min_queries: int | None, wait_quiet_s: float | None = None):
    """The stage's profiler settings with the user's overrides (validated by the profiler)."""
    overrides = {"max_seconds": max_seconds, "min_queries": min_queries, "wait_quiet_s": wait_quiet_s}
    return dataclasses.replace(base, **{key: value for key, value in overrides.items() if value is not None})


def _model(name: str | None, checkpoint: Path | None, input_size: int | None = None):
    from planner.nn.build import build_model

    return build_model(name, checkpoint, input_size=input_size)


def _target_model(model, target):
    from planner.measure.artifacts import model_for_target

    return model_for_target(model, target)


@lut_app.command("build")
def lut_build(
    target_name: TargetOption,
    model_name: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    checkpoint: CheckpointOption = None,
    input_size: InputSizeOption = None,
    points: Annotated[int, typer.Option(help="Grid points per slimmable side of each layer.")] = 3,
    calibration_samples: Annotated[
        int, typer.Option(help="Random per-layer configurations measured (besides the uniform widths).")
    ] = 2,
    max_seconds: MaxSecondsOption = None,
    min_queries: MinQueriesOption = None,
    wait_quiet: Annotated[
        str | None,
        typer.Option(
            "--wait-quiet",
            help="Before each group of measurements, wait up to this long (e.g. 2min) for a quiet machine.",
        ),
    ] = None,
    out: ResultsOption = DEFAULT_RESULTS_DIR,
    targets_dir: TargetsDirOption = None,
) -> None:
    """Measure each slimmable layer of a model on a target and write OUT/lut/<target>-<model>.json.

    The layers are measured in groups beside the heaviest one (OUT/lut/<target>-<model>/layers-anchored/),
    the whole configurations that calibrate the sum (the trained widths, four for a US model, and a few
    random ones) beside the full width (OUT/lut/<target>-<model>/anchored/). A table built on a busy
    machine mispredicts on a quiet one: --wait-quiet waits for quiet before each group.
    """
    from planner.measure.targets import load_target
    from planner.search.lut import table_path
    from planner.search.lut_runs import END_TO_END_SETTINGS, LAYER_SETTINGS, build_table
    from planner.units import parse_wait_s
    from profilers.jobs import MAX_WAIT_QUIET_S

    wait_s = parse_wait_s(wait_quiet, MAX_WAIT_QUIET_S) if wait_quiet is not None else None
    target = load_target(target_name, targets_dir)
    model = _target_model(_model(model_name, checkpoint, input_size), target)
    started = time.perf_counter()
    table = build_table(
        model,
        target,
        out,
        points=points,
        calibration_samples=calibration_samples,
        layer_settings=_settings(LAYER_SETTINGS, max_seconds, min_queries, wait_s),
        end_to_end_settings=_settings(END_TO_END_SETTINGS, max_seconds, min_queries, wait_s),
        log=console.print,
    )
    path = table.save(table_path(out, target.name, model.name))
    result = Table("configuration", "layer sum ms", "predicted ms", "measured ms")
    for point in table.calibration.points:
        predicted = table.calibration.scale * point["layer_sum_ms"] + table.calibration.offset_ms
        result.add_row(
            point["label"], f"{point['layer_sum_ms']:.3f}", f"{predicted:.3f}", f"{point['measured_ms']:.3f}"
        )
    Console().print(result)
    typer.echo(
        f"wrote {path}: {len(table.entries)} layer shapes, latency = {table.calibration.scale:.3f} x "
        f"layer sum {table.calibration.offset_ms:+.3f} ms ({time.perf_counter() - started:.0f} s)"
    )


@lut_app.command("check")
def lut_check(
    target_name: TargetOption,
    model_name: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    checkpoint: CheckpointOption = None,
    input_size: InputSizeOption = None,
    samples: Annotated[int, typer.Option(help="Random per-layer configurations to measure.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the random configurations.")] = 1,
    lut: LutOption = None,
    max_seconds: MaxSecondsOption = None,
    min_queries: MinQueriesOption = None,
    out: ResultsOption = DEFAULT_RESULTS_DIR,
    targets_dir: TargetsDirOption = None,
) -> None:
    """Prediction error of a table against end-to-end measurements of random configurations.

    The configurations are measured in groups beside the full width, whose latency now also rescales the
    table to the machine's current speed (see docs/ARCHITECTURE.md, latency tables).
    """
    from planner.measure.targets import load_target
    from planner.search.lut import LatencyTable, table_path, within
    from planner.search.lut_runs import END_TO_END_SETTINGS, check_table, speed_warning

    target = load_target(target_name, targets_dir)
    model = _target_model(_model(model_name, checkpoint, input_size), target)
    table = LatencyTable.load(lut or table_path(out, target.name, model.name)).check(model, target)
    settings = _settings(END_TO_END_SETTINGS, max_seconds, min_queries)
    frame = check_table(table, model, target, out, samples=samples, seed=seed, settings=settings)
    result = Table("configuration", "predicted ms", "measured ms", "error")
    for _, row in frame.iterrows():
        result.add_row(
            row["config_id"],
            f"{row['predicted_ms']:.3f}",
            f"{row['measured_ms']:.3f}",
            f"{row['error']:+.1%}",
        )
    Console().print(result)
    errors = frame["error"]
    typer.echo(
        f"{len(frame)} configurations: {within(errors, 0.10):.0%} within +-10% of measured, "
        f"median |error| {errors.abs().median():.1%}, max {errors.abs().max():.1%}"
    )
    warning = speed_warning(table, float(frame["full_width_ms"].iloc[0]))
    if warning:
        console.print(f"[yellow]warning: {warning}[/yellow]", soft_wrap=True)


@legr_app.command("learn")
def legr_learn(
    model_name: ModelArgument,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Trained weights (their filters are ranked).")
    ],
    data: DataOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Coefficients JSON to write.")],
    budget: Annotated[float, typer.Option(help="Learn at this share of the full model's cost.")] = 0.5,
    target_name: Annotated[
        str | None, typer.Option("--target", "-t", help="Rank against this target's latency table, not MACs.")
    ] = None,
    lut: LutOption = None,
    generations: Annotated[int, typer.Option(help="Children evaluated after the initial population.")] = 400,
    population: Annotated[int, typer.Option(help="Population size.")] = 64,
    sample: Annotated[int, typer.Option(help="Tournament sample size.")] = 16,
    mutate: Annotated[float, typer.Option(help="Share of the layers a child changes.")] = 0.1,
    finetune_steps: Annotated[
        int, typer.Option(help="SGD steps at each candidate before scoring (tau).")
    ] = 0,
    calibration_batches: Annotated[int, typer.Option(help="BN calibration batches per candidate.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size for calibration and validation.")] = 64,
    granularity: Annotated[
        int | None, typer.Option(help="Channel step (default: 8 for MobileNets, else 1).")
    ] = None,
    min_fraction: Annotated[float, typer.Option(help="Share of every layer always kept.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the one generator the search uses.")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="torch threads for the search (1 is fastest on a busy machine).")
    ] = None,
    out: ResultsOption = DEFAULT_RESULTS_DIR,
    targets_dir: TargetsDirOption = None,
) -> None:
    """Learn LeGR's per-layer affine coefficients by regularized evolution; reuse them for every budget."""
    from planner.measure.targets import load_target
    from planner.search.budget import fitness_on, latency_table_for, learn_ranking
    from planner.search.legr import SearchSettings

    settings = SearchSettings(population, sample, generations, mutate)
    if threads is not None:
        if threads < 1:
            raise PlannerError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    model = _model(model_name, checkpoint)
    latency = None
    if target_name is not None or lut is not None:
        if target_name is None:
            raise PlannerError("--lut needs --target (the table is checked against it)")
        target = load_target(target_name, targets_dir)
        latency = (target, latency_table_for(model, target, out, lut))

    def progress(generation: int, loss: float) -> None:
        if generation % 50 == 0 or generation == settings.generations:
            console.print(f"generation {generation}/{settings.generations}: best validation loss {loss:.4f}")

    learned = learn_ranking(
        model,
        checkpoint,
        data,
        fitness_on(model, data, calibration_batches, batch_size, finetune_steps, seed),
        share=budget,
        latency=latency,
        settings=settings,
        granularity=granularity,
        min_fraction=min_fraction,
        seed=seed,
        progress=progress,
    )
    learned.ranking.save(output)
    typer.echo(
        f"wrote {output}: validation loss {learned.loss:.4f} at {budget:g} of the full cost, "
        f"{learned.evaluations} candidates ({learned.distinct} distinct configurations) in "
        f"{learned.wall_s:.0f} s"
    )


@legr_app.command("config")
def legr_config(
    model_name: ModelArgument,
    coefficients: Annotated[
        Path, typer.Option("--coefficients", help="Coefficients from planner legr learn.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Width configuration JSON to write.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Weights (default: the ones the coefficients were learned on)."),
    ] = None,
    max_latency: Annotated[
        str | None, typer.Option("--max-latency", help="Latency budget, e.g. 20ms.")
    ] = None,
    max_macs: Annotated[
        float | None, typer.Option("--max-macs", help="MACs budget instead of latency.")
    ] = None,
    target_name: Annotated[
        str | None, typer.Option("--target", "-t", help="Target of the latency budget.")
    ] = None,
    lut: LutOption = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Measure the result on the target.")
    ] = True,
    plans: Annotated[
        int, typer.Option(help="Configurations measured at most while the plan is fitted to the budget.")
    ] = 6,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Also fit the widest uniform width to the budget and keep the plan only if its "
            "validation loss on this dataset is lower.",
        ),
    ] = None,
    out: ResultsOption = DEFAULT_RESULTS_DIR,
    targets_dir: TargetsDirOption = None,
) -> None:
    """The per-layer configuration for a budget: walk the learned ranking until the predicted cost fits.

    A latency budget is planned with the target's table, then fitted by real measurements: the plan
    grows while its measured p90 is under the budget and shrinks while it is over (up to --plans
    measurements), so the table's error neither wastes nor breaks the budget. With --data the widest
    uniform width is fitted the same way and written instead when the plan's validation loss (LeGR's
    fitness, after BN calibration) is not lower. The rows go to OUT/latency.parquet, so select, manifest
    and report see the configuration like a width.
    """
    from planner.measure.targets import load_target
    from planner.nn.counting import count
    from planner.search.budget import config_from_coefficients
    from planner.units import parse_duration_ms

    planned = config_from_coefficients(
        coefficients,
        out,
        model_name=model_name,
        checkpoint=checkpoint,
        max_latency_ms=parse_duration_ms(max_latency) if max_latency is not None else None,
        max_macs=max_macs,
        target=load_target(target_name, targets_dir) if target_name is not None else None,
        lut=lut,
        verify=verify,
        max_plans=plans,
        data=data,
        log=console.print,
    )
    model, fit, table = planned.model, planned.fit, planned.table
    if fit.note:
        typer.echo(fit.note)
    config = fit.config
    _write_config(config, output)
    if max_macs is not None:
        typer.echo(f"wrote {output} ({config.label}): {count(model, config).macs:,} MACs <= {max_macs:,.0f}")
        return
    line = f"wrote {output} ({config.label}): predicted {table.predict_ms(config):.3f} ms"
    if verify:
        row = fit.measured[config.id]
        line += (
            f", measured p50 {row['p50_ms']:.3f} ms, p90 {row['p90_ms']:.3f} ms <= {max_latency} "
            f"({len(fit.measured)} measured)"
        )
    typer.echo(line)


def _write_config(config, path: Path) -> None:
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise PlannerError(f"cannot write {path}: directory {path.parent} does not exist")
    with replacing(path) as tmp:
        tmp.write_text(config.to_json() + "\n")
