"""Selection over width x precision, with accuracy differences the paired test cannot tell from noise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from cli_helpers import run_cli
from selection_tables import accuracy_row, latency_row, latency_table, small_model, write_results

from planner.plan.pareto import candidates
from planner.plan.select import Budget, select
from planner.stats import encode_hits, wilson_interval

N = 400


def _hits(wrong: range) -> np.ndarray:
    hits = np.ones(N, dtype=bool)
    hits[list(wrong)] = False
    return hits


def _scored(config, hits: np.ndarray, **overrides) -> dict:
    value = 100.0 * hits.mean()
    low, high = wilson_interval(int(hits.sum()), N)
    fields = {"target": "cpu", "precision": "fp32", "runtime": "onnxruntime", "n": N}
    fields.update(ci_low=low, ci_high=high, hits=encode_hits(hits), **overrides)
    return accuracy_row(config, value, **fields)


def _tables():
    """0.25x fp32 (slow), its int8 (fast, 2 images worse), 1.0x fp32 (slowest, 30 images better)."""
    model = small_model()
    narrow, wide = model.config(0.25), model.config(1.0)
    latency = latency_table(
        [
            latency_row(narrow, "cpu", 2.0),
            latency_row(narrow, "cpu", 1.0, precision="int8"),
            latency_row(wide, "cpu", 4.0),
        ]
    )
    accuracy = pd.DataFrame(
        [
            _scored(narrow, _hits(range(40))),
            _scored(narrow, _hits(range(42)), precision="int8"),
            _scored(wide, _hits(range(10))),
            # torch's fp32 figure for the narrow width: never stands in for int8
            accuracy_row(narrow, 99.0, target="", runtime="torch", precision="fp32"),
        ]
    )
    return latency, accuracy


def test_candidates_join_on_precision_and_prefer_the_runtime_accuracy():
    latency, accuracy = _tables()
    table = candidates(latency, accuracy, "cpu", metric="p50")
    by = table.set_index(["width", "precision"])
    assert set(by.index) == {(0.25, "fp32"), (0.25, "int8"), (1.0, "fp32")}
    assert by.loc[(0.25, "fp32"), "accuracy"] == 90.0  # the runtime's, not torch's 99%
    assert by.loc[(0.25, "int8"), "accuracy"] == 89.5
    assert by.loc[(0.25, "int8"), "accuracy_runtime"] == "onnxruntime"
    # without the runtime's int8 row, int8 is unscored: torch's FP32 number does not describe it
    runtime_int8 = (accuracy["precision"] == "int8") & (accuracy["runtime"] == "onnxruntime")
    table = candidates(latency, accuracy[~runtime_int8], "cpu", metric="p50")
    assert set(table["precision"]) == {"fp32"} and table.attrs["unscored"] == 1


def test_select_prefers_the_faster_when_the_difference_is_noise():
    latency, accuracy = _tables()
    table = candidates(latency, accuracy, "cpu", metric="p50")
    budget = Budget(2.5, "p50")  # the wide one does not fit
    selection = select(table, budget)
    assert (selection.choice["width"], selection.choice["precision"]) == (0.25, "int8")
    assert "not significantly less accurate on the same 400 images" in selection.significance_note
    assert selection.runner_up["precision"] == "fp32"
    plain = select(table, budget, significance=False)
    assert (plain.choice["width"], plain.choice["precision"]) == (0.25, "fp32")
    assert plain.significance_note is None
    # A real difference (30 images, all one way) is kept: 1.0x stays the choice when it fits.
    wide = select(table, Budget(10.0, "p50"))
    assert wide.choice["width"] == 1.0 and wide.significance_note is None


def test_select_cli_says_why_and_no_significance_turns_it_off(tmp_path, capsys):
    latency, accuracy = _tables()
    results = write_results(tmp_path / "out", latency, accuracy)
    argv = [
        "select",
        "--target",
        "cpu",
        "--out",
        str(results),
        "--max-latency",
        "2.5ms",
        "--metric",
        "p50",
    ]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "within noise: 0.25x int8" in out and "95% interval" in out
    code, out, _ = run_cli([*argv, "--json"], capsys)
    report = json.loads(out)
    assert report["choice"]["precision"] == "int8" and report["significance_note"]
    assert report["choice"]["accuracy_images"] == N
    code, out, _ = run_cli([*argv, "--json", "--no-significance"], capsys)
    report = json.loads(out)
    assert report["choice"]["precision"] == "fp32" and report["significance_note"] is None
