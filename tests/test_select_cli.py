"""`planner select` as a user runs it: the choice, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from selection_tables import four_widths, write_results

from planner.cli import main


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def results(tmp_path):
    configs, latency, accuracy = four_widths()  # p90: 1.2, 2.4, 3.6, 4.8 ms; top-1 80, 88, 92, 94
    return write_results(tmp_path / "out", latency, accuracy)


def test_json_choice_runner_up_and_ladder(capsys, results):
    code, out, err = run(
        capsys, "select", "--target", "cpu", "--max-latency", "4ms", "--out", str(results), "--json"
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["fits"] is True
    assert answer["choice"]["width"] == 0.75 and answer["choice"]["accuracy_top1"] == 92.0
    assert answer["choice"]["bound_ms"] == pytest.approx(3.6)
    assert answer["runner_up"]["width"] == 0.5
    assert [rung["width"] for rung in answer["ladder"]] == [0.25, 0.5, 0.75]
    assert answer["budget"] == {"metric": "p90", "max_latency_ms": 4.0, "max_memory_bytes": None}


def test_table_output_names_choice_and_runner_up(capsys, results):
    code, out, _ = run(capsys, "select", "-t", "cpu", "--max-latency", "4000us", "--out", str(results))
    assert code == 0
    assert "choice" in out and "runner-up" in out and "0.75x" in out and "0.5x" in out


def test_p50_metric_and_target_alias(capsys, results):
    code, out, _ = run(capsys, "select", "-t", "local", "--max-latency", "4.1ms", "--metric", "p50",
                       "--out", str(results), "--json")  # fmt: skip
    assert code == 0
    assert json.loads(out)["choice"]["width"] == 1.0  # p50 4.0 ms, upper bound 4.08 ms


def test_default_budget_comes_from_the_target(capsys, results):
    code, out, _ = run(capsys, "select", "-t", "cpu", "--out", str(results), "--json")
    assert code == 0
    assert json.loads(out)["budget"]["max_latency_ms"] == 50.0  # targets/cpu.toml


def test_nothing_fits_shows_the_fastest_and_exits_1(capsys, results):
    code, out, _ = run(capsys, "select", "-t", "cpu", "--max-latency", "1ms", "--out", str(results))
    assert code == 1
    assert "nothing fits" in out and "0.25x" in out
    code, out, _ = run(capsys, "select", "-t", "cpu", "--max-latency", "1ms", "--out", str(results), "--json")
    answer = json.loads(out)
    assert code == 1 and answer["fits"] is False and answer["choice"] is None
    assert answer["fastest"]["width"] == 0.25


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-latency", "-3ms"], "must be positive"),
        (["--max-latency", "20"], "has no unit"),
        (["--max-latency", "20 fortnights"], "unknown latency unit"),
        (["--max-memory", "64 bananas"], "unknown memory unit"),
        (["--max-memory", "lots"], "malformed memory"),
        (["--metric", "p95"], "unknown --metric"),
    ],
)
def test_bad_budgets_are_one_line_usage_errors(capsys, results, argv, message):
    code, out, err = run(capsys, "select", "-t", "cpu", "--out", str(results), *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_target_without_results_names_the_command(capsys, results):
    code, _, err = run(capsys, "select", "-t", "openvino-cpu", "--max-latency", "5ms", "--out", str(results))
    assert code == 2
    assert "planner profile --target openvino-cpu" in err


def test_empty_results_directory_names_the_command(capsys, tmp_path):
    code, _, err = run(capsys, "select", "-t", "cpu", "--max-latency", "5ms", "--out", str(tmp_path))
    assert code == 2 and "planner profile" in err


def test_unknown_target_lists_the_known_ones(capsys, results):
    code, _, err = run(capsys, "select", "-t", "toaster", "--max-latency", "5ms", "--out", str(results))
    assert code == 2 and "unknown target 'toaster'" in err and "cpu" in err


def test_memory_budget(capsys, tmp_path):
    configs, latency, accuracy = four_widths()
    latency["peak_rss_bytes"] = [1_000_000, 2_000_000, 3_000_000, 4_000_000]
    results = write_results(tmp_path / "out", latency, accuracy)
    code, out, _ = run(capsys, "select", "-t", "cpu", "--max-latency", "1s", "--max-memory", "2.5MB",
                       "--out", str(results), "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["choice"]["width"] == 0.5


def test_conflicting_flags(capsys, results, tmp_path):
    code, _, err = run(capsys, "select", "-t", "cpu", "--out", str(results), "--no-measure",
                       "--checkpoint", str(tmp_path / "w.pt"))  # fmt: skip
    assert code == 2 and "--checkpoint" in err and "--no-measure" in err


def test_estimates_only_with_the_flag(capsys, tmp_path):
    configs, latency, accuracy = four_widths()
    latency["estimated"] = True
    results = write_results(tmp_path / "out", latency, accuracy)
    code, _, err = run(capsys, "select", "-t", "cpu", "--max-latency", "4ms", "--out", str(results))
    assert code == 2 and "--allow-estimates" in err
    code, out, _ = run(capsys, "select", "-t", "cpu", "--max-latency", "4ms", "--out", str(results),
                       "--allow-estimates", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["choice"]["estimated"] is True


def test_a_choice_within_the_spread_says_so_in_text_and_json(capsys, results):
    argv = ["select", "--target", "cpu", "--max-latency", "3.65ms", "--out", str(results)]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "0.75x fits by 1.4%, within the run-to-run spread (+-2.0%)" in " ".join(out.split())
    code, out, _ = run(capsys, *argv, "--json")
    answer = json.loads(out)
    assert answer["within_noise"] is True
    assert answer["margins"][0]["config_id"] == answer["choice"]["config_id"]
    assert answer["margins"][0]["margin"] == pytest.approx(0.05 / 3.65)


def test_a_choice_from_a_run_off_the_machines_earlier_runs_says_so_in_text_and_json(capsys, tmp_path):
    configs, latency, accuracy = four_widths()
    # `planner profile` marked the 0.75x row: its median 3.0 ms against 4.0 ms in the earlier runs
    latency = latency.assign(off_history=pd.array([False, False, True, False], dtype="boolean"),
                             history_p50_ms=[1.0, 2.0, 4.0, 4.0])  # fmt: skip
    results = write_results(tmp_path / "out", latency, accuracy)
    argv = ["select", "--target", "cpu", "--max-latency", "4ms", "--out", str(results)]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    said = " ".join(out.split())
    assert "unsettled: 0.75x fits by 10.0%, beyond the run-to-run spread (+-2.0%), ran 25% faster than " \
           "this machine's earlier runs of it; a re-run may choose otherwise" in said  # fmt: skip
    code, out, _ = run(capsys, *argv, "--json")
    answer = json.loads(out)
    assert answer["within_noise"] is True and answer["choice"]["width"] == 0.75
    assert answer["margins"][0]["history_move"] == pytest.approx(-0.25)
