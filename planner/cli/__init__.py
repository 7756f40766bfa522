"""The `planner` command. Each pipeline stage registers its commands from its own module."""

from __future__ import annotations

import sys

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


def _register_commands() -> None:
    # Imported for their side effect: each module adds its commands to `app`.
    from planner.cli import (
        models,  # noqa: F401
        select,  # noqa: F401
        targets,  # noqa: F401
    )


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
