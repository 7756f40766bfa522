"""Pareto front: agrees with the definition, ignores failed and estimated rows, scales to 10^5 points."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from selection_tables import accuracy_row, four_widths, latency_row

from planner.errors import PlannerError
from planner.plan.pareto import candidates, front, pareto_mask


def dominated_by_definition(accuracy, latency, memory):
    """O(n^2) reference: on the front when nothing is at least as good everywhere and better once."""
    memory = np.where(np.isnan(memory), np.inf, memory)
    result = np.zeros(len(accuracy), dtype=bool)
    for i in range(len(accuracy)):
        if not (np.isfinite(accuracy[i]) and np.isfinite(latency[i])):
            continue
        at_least = (accuracy >= accuracy[i]) & (latency <= latency[i]) & (memory <= memory[i])
        better = (accuracy > accuracy[i]) | (latency < latency[i]) | (memory < memory[i])
        result[i] = not (at_least & better).any()
    return result


@pytest.mark.parametrize("seed", range(40))
def test_front_matches_definition_with_ties_duplicates_and_nan(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    accuracy = rng.integers(0, 6, n).astype(float)
    latency = rng.integers(0, 6, n).astype(float)
    memory = rng.integers(0, 6, n).astype(float)
    memory[rng.random(n) < 0.1] = np.nan
    latency[rng.random(n) < 0.05] = np.nan
    assert (
        pareto_mask(accuracy, latency, memory) == dominated_by_definition(accuracy, latency, memory)
    ).all()


def test_known_front():
    accuracy = np.array([70.0, 80.0, 75.0, 90.0, 90.0])
    latency = np.array([1.0, 2.0, 3.0, 5.0, 5.0])
    memory = np.array([10.0, 10.0, 10.0, 20.0, 15.0])
    # 75% at 3 ms is beaten by 80% at 2 ms; the 90% copy with more memory is beaten by its twin
    assert pareto_mask(accuracy, latency, memory).tolist() == [True, True, False, False, True]
    # without memory the 90% points are equal, and neither dominates the other
    assert pareto_mask(accuracy, latency).tolist() == [True, True, False, True, True]


def test_front_of_1e5_candidates_is_fast_and_correct_on_a_sample():
    rng = np.random.default_rng(0)
    n = 100_000
    latency, memory = rng.random(n), rng.random(n)
    accuracy = latency + memory + rng.normal(0, 0.05, n)  # the realistic trade-off: faster is worse
    start = time.perf_counter()
    mask = pareto_mask(accuracy, latency, memory)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0  # measured ~0.2 s here; the bound is generous for a noisy shared machine
    on_front = np.flatnonzero(mask)
    assert 0 < on_front.size < n
    for i in rng.choice(n, 200, replace=False):  # spot-check against the definition
        beats = (accuracy >= accuracy[i]) & (latency <= latency[i]) & (memory <= memory[i])
        beats &= (accuracy > accuracy[i]) | (latency < latency[i]) | (memory < memory[i])
        assert mask[i] == (not beats.any())


def test_candidates_join_latency_with_accuracy_and_skip_failed_and_estimated_rows():
    configs, latency, accuracy = four_widths()
    failed = latency_row(configs[0], "cpu", 0.1, status="error", error="crashed", run_id="run-2")
    guessed = latency_row(configs[1], "cpu", 0.1, estimated=True, run_id="run-3")
    other_target = latency_row(configs[2], "openvino-cpu", 0.1)
    latency = pd.concat([latency, pd.DataFrame([failed, guessed, other_target])], ignore_index=True)
    table = candidates(latency, accuracy, "cpu")
    assert sorted(table["width"]) == [0.25, 0.5, 0.75, 1.0]
    assert table.set_index("width").loc[0.5, "p50_ms"] == 2.0  # the estimate did not replace the measurement
    assert table["latency_ms"].tolist() == pytest.approx([1.2, 2.4, 3.6, 4.8])  # p90 by default

    with_estimates = candidates(latency, accuracy, "cpu", allow_estimates=True)
    assert with_estimates.set_index("width").loc[0.5, "p50_ms"] == 2.0  # a measurement still wins


def test_candidates_take_the_newest_run_of_a_configuration():
    configs, latency, accuracy = four_widths()
    rerun = latency_row(configs[3], "cpu", 9.0, run_id="run-2", timestamp="2026-11-23T21:00:00+00:00")
    latency = pd.concat([latency, pd.DataFrame([rerun])], ignore_index=True)
    table = candidates(latency, accuracy, "cpu", metric="p50")
    assert table.set_index("width").loc[1.0, "p50_ms"] == 9.0
    assert table.set_index("width").loc[1.0, "bound_ms"] == pytest.approx(9.0 * 1.02)  # CI upper bound


def test_only_estimates_needs_the_flag():
    configs, latency, accuracy = four_widths()
    latency["estimated"] = True
    with pytest.raises(PlannerError, match="--allow-estimates"):
        candidates(latency, accuracy, "cpu")
    assert len(candidates(latency, accuracy, "cpu", allow_estimates=True)) == 4


def test_missing_results_name_the_command_that_makes_them():
    configs, latency, accuracy = four_widths()
    with pytest.raises(PlannerError, match="planner profile --target gpu-tensorrt"):
        candidates(latency, accuracy, "gpu-tensorrt")
    with pytest.raises(PlannerError, match="planner evaluate s_cnn_small"):
        candidates(latency, accuracy.iloc[0:0], "cpu")


def test_configurations_without_accuracy_are_counted_not_ranked():
    configs, latency, accuracy = four_widths()
    table = candidates(latency, accuracy.iloc[1:], "cpu")
    assert len(table) == 3 and table.attrs["unscored"] == 1


def test_several_models_need_a_choice():
    configs, latency, accuracy = four_widths()
    other = latency.assign(model="s_other")
    both = pd.concat([latency, other], ignore_index=True)
    with pytest.raises(PlannerError, match="--model"):
        candidates(both, accuracy, "cpu")
    assert len(candidates(both, accuracy, "cpu", model="s_cnn_small")) == 4


def test_front_of_candidates_drops_a_slower_less_accurate_width():
    configs, latency, accuracy = four_widths(latencies=(1.0, 3.0, 2.0, 4.0), accuracies=(80, 88, 92, 94))
    table = front(candidates(latency, accuracy, "cpu"))
    assert table["width"].tolist() == [0.25, 0.75, 1.0]


def test_accuracy_prefers_measured_over_imported():
    configs, latency, accuracy = four_widths()
    imported = accuracy_row(configs[0], 10.0, source="imported", timestamp="2026-11-24T00:00:00+00:00")
    accuracy = pd.concat([accuracy, pd.DataFrame([imported])], ignore_index=True)
    table = candidates(latency, accuracy, "cpu")
    assert table.set_index("width").loc[0.25, "accuracy"] == 80.0
