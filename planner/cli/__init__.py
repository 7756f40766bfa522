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


# Each module registers its commands on `app` when imported; one line per pipeline stage.
COMMAND_MODULES = [
    "models",
    "targets",
    "profile",
    "select",
    "train",
    "demo",
    "legr",
    "loadtest",
]


def _register_commands() -> None:
    for module in COMMAND_MODULES:
        import_module(f"planner.cli.{module}")


# typer re-exports only BadParameter of click's usage errors; its base class is click's UsageError.
_UsageError = typer.BadParameter.__mro__[1]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input becomes one line on stderr and exit code 2, never a traceback.

    Usage errors (a missing option, a value of the wrong type) come from typer; ours are raised as
    PlannerError or ProfilerError from inside a command. Ctrl-C exits 130.
    """
    _register_commands()
    try:
        code = app(args=argv, prog_name="planner", standalone_mode=False)
    except _UsageError as error:
        message = error.format_message()
        if message.startswith("Usage:"):  # a command group without arguments: its help is the answer
            typer.echo(message, err=True)
        else:
            where = error.ctx.command_path if error.ctx is not None else "planner"
            typer.echo(f"error: {message} (see {where} --help)", err=True)
        sys.exit(2)
    except (PlannerError, ProfilerError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
