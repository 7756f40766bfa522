"""The `planner` command. Each pipeline stage registers its commands from its own module."""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from planner.errors import PlannerError
from profilers.errors import ProfilerError

app = typer.Typer(
    name="planner",
    help="Profile slimmable networks on devices and pick the width to ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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


# Each module registers its commands on `app` when imported; one line per pipeline stage.
COMMAND_MODULES = [
    "models",
    "targets",
    "profile",
    "select",
    "train",
    "demo",
    "legr",
]


def _register_commands() -> None:
    for module in COMMAND_MODULES:
        import_module(f"planner.cli.{module}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2.

    typer reports its own usage errors (exit 2) in standalone mode; ours are raised as PlannerError or
    ProfilerError from inside a command.
    """
    _register_commands()
    try:
        app(args=argv)
    except (PlannerError, ProfilerError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
