"""Commands of the accuracy stage: `planner train`, `evaluate`, `calibrate` and `accuracy import`.

The model is built from MODEL plus --in-channels/--num-classes/--input-size, which default to a
checkpoint's recorded build options and otherwise to the data (digits: 1 channel, 8x8, 10 classes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.cli import app
from planner.cli.options import (
    DEFAULT_RESULTS_DIR,
    ChannelMultipleOption,
    ConfigFilesOption,
    DataOption,
    InChannelsOption,
    InputSizeOption,
    ModelArgument,
    NumClassesOption,
    ResultsOption,
    WidthsOption,
    parse_widths,
)
from planner.errors import PlannerError

console = Console(stderr=True)
accuracy_app = typer.Typer(
    help="The accuracy table: import accuracy measured elsewhere.", no_args_is_help=True
)
app.add_typer(accuracy_app, name="accuracy")

CheckpointOption = Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint to load.")]
BatchesOption = Annotated[int, typer.Option("--calibration-batches", help="Batches for BN calibration.")]


def _accuracy_table(title: str, results, precision: str | None = None) -> Table:
    from planner.stats import wilson_interval

    table = Table(
        "configuration", "config id", "top-1 %", "95% interval", "top-5 %", "calibrated", title=title
    )
    if precision is not None:
        table.add_column("precision")
    for result in results:
        top5 = "" if result.top5 is None else f"{result.top5:.2f}"
        low, high = wilson_interval(round(result.top1 * result.samples / 100), result.samples)
        table.add_row(
            result.config.label,
            result.config.id,
            f"{result.top1:.2f}",
            f"{low:.1f}-{high:.1f}",
            top5,
            "yes" if result.calibrated else "",
            *([precision] if precision is not None else []),
        )
    return table


@app.command("train")
def train_command(
    model_name: ModelArgument,
    data: DataOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (reference layout).")],
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the training split (default 15, or the recipe's).")
    ] = None,
    widths: WidthsOption = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate (SGD, Nesterov, cosine decay; default 0.2, or the recipe's)."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per optimizer step, over all ranks (default 128, or the recipe's)."),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 weight decay (default 5e-4, or the recipe's).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the weights, the shuffling and the sandwich widths.")
    ] = 0,
    threads: Annotated[
        int,
        typer.Option(
            help="Torch CPU threads. Small models train fastest on one, and a busy machine does not stall "
            "them (results/train_digits.md); raise it for large models on an idle machine."
        ),
    ] = 1,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="US models: the sandwich's two random members are per-layer random configurations "
            "(each layer's channels drawn independently), so per-layer searches such as LeGR pick "
            "trained mixes.",
        ),
    ] = False,
    granularity: Annotated[
        int | None,
        typer.Option(help="Channel step of the --per-layer configurations (default: the model's, as LeGR)."),
    ] = None,
    save_every: Annotated[
        int,
        typer.Option(
            help="Also save the resume state (OUTPUT's stem + .resume.pt, written every epoch) every N steps."
        ),
    ] = 0,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run from this resume state, exactly as if never interrupted."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="A published setup (s_mobilenet_v1, s_mobilenet_v2, s_resnet50, us_mobilenet_v2) or a "
            "recipe TOML file: its epochs, batch, lr schedule, weight decay, label smoothing, widths, input "
            "size and augmentation, each overridden by the option when given."
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(help="Processes to start under torchrun on this machine (data parallel; 0: this one)."),
    ] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes per rank.")] = 0,
    augment: Annotated[
        bool,
        typer.Option(
            "--augment",
            help="Image folders: read images per batch with ImageNet augmentation (random resized crop, "
            "flip, normalisation; evaluation: resize, centre crop) instead of all in memory.",
        ),
    ] = False,
    precision: Annotated[
        str, typer.Option(help="fp32, bf16 (CPU or CUDA autocast) or fp16 (CUDA, with loss scaling).")
    ] = "fp32",
    accumulate: Annotated[
        int, typer.Option(help="Micro-batches per step (BN statistics per micro-batch, as per rank).")
    ] = 1,
    in_channels: InChannelsOption = None,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="MODEL torchvision:NAME, timm:NAME, FILE.py:FN: the original network's state dict "
            "(converted; the original teaches every width) or planner's checkpoint (resumed).",
        ),
    ] = None,
    universal: Annotated[
        bool, typer.Option("--universal", help="Converted networks: any width in range (sandwich rule).")
    ] = False,
    channel_multiple: ChannelMultipleOption = None,
) -> None:
    """Train every width of a slimmable model at once (US models: sandwich rule + inplace distillation).

    --batch-size is the global batch: torchrun's ranks (`torchrun --nproc-per-node N -m planner train`,
    or --nproc N) each take an equal share, and rank 0 alone prints and writes.
    """
    import sys

    from planner.accuracy.distributed import from_environment, launch, without_option
    from planner.accuracy.train import TrainOptions, resolve_options, train_checkpoint

    options = TrainOptions(
        model_name, data, output, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        widths=parse_widths(widths), input_size=input_size, augment=augment or None, recipe=recipe,
        seed=seed, threads=threads, per_layer=per_layer, granularity=granularity, save_every=save_every,
        resume=resume, device=device, workers=workers, precision=precision, accumulate=accumulate,
        in_channels=in_channels, num_classes=num_classes, checkpoint=checkpoint, universal=universal,
        channel_multiple=channel_multiple,
    )  # fmt: skip
    if nproc:
        if from_environment() is not None:
            raise PlannerError("--nproc starts torchrun itself: drop it when running under torchrun")
        resolve_options(options)  # bad input is one line before any process starts
        raise typer.Exit(launch(nproc, without_option(sys.argv[1:], "--nproc")))
    with _TrainDisplay() as display:
        done = train_checkpoint(options, display.start, display.step, display.resumed)
    if done.path is None:  # a rank other than 0
        return
    result = done.result
    console.print(f"wrote {done.path} ({result.steps} steps in {result.wall_s:.1f} s)", highlight=False)
    if done.scores:
        title = f"{done.model.name} on {done.dataset.name} (val)"
        Console().print(_accuracy_table(title, done.scores))


class _TrainDisplay:
    """The progress of `planner train`: the run's first line, a bar with the losses per width and the
    throughput, the resume line. Rank 0 alone is told anything, so the other ranks show nothing."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[losses]}"),
            console=console,
        )
        self.task, self.epochs, self.resume = None, 0, None

    def __enter__(self) -> _TrainDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, start) -> None:
        model, dataset, options = start.model, start.dataset, start.options
        shown = ", ".join(f"{w:g}" for w in model.widths[:8]) + (" …" if len(model.widths) > 8 else "")
        console.print(
            f"training {model.name} at widths {shown} on {dataset.name} ({dataset.size('train')} images, "
            f"{dataset.num_classes} classes, {dataset.in_channels}x{dataset.input_size}x{dataset.input_size})"
            + (", per-layer random sandwich members" if options.per_layer else ""),
            highlight=False,
        )
        self.epochs, self.resume = options.epochs, options.resume
        total = options.epochs * start.steps_per_epoch
        self.task = self.progress.add_task("train", total=total, epoch=f"1/{self.epochs}", losses="")
        self.progress.start()

    def step(self, step) -> None:
        shown = list(step.losses.items())[:4]
        losses = "loss " + " ".join(
            f"{w:g}x:{loss:.3f}" if isinstance(w, float) else f"{w}:{loss:.3f}" for w, loss in shown
        )
        losses += f" {step.images_per_s:.0f} img/s"
        self.progress.update(self.task, advance=1, epoch=f"{step.epoch + 1}/{self.epochs}", losses=losses)

    def resumed(self, at) -> None:
        console.print(
            f"resuming from {self.resume} at epoch {at.epoch + 1}/{self.epochs}, "
            f"step {at.step}/{at.steps_per_epoch}",
            highlight=False,
        )
        self.progress.update(self.task, completed=at.epoch * at.steps_per_epoch + at.step)


@app.command("evaluate")
def evaluate_command(
    model_name: ModelArgument,
    checkpoint: CheckpointOption,
    data: DataOption,
    widths: WidthsOption = None,
    config_files: ConfigFilesOption = None,
    split: Annotated[str, typer.Option(help="Split to score: val, train or calibration.")] = "val",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 256,
    calibration_batches: BatchesOption = 5,
    out: ResultsOption = DEFAULT_RESULTS_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
    in_channels: InChannelsOption = None,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
    target_names: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="Score the artifacts this target measured, through its runtime (repeatable).",
        ),
    ] = None,
    targets_dir: Annotated[Path | None, typer.Option("--targets-dir", help="Extra target files.")] = None,
    calibration_size: Annotated[
        int, typer.Option(help="Calibration images for an int8 artifact profile did not write.")
    ] = 128,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray", help="Ray cluster address: run --target's artifacts on its target:<name> node."
        ),
    ] = None,
) -> None:
    """Top-1 (and top-5) per configuration, added to OUT/accuracy.parquet under profile's config ids.

    Configurations without trained BN statistics are calibrated first on the data's calibration split,
    or use the statistics a `planner calibrate` checkpoint carries. With --target, the exact artifacts
    `planner profile` measured there (ONNX, IR, int8) run through the target's runtime at each of its
    precisions and batch sizes (a batch-B file is fed B images at a time) instead of torch: here, over
    SSH, or with --ray on the target's fleet node; rows record target, precision, batch and runtime.
    """
    from planner.accuracy.evaluate import checkpoint_on_data, evaluate_checkpoint

    if ray and not target_names:
        raise PlannerError("--ray runs a target's artifacts on its fleet node: give --target")
    shape = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    on_data = checkpoint_on_data(model_name, checkpoint, data, parse_widths(widths), config_files, **shape)
    if target_names:
        from planner.accuracy.runtime import evaluate_on_targets
        from planner.measure.targets import load_target

        targets = [load_target(name, targets_dir) for name in target_names]
        scores = evaluate_on_targets(on_data, checkpoint, targets, out, split, calibration_size, ray)
        _print_target_scores(on_data, scores, split, as_json)
        return
    done = evaluate_checkpoint(on_data, checkpoint, out, split, batch_size, calibration_batches)
    model, dataset, results = done.model, done.dataset, done.results
    if as_json:
        report = [
            {
                **({"width": r.config.width} if r.config.width is not None else {"config": r.config.id}),
                "config_id": r.config.id,
                **r.metrics(),
                "calibrated": r.calibrated,
                "samples": r.samples,
            }
            for r in results
        ]
        typer.echo(
            json.dumps({"model": model.name, "dataset": dataset.name, "split": split, "results": report})
        )
    else:
        title = f"{model.name} on {dataset.name} ({split}, {results[0].samples} images)"
        Console().print(_accuracy_table(title, results))
    console.print(f"wrote {done.rows} rows to {done.path}", highlight=False)


def _print_target_scores(on_data, scores, split: str, as_json: bool) -> None:
    import pandas as pd

    model, dataset = on_data.model, on_data.dataset
    report = []
    for score in scores:
        target, precision, results, rows = score.target, score.precision, score.results, score.rows
        at = precision if score.batch == 1 else f"{precision} b{score.batch}"
        console.print(f"wrote {len(rows)} rows to {score.path}", highlight=False)
        if as_json:
            top1 = rows[rows["metric"] == "top1"]
            report += [
                {
                    "target": target.name,
                    "precision": precision,
                    "batch": score.batch,
                    "runtime": target.backend,
                    "config_id": row["config_id"],
                    "width": None if pd.isna(row["width"]) else float(row["width"]),
                    "top1": float(row["value"]),
                    "ci95": [float(row["ci_low"]), float(row["ci_high"])],
                    "samples": int(row["n"]),
                }
                for _, row in top1.iterrows()
            ]
            continue
        title = (
            f"{model.name} on {dataset.name} ({split}, {results[0].samples} images) "
            f"through {target.backend} ({target.name})"
        )
        Console().print(_accuracy_table(title, results, at))
    if as_json:
        typer.echo(
            json.dumps({"model": model.name, "dataset": dataset.name, "split": split, "results": report})
        )


@app.command("calibrate")
def calibrate_command(
    model_name: ModelArgument,
    checkpoint: CheckpointOption,
    data: DataOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibrated checkpoint to write.")],
    widths: WidthsOption = None,
    config_files: ConfigFilesOption = None,
    batches: Annotated[int, typer.Option("--batches", help="Calibration batches per configuration.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 128,
    in_channels: InChannelsOption = None,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
) -> None:
    """Calibrate BN statistics of configurations; write a checkpoint that carries them.

    The output has the same weights plus, under 'planner' -> 'calibration', each configuration's
    statistics keyed by its config id; `planner evaluate` uses them without recalibrating. The trained
    statistics are kept unchanged.
    """
    from planner.accuracy.evaluate import calibrate_checkpoint, checkpoint_on_data

    if not widths and not config_files:
        raise PlannerError("give --widths or --config: the configurations to calibrate")
    shape = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    on_data = checkpoint_on_data(model_name, checkpoint, data, parse_widths(widths), config_files, **shape)
    model = on_data.model
    done, path = calibrate_checkpoint(on_data, checkpoint, output, batches, batch_size)
    for calibrated in done:
        console.print(
            f"calibrated {model.name} {calibrated.config.label} (config {calibrated.config.id}) "
            f"on {calibrated.batches} batches",
            highlight=False,
        )
    console.print(f"wrote {path}", highlight=False)


@accuracy_app.command("import")
def import_command(
    csv_file: Annotated[
        Path, typer.Argument(metavar="FILE.csv", help="Columns: model, width or config_id, ...")
    ],
    out: ResultsOption = DEFAULT_RESULTS_DIR,
) -> None:
    """Add accuracy measured elsewhere (model, width or config_id, metric, value[, dataset, split])."""
    from planner.accuracy.imported import read_accuracy_csv
    from planner.accuracy.table import write_accuracy

    rows = read_accuracy_csv(csv_file)
    path = write_accuracy(out, rows)
    models = ", ".join(sorted(rows["model"].unique()))
    console.print(f"imported {len(rows)} rows ({models}) into {path}", highlight=False)
