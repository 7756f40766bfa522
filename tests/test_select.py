"""Budgets, the choice under a budget, the ladder, and the US-Nets width proposal."""

from __future__ import annotations

import pandas as pd
import pytest
from selection_tables import (
    accuracy_row,
    accuracy_table,
    four_widths,
    latency_row,
    latency_table,
    small_model,
)

from planner.errors import PlannerError
from planner.plan.pareto import candidates
from planner.plan.select import Budget, propose_width, select
from planner.units import parse_duration_ms, parse_size_bytes


@pytest.mark.parametrize(
    ("text", "ms"),
    [("20ms", 20.0), ("1.5s", 1500.0), ("500us", 0.5), ("2e6ns", 2.0), (" 7 ms ", 7.0), (".5ms", 0.5)],
)
def test_durations(text, ms):
    assert parse_duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MB", 64_000_000), ("64MiB", 64 * 2**20), ("1GiB", 2**30), ("4096B", 4096), ("1.5KB", 1500)],
)
def test_sizes(text, size):
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [("-5ms", "positive"), ("0ms", "positive"), ("20", "no unit"), ("20 parsecs", "unknown latency unit"),
     ("20mss", "unknown"), ("ms", "malformed"), ("20ms20", "malformed"), ("nan ms", "malformed"),
     ("20MS", "unknown"), ("", "malformed")],
)  # fmt: skip
def test_bad_durations_are_refused(text, message):
    with pytest.raises(PlannerError, match=message):
        parse_duration_ms(text)


@pytest.mark.parametrize("text", ["-1MB", "64mb", "64", "64 TB", "0.1B", "1e400MB"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(PlannerError):
        parse_size_bytes(text)


def choose(latencies, accuracies, budget, metric="p90", **memory):
    configs, latency, accuracy = four_widths(latencies=latencies, accuracies=accuracies)
    table = candidates(latency, accuracy, "cpu", metric=metric)
    return select(table, Budget(budget, metric, **memory))


def test_most_accurate_that_fits_and_its_runner_up():
    # p90 = 1.2 x p50: 1.2, 2.4, 3.6, 4.8 ms
    selection = choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 4.0)
    assert selection.fits
    assert selection.choice["width"] == 0.75
    assert selection.runner_up["width"] == 0.5
    assert selection.ladder["width"].tolist() == [0.25, 0.5, 0.75]


def test_p50_budget_uses_the_upper_confidence_bound():
    # p50 of 1.0x is 4.0 ms, its upper bound 4.08 ms: a 4.05 ms budget does not admit it
    assert choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 4.05, metric="p50").choice["width"] == 0.75
    assert choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 4.1, metric="p50").choice["width"] == 1.0


def test_accuracy_ties_go_to_the_lower_latency():
    selection = choose((1.0, 3.0, 2.0, 4.0), (80, 92, 92, 94), 4.0)
    assert selection.choice["width"] == 0.75  # as accurate as 0.5x, and faster
    assert selection.runner_up["width"] == 0.5


def test_ladder_skips_configurations_that_are_slower_and_no_better():
    selection = choose((1.0, 3.0, 2.0, 4.0), (80, 85, 92, 94), 10.0)
    assert selection.ladder["width"].tolist() == [0.25, 0.75, 1.0]
    assert selection.ladder.iloc[-1]["config_id"] == selection.choice["config_id"]


def test_memory_budget_applies():
    configs, latency, accuracy = four_widths()
    latency["peak_rss_bytes"] = [1e6, 2e6, 3e6, 4e6]
    table = candidates(latency, accuracy, "cpu")
    assert select(table, Budget(100.0, "p90", 2_500_000)).choice["width"] == 0.5
    assert select(table, Budget(100.0, "p90", None)).choice["width"] == 1.0


def test_nothing_fits_reports_the_fastest():
    selection = choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 0.5)
    assert not selection.fits and selection.choice is None
    assert selection.fastest["width"] == 0.25
    assert selection.ladder.empty


def universal_table(widths, latencies, budget_metric="p90"):
    model = small_model()
    rows, scores = [], []
    for width, p50 in zip(widths, latencies, strict=True):
        config = model.config(width).__class__(model.name, model.config(width).channel_items, width)
        rows.append(latency_row(config, "cpu", p50))
        scores.append(accuracy_row(config, 50 + 40 * width))
    return candidates(latency_table(rows), accuracy_table(scores), "cpu", metric=budget_metric)


def test_proposal_is_the_widest_width_the_monotone_interpolation_fits():
    table = universal_table([0.25, 0.5, 0.75, 1.0], [1.0, 2.0, 3.0, 4.0])  # p90: 1.2, 2.4, 3.6, 4.8
    proposal = propose_width(table, Budget(3.0, "p90"), (0.25, 1.0))
    assert proposal is not None
    assert 0.5 < proposal.width < 0.75  # between the fitting 0.5x and the failing 0.75x
    assert proposal.predicted_bound_ms <= 3.0
    # linear data: PCHIP is exact, so the proposal is where 1.2 + 4.8 (w - 0.25) reaches 3.0
    assert proposal.width == pytest.approx(0.625, abs=0.006)


def test_no_proposal_when_the_widest_measured_width_fits_or_nothing_does():
    table = universal_table([0.25, 0.5, 0.75, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert propose_width(table, Budget(10.0, "p90"), (0.25, 1.0)) is None
    assert propose_width(table, Budget(1.0, "p90"), (0.25, 1.0)) is None


def test_proposal_never_overshoots_between_noisy_measurements():
    # 0.75x measured slower than 1.0x (noise): PCHIP stays within the data, nothing past 0.5x is proposed
    table = universal_table([0.25, 0.5, 0.75, 1.0], [1.0, 2.0, 4.0, 3.5])
    proposal = propose_width(table, Budget(2.5 * 1.2, "p90"), (0.25, 1.0))
    assert proposal is not None and proposal.width < 0.75
    assert pd.notna(proposal.predicted_bound_ms)


def test_a_choice_near_the_budget_says_it_is_within_the_run_to_run_spread():
    # p90: 1.2, 2.4, 3.6, 4.8 ms; every row's interval is p50 +- 2%.
    selection = choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 3.65)
    choice, missed = selection.margins
    assert (choice.label, missed.label) == ("0.75x", "1x")
    assert choice.margin == pytest.approx(0.05 / 3.65) and choice.spread == pytest.approx(0.02)
    assert choice.within_noise and selection.within_noise
    assert choice.describe() == "0.75x fits by 1.4%, within the run-to-run spread (+-2.0%)"
    assert missed.describe() == "1x misses by 31.5%, beyond the run-to-run spread (+-2.0%)"
    # Far from every budget edge: nothing to say.
    far = choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 4.0)
    assert not far.within_noise and [m.label for m in far.margins] == ["0.75x", "1x"]


def test_a_more_accurate_configuration_just_over_the_budget_is_reported():
    selection = choose((1.0, 2.0, 3.0, 4.0), (80, 88, 92, 94), 4.75)  # 1.0x's p90 4.8 misses by 1.05%
    assert selection.choice["width"] == 0.75
    missed = selection.margins[-1]
    assert missed.label == "1x" and missed.margin == pytest.approx(-0.05 / 4.75) and missed.within_noise
    assert selection.within_noise


def test_a_choice_measured_on_a_busy_machine_is_never_presented_as_settled():
    configs, latency, accuracy = four_widths(latencies=(1.0, 2.0, 3.0, 4.0), accuracies=(80, 88, 92, 94))
    latency = latency.assign(contended=[False, False, True, False])  # the 0.75x row ran beside a busy process
    selection = select(candidates(latency, accuracy, "cpu"), Budget(4.0, "p90"))
    choice = selection.margins[0]
    assert choice.label == "0.75x" and choice.contended and selection.within_noise
    assert choice.describe().endswith("beyond the run-to-run spread (+-2.0%), measured on a busy machine")


def test_a_choice_whose_run_moved_off_the_machines_earlier_runs_is_never_presented_as_settled():
    configs, latency, accuracy = four_widths(latencies=(1.0, 2.0, 3.0, 4.0), accuracies=(80, 88, 92, 94))
    # the 0.75x run was 25% faster than its earlier runs on this machine; 0.5x's earlier runs agree with it
    latency = latency.assign(off_history=pd.array([False, False, True, pd.NA], dtype="boolean"),
                             history_p50_ms=[1.0, 2.02, 4.0, float("nan")])  # fmt: skip
    selection = select(candidates(latency, accuracy, "cpu"), Budget(4.0, "p90"))
    choice = selection.margins[0]
    assert choice.label == "0.75x" and not choice.contended and selection.within_noise
    assert choice.history_move == pytest.approx(-0.25)
    assert choice.describe().endswith("beyond the run-to-run spread (+-2.0%), ran 25% faster than this "
                                      "machine's earlier runs of it")  # fmt: skip
    assert choice.to_dict()["history_move"] == pytest.approx(-0.25)
    # The same rows without the mark (or from a table written before rows carried it): settled.
    for quiet in (latency.assign(off_history=False), latency.drop(columns=["off_history", "history_p50_ms"])):
        settled = select(candidates(quiet, accuracy, "cpu"), Budget(4.0, "p90"))
        assert not settled.within_noise and settled.margins[0].to_dict()["history_move"] is None
