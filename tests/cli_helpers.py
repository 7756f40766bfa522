"""Helpers the CLI and profiling tests share (imported by name: pytest puts tests/ on sys.path)."""

import shutil
from pathlib import Path

import pytest

from planner.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `planner ARGV` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """`run_cli` with the arguments as they come (paths, numbers): each is passed as its text."""
    return run_cli([str(arg) for arg in argv], capsys)


def fresh_out(exports: Path, tmp_path: Path) -> Path:
    """A results directory of its own, holding the shared exports (so no test exports again)."""
    out = tmp_path / "out"
    shutil.copytree(exports, out)
    return out
