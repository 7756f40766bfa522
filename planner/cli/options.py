"""Options shared by the commands, so that one name has one meaning everywhere.

`--out DIR` is always the results directory (latency and accuracy tables, exported artifacts, logs);
`-o/--output PATH` is what the command writes (a checkpoint, a JSON file, the deploy or report
directory); `--widths 0.25,0.5,1.0` gives widths (repeatable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.errors import PlannerError

DEFAULT_RESULTS_DIR = Path("out")

ResultsOption = Annotated[
    Path,
    typer.Option("--out", help="Results directory: latency and accuracy tables, artifacts (default: out)."),
]
WidthsOption = Annotated[
    list[str] | None,
    typer.Option("--widths", "-w", help="Widths, e.g. 0.25,0.5,1.0 (default: every trained width)."),
]
ConfigFilesOption = Annotated[
    list[Path] | None, typer.Option("--config", help="Per-layer width configuration JSON (repeatable).")
]
ModelArgument = Annotated[
    str, typer.Argument(metavar="MODEL", help="Registered model, or torchvision:NAME, timm:NAME, FILE.py:FN.")
]
DataOption = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="'digits', 'digits-distorted', an image-folder directory or an .npz file (x, y)."
    ),
]
# a network's shape: what the checkpoint records, else what the data has (train) or the model's default
InChannelsOption = Annotated[
    int | None, typer.Option(help="Input channels (default: checkpoint, data, model).")
]
NumClassesOption = Annotated[
    int | None, typer.Option(help="Output classes (default: checkpoint, data, model).")
]
InputSizeOption = Annotated[
    int | None, typer.Option(help="Input height and width (default: checkpoint, data, model).")
]
ChannelMultipleOption = Annotated[
    int | None,
    typer.Option(
        "--channel-multiple",
        help="torchvision:, timm:, FILE.py: models: round each width's channel counts to a multiple of "
        "this (default 8, which runs fastest on CPUs; 1 scales exactly). A checkpoint keeps its own.",
    ),
]
LutOption = Annotated[
    Path | None, typer.Option("--lut", help="Latency table (default: OUT/lut/<target>-<model>.json).")
]
TargetsDirOption = Annotated[
    Path | None,
    typer.Option("--targets-dir", help="Directory of extra <name>.toml targets (searched first)."),
]


def parse_widths(values: list[str] | None) -> list[float] | None:
    """`--widths 0.5 --widths 1.0` or `--widths 0.5,1.0` as floats; None when not given."""
    if not values:
        return None
    widths = []
    for value in values:
        for part in value.split(","):
            try:
                widths.append(float(part))
            except ValueError:
                raise PlannerError(f"--widths takes numbers such as 0.5,1.0; got {part!r}") from None
    return widths
