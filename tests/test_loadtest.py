"""`planner loadtest`: schedules, the interference it starts and always ends, and a short real run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run
from ladder_helpers import deploy_ladder
from PIL import Image

from planner.deploy.loadtest import (
    Phase,
    fit_schedule,
    interference,
    max_spinners,
    parse_schedule,
    run_loadtest,
)
from planner.errors import PlannerError


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    return deploy_ladder(tmp_path_factory.mktemp("loadtest"))


def test_schedules():
    assert parse_schedule("quiet:20s, spin1:1.5s,quiet:500ms") == [Phase(0, 20), Phase(1, 1.5), Phase(0, 0.5)]
    assert fit_schedule([Phase(1, 2)], 5) == [Phase(1, 2), Phase(0, 3)]
    with pytest.raises(PlannerError, match="longer than --duration"):
        fit_schedule([Phase(1, 2)], 1)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("quiet:20s;spin2:20s", "is not a phase"),
        ("spin:20s", "is not a phase"),
        ("spin0:5s", "asks for no spinners"),
        ("quiet:20", "with its unit"),
        ("quiet:0s", "longer than 0"),
        (f"spin{max_spinners() + 1}:1s", "cores"),
    ],
)
def test_bad_schedules_are_one_line_exit_2(capsys, deployed, tmp_path, schedule, message):
    code, _, err = run(capsys, "loadtest", "-m", deployed, "--interference", schedule, "-o", tmp_path)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_other_bad_input(capsys, deployed, tmp_path):
    code, _, err = run(capsys, "loadtest", "-m", deployed, "--rate", "10", "--concurrency", "2")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "loadtest", "-m", tmp_path / "none.json", "--interference", "quiet:1s")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "loadtest", "-m", deployed, "--interference", "quiet:1s", "--rate", "0")
    assert code == 2 and "--rate must be positive" in err


def test_the_interference_is_ended_even_when_the_test_is_interrupted():
    with pytest.raises(KeyboardInterrupt):
        with interference([Phase(1, 30.0)]) as running:
            deadline = time.monotonic() + 10
            while not running._processes and time.monotonic() < deadline:
                time.sleep(0.01)
            spinners = list(running._processes)
            assert len(spinners) == 1 and spinners[0].poll() is None
            raise KeyboardInterrupt
    assert all(process.poll() is not None for process in spinners)


def test_a_short_load_test_against_the_fixed_rungs(capsys, deployed, tmp_path):
    code, out, err = run(capsys, "loadtest", "-m", deployed, "--interference", "quiet:1s,spin1:1s",
                         "--duration=2s", "--budget=50ms", "--no-memory", "-o", tmp_path)  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "loadtest.json").read_text())
    assert [run["run"] for run in report["runs"]] == ["adaptive", "fixed 0.25x", "fixed 0.5x", "fixed 0.75x"]
    windows = pd.read_csv(tmp_path / "loadtest.csv")
    assert windows.groupby("run")["second"].apply(list).to_dict()["adaptive"] == [0, 1]
    assert list(windows.loc[windows["run"] == "adaptive", "spinners"]) == [0, 1]
    fixed = windows[windows["run"] == "fixed 0.25x"]
    assert (fixed["rung_label"] == "0.25x").all() and (fixed["accuracy"] == 80.0).all()
    # a 50-ms budget for a model of microseconds: the ladder serves the most accurate rung throughout
    adaptive = report["runs"][0]
    assert adaptive["accuracy"] == pytest.approx(92.0) and adaptive["windows_within_pct"] == 100
    assert report["verdict"]["best_fixed_holding"] == "fixed 0.75x"
    assert "adaptive" in out and "loadtest.png" in out
    with Image.open(tmp_path / "loadtest.png") as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_an_open_loop_run_and_a_budget_no_rung_meets(capsys, deployed, tmp_path):
    code, out, err = run(capsys, "loadtest", "-m", deployed, "--interference", "quiet:1s", "--rate", "200",
                         "--budget", "100ns", "--no-fixed", "--no-memory", "-o", tmp_path)  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "loadtest.json").read_text())
    (adaptive,) = report["runs"]
    assert 150 <= adaptive["requests"] <= 201  # 200 requests scheduled in the second
    assert adaptive["windows_within_pct"] == 0 and adaptive["accuracy"] == pytest.approx(80.0)
    assert "no rung meets the budget" in out and "does NOT hold" in out


def _spinners_alive() -> list[int]:
    """Children of this process running the spin loop."""
    alive = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(os.getpid()) and b"deadline" in command:
            alive.append(int(status.parent.name))
    return alive


def test_an_interrupted_load_test_ends_its_spinners(deployed, tmp_path, monkeypatch):
    from profilers.ladder import Ladder

    serve, started = Ladder.serve, []

    def interrupted(self, x):
        started.append(started[0] if started else time.monotonic())
        if time.monotonic() - started[0] > 1.0:  # Ctrl-C one second into the busy phase
            assert _spinners_alive()
            raise KeyboardInterrupt
        return serve(self, x)

    monkeypatch.setattr(Ladder, "serve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_loadtest(deployed, tmp_path, "spin1:30s", memory=False, fixed=False, say=lambda line: None)
    assert _spinners_alive() == []
