"""Commands of the accuracy stage: `planner train`, `evaluate`, `calibrate` and `accuracy import`.

The model is built from MODEL plus --in-channels/--num-classes/--input-size, which default to a
checkpoint's recorded build options and otherwise to the data (digits: 1 channel, 8x8, 10 classes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.cli import app
from planner.cli.options import (
    DEFAULT_RESULTS_DIR,
    ConfigFilesOption,
    ResultsOption,
    WidthsOption,
    parse_widths,
)
from planner.errors import PlannerError

if TYPE_CHECKING:
    pass

console = Console(stderr=True)
accuracy_app = typer.Typer(
    help="The accuracy table: import accuracy measured elsewhere.", no_args_is_help=True
)
app.add_typer(accuracy_app, name="accuracy")

ModelArgument = Annotated[
    str, typer.Argument(metavar="MODEL", help="Registered model, or torchvision:NAME, timm:NAME, FILE.py:FN.")
]
DataOption = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="'digits', 'digits-distorted', an image-folder directory or an .npz file (x, y)."
    ),
]
CheckpointOption = Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint to load.")]
InChannelsOption = Annotated[
    int | None, typer.Option(help="Input channels (default: checkpoint, then data).")
]
NumClassesOption = Annotated[
    int | None, typer.Option(help="Output classes (default: checkpoint, then data).")
]
InputSizeOption = Annotated[
    int | None, typer.Option(help="Input height and width (default: checkpoint, then data).")
]
BatchesOption = Annotated[int, typer.Option("--calibration-batches", help="Batches for BN calibration.")]


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise PlannerError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


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
    ctx: typer.Context,
    model_name: ModelArgument,
    data: DataOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (reference layout).")],
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 15,
    widths: WidthsOption = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, Nesterov, cosine decay).")] = 0.2,
    batch_size: Annotated[int, typer.Option(help="Images per optimizer step (over all ranks).")] = 128,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = 5e-4,
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
) -> None:
    """Train every width of a slimmable model at once (US models: sandwich rule + inplace distillation).

    --batch-size is the global batch: torchrun's ranks (`torchrun --nproc-per-node N -m planner train`,
    or --nproc N) each take an equal share, and rank 0 alone prints and writes.
    """
    import sys

    from planner.accuracy.distributed import (
        from_environment,
        launch,
        pick_device,
        training_session,
        without_option,
    )
    from planner.accuracy.precision import select_precision
    from planner.accuracy.train import RunOptions, check_settings

    schedule, label_smoothing = None, 0.0
    if recipe is not None:
        given = _recipe_values(ctx, model_name, recipe)
        epochs, batch_size, lr = (
            given.get("epochs", epochs),
            given.get("batch_size", batch_size),
            given.get("lr", lr),
        )
        weight_decay, widths = given.get("weight_decay", weight_decay), given.get("widths", widths)
        input_size, augment = given.get("input_size", input_size), given.get("augment", augment)
        schedule, label_smoothing = given["schedule"], given["label_smoothing"]
    check_settings(epochs, batch_size, lr, per_layer, granularity)
    if nproc:
        if from_environment() is not None:
            raise PlannerError("--nproc starts torchrun itself: drop it when running under torchrun")
        select_precision(precision, pick_device(device, None))  # before any process starts
        raise typer.Exit(launch(nproc, without_option(sys.argv[1:], "--nproc")))
    with training_session(device) as (world, where):
        select_precision(precision, where)  # before any data is read
        if world is not None and not world.leader:
            console.quiet = True
        _train(
            model_name, data, output, epochs, widths, lr, batch_size, weight_decay, seed, threads,
            per_layer, granularity, save_every, resume, in_channels, num_classes, input_size, augment,
            schedule, label_smoothing, checkpoint, universal, RunOptions(
                world=world, accumulate=accumulate, device=where, workers=workers, precision=precision
            ),
        )  # fmt: skip


def _recipe_values(ctx: typer.Context, model_name: str, name: str) -> dict[str, Any]:
    """The recipe's settings for the options left at their defaults (a given option wins)."""
    from planner.accuracy.recipes import load_recipe

    loaded = load_recipe(name)
    if loaded.model != model_name:
        raise PlannerError(f"recipe {loaded.name} trains {loaded.model}, not {model_name}")
    values = {
        "epochs": loaded.epochs,
        "batch_size": loaded.batch_size,
        "lr": loaded.lr,
        "weight_decay": loaded.weight_decay,
        "widths": [",".join(f"{w:g}" for w in loaded.widths)],
        "input_size": loaded.input_size,
        "augment": loaded.augment,
    }
    chosen = {
        k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") == "DEFAULT"
    }
    return {**chosen, "schedule": loaded.schedule, "label_smoothing": loaded.label_smoothing}


def _train(
    model_name, data, output, epochs, widths, lr, batch_size, weight_decay, seed, threads,
    per_layer, granularity, save_every, resume, in_channels, num_classes, input_size, augment,
    schedule, label_smoothing, checkpoint, universal, options,
) -> None:  # fmt: skip
    import dataclasses

    import torch

    from planner.accuracy.data import load_dataset
    from planner.accuracy.evaluate import evaluate
    from planner.accuracy.images import PIPELINE, load_image_folder
    from planner.accuracy.recipes import COSINE
    from planner.accuracy.resume import resume_path
    from planner.accuracy.train import check_model, start_from_source, train
    from planner.models.sources import is_source
    from planner.models.space import default_granularity
    from planner.nn.build import build_model
    from planner.nn.checkpoint import save_checkpoint

    leader = options.world is None or options.world.leader
    _set_threads(threads)
    if augment:
        dataset = load_image_folder(data, input_size, options.workers, seed)
    else:
        dataset = load_dataset(data, image_size=input_size)
    pipeline = PIPELINE if augment else "tensors"
    torch.manual_seed(seed)
    teacher = None
    if is_source(model_name):
        model, teacher = start_from_source(model_name, dataset, checkpoint, parse_widths(widths), universal)
    elif checkpoint is not None or universal:
        raise PlannerError("--checkpoint and --universal are for torchvision:, timm: and FILE.py: models")
    else:
        model = build_model(
            model_name,
            dataset=dataset,
            widths=parse_widths(widths),
            in_channels=in_channels,
            num_classes=num_classes,
            input_size=input_size,
        )
    check_model(model, per_layer)
    shown = ", ".join(f"{w:g}" for w in model.widths[:8]) + (" …" if len(model.widths) > 8 else "")
    console.print(
        f"training {model.name} at widths {shown} on {dataset.name} ({dataset.size('train')} images, "
        f"{dataset.num_classes} classes, {dataset.in_channels}x{dataset.input_size}x{dataset.input_size})"
        + (", per-layer random sandwich members" if per_layer else ""),
        highlight=False,
    )
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, TextColumn("{task.fields[losses]}"), console=console, disable=not leader
    ) as progress:
        steps = -(-dataset.size("train") // batch_size)
        task = progress.add_task("train", total=epochs * steps, epoch=f"1/{epochs}", losses="")

        def show(step) -> None:
            shown = list(step.losses.items())[:4]
            losses = "loss " + " ".join(
                f"{w:g}x:{loss:.3f}" if isinstance(w, float) else f"{w}:{loss:.3f}" for w, loss in shown
            )
            losses += f" {step.images_per_s:.0f} img/s"
            progress.update(task, advance=1, epoch=f"{step.epoch + 1}/{epochs}", losses=losses)

        def resumed(at) -> None:
            console.print(
                f"resuming from {resume} at epoch {at.epoch + 1}/{epochs}, "
                f"step {at.step}/{at.steps_per_epoch}",
                highlight=False,
            )
            progress.update(task, completed=at.epoch * at.steps_per_epoch + at.step)

        run = dataclasses.replace(
            options, checkpoint=resume_path(output), save_every=save_every, resume=resume, on_resume=resumed
        )
        result = train(
            model,
            dataset,
            epochs,
            batch_size,
            lr,
            weight_decay,
            seed,
            on_step=show,
            per_layer=per_layer,
            granularity=granularity,
            run=run,
            schedule=schedule or COSINE,
            label_smoothing=label_smoothing,
            teacher=teacher,
        )
    if not leader:
        return
    extra = {
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "pipeline": pipeline,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    if per_layer:
        extra["per_layer"] = {"granularity": granularity or default_granularity(model)}
    path = save_checkpoint(model, output, extra=extra)
    console.print(f"wrote {path} ({result.steps} steps in {result.wall_s:.1f} s)", highlight=False)
    if dataset.size("val"):
        widths_shown = model.widths if len(model.widths) <= 8 else model.widths[:: len(model.widths) // 4]
        configs = [model.config(w) for w in sorted({*widths_shown, model.widths[-1]})]
        results = evaluate(model, configs, dataset.batches("val", 256))
        Console().print(_accuracy_table(f"{model.name} on {dataset.name} (val)", results))


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
