"""One way to get a slimmable network and its configurations: from a name, a checkpoint, or both.

Every command and library stage builds its model here, so a checkpoint's recorded build options, its
weights and its stored BN calibrations are applied the same way everywhere:

    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    model = build_model(checkpoint="digits.pt")              # a planner checkpoint names its model
    configs = configurations(model, widths=[0.5, 1.0], config_files=[Path("plan.json")])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import PlannerError
from planner.nn.calibrate import stored_calibrations
from planner.nn.checkpoint import check_state_dict, read_checkpoint
from planner.widths import WidthConfig

if TYPE_CHECKING:
    from planner.accuracy.data import Dataset
    from planner.models.base import SlimmableNetwork

SHAPE_OPTIONS = ("in_channels", "num_classes", "input_size")


def build_model(
    name: str | None = None,
    checkpoint: Path | str | None = None,
    *,
    dataset: Dataset | None = None,
    **options: Any,
) -> SlimmableNetwork:
    """The slimmable network, in eval mode, with the checkpoint's weights and BN calibrations.

    A planner checkpoint records its build options (name, widths, classes, input size, channels), so the
    file alone rebuilds the model; a reference checkpoint (plain state dict) needs `name` and the options
    it was trained with. Explicit `options` must agree with what the checkpoint records. With `dataset`,
    the shape options default to the data's and must match it (training and evaluation).
    """
    from planner.models import create_model
    from planner.models.sources import build_source, is_source

    state, recorded = None, {}
    if checkpoint is not None:
        loaded = read_checkpoint(checkpoint)
        state, recorded = loaded["model"], dict(loaded["planner"])
    recorded_name = recorded.pop("name", None)
    if name and recorded_name and name != recorded_name:
        raise PlannerError(f"checkpoint {checkpoint} holds a {recorded_name}, not a {name}; drop --model")
    name = name or recorded_name
    if not name:
        raise PlannerError("which model? give --model NAME (or a checkpoint saved by planner)")
    universal = bool(options.pop("universal", None) or recorded.get("universal", False))
    asked_multiple = options.pop("channel_multiple", None)
    given = {key: value for key, value in options.items() if value is not None}
    if state is not None and dataset is not None:  # training and evaluation: the data must fit the weights
        for key, value in given.items():
            if key in SHAPE_OPTIONS and key in recorded and recorded[key] != value:
                raise PlannerError(
                    f"--{key.replace('_', '-')} {value} does not match the checkpoint {checkpoint} "
                    f"({recorded[key]})"
                )
    build = {key: value for key, value in recorded.items() if key in (*SHAPE_OPTIONS, "widths")}
    build.update(given)
    if dataset is not None:
        build.update(_dataset_shape(dataset, build, given))
    if is_source(name):
        # a plain state dict is the original network's weights: loaded, reordered and converted
        original = state if state is not None and not recorded else None
        reorder = state is None or original is not None  # planner's weights are reordered already
        multiple = _channel_multiple(recorded, checkpoint, asked_multiple)
        model = build_source(
            name, universal=universal, reorder=reorder, state=original, channel_multiple=multiple, **build
        )
        state = None if original is not None else state
    elif universal:
        raise PlannerError(f"--universal is for converted networks; {name} is built universal or not")
    elif asked_multiple is not None:
        raise PlannerError(
            f"--channel-multiple is for converted networks (torchvision:, timm:, FILE.py:); {name} has its "
            "own channel counts at each width"
        )
    else:
        model = create_model(name, **build)
    if state is not None:
        check_state_dict(model, state)
        model.load_state_dict(state, strict=True)
        model.calibrations = stored_calibrations(model, recorded)
    return model.eval()


def _channel_multiple(recorded: dict[str, Any], checkpoint: Path | str | None, asked: int | None) -> int:
    """The rounding a converted network is built with: a planner checkpoint's own (recorded since it
    became a choice, exact scaling (1) before that), since its weights and BN statistics have those
    shapes; for a new conversion `asked`, else `CHANNEL_MULTIPLE`."""
    from planner.models.convert import CHANNEL_MULTIPLE, is_channel_multiple

    if asked is not None and not is_channel_multiple(asked):
        raise PlannerError(f"--channel-multiple must be a positive integer, got {asked!r}")
    if not recorded:
        return CHANNEL_MULTIPLE if asked is None else asked
    value = recorded.get("channel_multiple", 1)
    if not is_channel_multiple(value):
        raise PlannerError(
            f"checkpoint {checkpoint} records channel_multiple {value!r}, not a positive integer"
        )
    if asked is not None and asked != value:
        raise PlannerError(
            f"checkpoint {checkpoint} was trained with --channel-multiple {value}, and its weights have "
            f"those channel counts: drop --channel-multiple {asked}"
        )
    return value


def _dataset_shape(dataset: Dataset, build: dict[str, Any], given: dict[str, Any]) -> dict[str, int]:
    """The data's shape, which must match what the checkpoint records or the options give."""
    classes = build.get("num_classes")
    if classes is not None and classes != dataset.num_classes:
        origin = "--num-classes" if "num_classes" in given else "the checkpoint"
        raise PlannerError(
            f"dataset {dataset.name} has {dataset.num_classes} classes but {origin} has {classes}"
        )
    for key in ("in_channels", "input_size"):
        value = getattr(dataset, key)
        if build.get(key) is not None and build[key] != value:
            raise PlannerError(
                f"dataset {dataset.name} has {key.replace('_', ' ')} {value}, "
                f"the model takes {build[key]} (--{key.replace('_', '-')})"
            )
    return {
        "in_channels": dataset.in_channels,
        "num_classes": dataset.num_classes,
        "input_size": dataset.input_size,
    }


def load_checkpoint(model: SlimmableNetwork, path: str | Path) -> SlimmableNetwork:
    """Load a reference-format, plain or planner checkpoint into `model`, strictly, with its calibrations."""
    loaded = read_checkpoint(path)
    check_state_dict(model, loaded["model"])
    model.load_state_dict(loaded["model"], strict=True)
    model.calibrations = stored_calibrations(model, loaded["planner"])
    return model


def configurations(
    model: SlimmableNetwork,
    widths: Sequence[float] | None = None,
    config_files: Sequence[Path] | None = None,
    *,
    default_all: bool = True,
) -> list[WidthConfig]:
    """The configurations asked for: uniform widths and per-layer JSON files, each validated on `model`.

    Without either, every trained width (or nothing, with `default_all=False`). Duplicates collapse.
    """
    configs = [model.config(width) for width in widths or []]
    for path in config_files or []:
        loaded = WidthConfig.load(path)
        if loaded.model != model.name:
            raise PlannerError(f"{path} is a configuration of {loaded.model}, not of {model.name}")
        configs.append(model.config_from_channels(loaded.channels, loaded.width))
    if not configs and default_all:
        configs = [model.config(width) for width in model.widths]
    unique = {config.id: config for config in configs}
    return list(unique.values())


def one_configuration(model: SlimmableNetwork, width: float | None, config_file: Path | None) -> WidthConfig:
    """The single configuration of `--width W` or `--config FILE` (exactly one of them)."""
    if (width is None) == (config_file is None):
        raise PlannerError("give exactly one of --width or --config")
    (config,) = configurations(
        model, [width] if width is not None else None, [config_file] if config_file else None
    )
    return config
