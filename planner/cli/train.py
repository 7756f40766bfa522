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

from planner.cli import app, parse_widths
from planner.errors import PlannerError

if TYPE_CHECKING:
    from planner.accuracy.data import Dataset

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
WidthsOption = Annotated[
    list[str] | None, typer.Option("--widths", "-w", help="Widths, e.g. 0.25,0.5,1.0 (repeatable).")
]
ConfigOption = Annotated[
    list[Path] | None, typer.Option("--config", help="Per-layer width configuration JSON (repeatable).")
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


def _build(
    name: str,
    dataset: Dataset,
    saved: dict[str, Any] | None,
    in_channels: int | None,
    num_classes: int | None,
    input_size: int | None,
    widths: list[float] | None = None,
):
    """The model from MODEL and the data, checked against the options and the checkpoint, loaded if saved."""
    from planner.models import create_model
    from planner.models.sources import build_source, is_source
    from planner.nn.checkpoint import check_state_dict

    info = saved["planner"] if saved else {}
    if info.get("name") not in (None, name):
        raise PlannerError(f"the checkpoint holds {info['name']!r}, not {name!r}")
    given = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    for key, value in given.items():
        if value is not None and key in info and info[key] != value:
            raise PlannerError(
                f"--{key.replace('_', '-')} {value} does not match the checkpoint ({info[key]})"
            )
    options = {key: given[key] if given[key] is not None else info.get(key) for key in given}
    classes = options["num_classes"]
    if classes is not None and dataset.num_classes != classes:
        origin = "the checkpoint" if "num_classes" in info else "--num-classes"
        raise PlannerError(
            f"dataset {dataset.name} has {dataset.num_classes} classes but {origin} has {classes}"
        )
    data_shape = {"in_channels": dataset.in_channels, "input_size": dataset.input_size}
    for key, value in data_shape.items():
        if options[key] is not None and options[key] != value:
            raise PlannerError(
                f"dataset {dataset.name} has {key.replace('_', ' ')} {value}, "
                f"the model takes {options[key]} (--{key.replace('_', '-')})"
            )
    options = {**data_shape, "num_classes": dataset.num_classes}
    if is_source(name):  # a plain state dict is the original network's: converted on load
        original = saved["model"] if saved and not info else None
        model = build_source(
            name,
            widths or info.get("widths"),
            universal=bool(info.get("universal")),
            **options,
            reorder=not saved or original is not None,
            state=original,
        )
        saved = None if original is not None else saved
    else:
        model = create_model(name, widths=widths or info.get("widths"), **options)
    if saved:
        check_state_dict(model, saved["model"])
        model.load_state_dict(saved["model"])
    return model.eval()


def _load(data: str, saved: dict[str, Any] | None, input_size: int | None) -> Dataset:
    from planner.accuracy.data import load_dataset

    size = input_size or (saved["planner"].get("input_size") if saved else None)
    return load_dataset(data, image_size=size)


def _configs(model, widths: list[float] | None, config_files: list[Path] | None) -> list:
    from planner.widths import WidthConfig

    configs = [model.config(w) for w in widths or []]
    for path in config_files or []:
        loaded = WidthConfig.load(path)
        if loaded.model != model.name:
            raise PlannerError(f"{path} is a configuration of {loaded.model!r}, not {model.name!r}")
        configs.append(model.config_from_channels(loaded.channels, loaded.width))
    return configs or [model.config(w) for w in model.widths]


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise PlannerError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def _accuracy_table(title: str, results) -> Table:
    table = Table("configuration", "config id", "top-1 %", "top-5 %", "calibrated", title=title)
    for result in results:
        top5 = "" if result.top5 is None else f"{result.top5:.2f}"
        table.add_row(
            result.config.label,
            result.config.id,
            f"{result.top1:.2f}",
            top5,
            "yes" if result.calibrated else "",
        )
    return table


@app.command("train")
def train_command(
    model_name: ModelArgument,
    data: DataOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (reference layout).")],
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 15,
    widths: WidthsOption = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, Nesterov, cosine decay).")] = 0.2,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 128,
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
    """Train every width of a slimmable model at once (US models: sandwich rule + inplace distillation)."""
    import torch

    from planner.accuracy.evaluate import evaluate
    from planner.accuracy.train import check_model, check_settings, start_from_source, train
    from planner.models.sources import is_source
    from planner.nn.checkpoint import save_checkpoint
    from planner.search.lut import default_granularity

    check_settings(epochs, batch_size, lr, per_layer, granularity)
    _set_threads(threads)
    dataset = _load(data, None, input_size)
    torch.manual_seed(seed)
    teacher = None
    if is_source(model_name):
        model, teacher = start_from_source(model_name, dataset, checkpoint, parse_widths(widths), universal)
    elif checkpoint is not None or universal:
        raise PlannerError("--checkpoint and --universal are for torchvision:, timm: and FILE.py: models")
    else:
        model = _build(model_name, dataset, None, in_channels, num_classes, input_size, parse_widths(widths))
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
    with Progress(*columns, TextColumn("{task.fields[losses]}"), console=console) as progress:
        steps = -(-dataset.size("train") // batch_size)
        task = progress.add_task("train", total=epochs * steps, epoch=f"1/{epochs}", losses="")

        def show(step) -> None:
            shown = list(step.losses.items())[:4]
            losses = "loss " + " ".join(
                f"{w:g}x:{loss:.3f}" if isinstance(w, float) else f"{w}:{loss:.3f}" for w, loss in shown
            )
            progress.update(task, advance=1, epoch=f"{step.epoch + 1}/{epochs}", losses=losses)

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
            teacher=teacher,
        )
    extra = {"dataset": dataset.name, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
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
    config_files: ConfigOption = None,
    split: Annotated[str, typer.Option(help="Split to score: val, train or calibration.")] = "val",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 256,
    calibration_batches: BatchesOption = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory (accuracy table).")] = Path(
        "out"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
    in_channels: InChannelsOption = None,
    num_classes: NumClassesOption = None,
    input_size: InputSizeOption = None,
) -> None:
    """Top-1 (and top-5) per configuration, added to OUT/accuracy.parquet under profile's config ids.

    Configurations without trained BN statistics are calibrated first on the data's calibration split,
    or use the statistics a `planner calibrate` checkpoint carries.
    """
    from planner.accuracy.evaluate import evaluate
    from planner.accuracy.table import accuracy_rows, checkpoint_digest, write_accuracy
    from planner.models.sources import is_source
    from planner.nn.calibrate import stored_calibrations
    from planner.nn.checkpoint import read_checkpoint

    saved = read_checkpoint(checkpoint)
    dataset = _load(data, saved, input_size)
    # the original network's weights (a source, plain state dict) are converted at the widths asked for
    converted = parse_widths(widths) if is_source(model_name) and not saved["planner"] else None
    model = _build(model_name, dataset, saved, in_channels, num_classes, input_size, converted)
    configs = _configs(model, parse_widths(widths), config_files)
    batches = dataset.batches(split, batch_size)
    calibration = dataset.batches("calibration", batch_size, shuffle=True) if calibration_batches > 0 else []
    results = evaluate(
        model,
        configs,
        batches,
        calibration,
        calibration_batches,
        stored_calibrations(model, saved["planner"]),
    )
    rows = accuracy_rows(model.name, results, dataset.name, split, checkpoint_digest(checkpoint))
    path = write_accuracy(out, rows)
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
    console.print(f"wrote {len(rows)} rows to {path}", highlight=False)


@app.command("calibrate")
def calibrate_command(
    model_name: ModelArgument,
    checkpoint: CheckpointOption,
    data: DataOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibrated checkpoint to write.")],
    widths: WidthsOption = None,
    config_files: ConfigOption = None,
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
    from planner.nn.calibrate import calibrate, save_calibrated_checkpoint
    from planner.nn.checkpoint import read_checkpoint

    if not widths and not config_files:
        raise PlannerError("give --widths or --config: the configurations to calibrate")
    saved = read_checkpoint(checkpoint)
    dataset = _load(data, saved, input_size)
    model = _build(model_name, dataset, saved, in_channels, num_classes, input_size)
    configs = _configs(model, parse_widths(widths), config_files)
    calibration = dataset.batches("calibration", batch_size, shuffle=True)
    done = [calibrate(model, config, calibration, batches) for config in configs]
    path = save_calibrated_checkpoint(model, output, done, extra=saved["planner"])
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory (accuracy table).")] = Path(
        "out"
    ),
) -> None:
    """Add accuracy measured elsewhere (model, width or config_id, metric, value[, dataset, split])."""
    from planner.accuracy.table import read_accuracy_csv, write_accuracy

    rows = read_accuracy_csv(csv_file)
    path = write_accuracy(out, rows)
    models = ", ".join(sorted(rows["model"].unique()))
    console.print(f"imported {len(rows)} rows ({models}) into {path}", highlight=False)
