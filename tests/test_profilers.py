"""The device-side profiler: measurements, stopping rule, results files, failures and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from spinners import row_state, spinning

from profilers import SCHEMA, Job, ProfilerError, Settings, load_latency, run_jobs, write_jobs_file
from profilers.cli import main as profilers_main
from profilers.files import replacing
from profilers.history import (
    BUSY,
    CROWDED,
    PRIOR_SIGMA,
    QUIET,
    RunHistory,
    RunSpread,
    compared_with_earlier_runs,
    machine_state,
    spread,
    state_spread,
)
from profilers.load import LoadMeter
from profilers.results import LatencyStore
from profilers.stats import Ratio, converged, median_ci, median_ci_indices, rerun_interval

REPO = Path(__file__).resolve().parents[1]


def conv_model(path: Path, channels: int, size: int = 32) -> Path:
    """A small conv net whose cost grows with `channels` (like a width multiplier)."""
    rng = np.random.default_rng(channels)
    weights = [
        numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((channels, 10)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def failing_model(path: Path) -> Path:
    """Valid ONNX that no runtime can execute: 10 values reshaped into rows of 3."""
    shape = numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("Reshape", ["f", "shape"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 4])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "narrow": conv_model(root / "narrow.onnx", 8),
        "wide": conv_model(root / "wide.onnx", 64),
        "mid": conv_model(root / "mid.onnx", 16),
    }


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> Settings:
    """Quick settings for tests: the stopping rule and timeouts still apply, with smaller numbers."""
    return Settings(
        warmup_s=0.05,
        min_queries=32,
        max_seconds=2.0,
        burst_size=8,
        timeout_s=30,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


def job(path: Path, backend: str = "onnxruntime", **meta) -> Job:
    metadata = {"model": "conv", "config_id": path.stem, "target": "cpu", **meta}
    return Job(path, backend=backend, threads=1, metadata=metadata)


# --- statistics -------------------------------------------------------------------------------------


def test_median_interval_is_the_textbook_order_statistics():
    assert median_ci_indices(100) == (39, 60)  # ranks 40 and 61 of 100 (1-based), the standard table
    assert median_ci_indices(5) is None  # 2 * 0.5**5 > 0.05: no 95% interval from 5 samples


def test_median_interval_covers_the_true_median_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials = rng.lognormal(mean=0.0, sigma=0.5, size=(2000, 64))  # skewed, like latencies; median 1
    covered = 0
    for sample in trials:
        low, high = median_ci(sample)
        covered += low <= 1.0 <= high
    assert 0.93 <= covered / len(trials) <= 0.99


def test_stopping_rule_needs_the_minimum_count_and_a_tight_interval():
    rng = np.random.default_rng(2)
    tight = 10 + rng.normal(0, 0.05, 200)
    wide = 10 * rng.lognormal(0, 0.5, 200)
    rounds = np.median(tight.reshape(20, 10), axis=1)
    assert converged(tight, rounds, ci_rel=0.02, confidence=0.95, min_queries=64)
    assert not converged(tight[:40], rounds[:4], ci_rel=0.02, confidence=0.95, min_queries=64)
    assert not converged(tight, rounds[:5], ci_rel=0.02, confidence=0.95, min_queries=64)  # too few rounds
    assert not converged(wide, np.median(wide.reshape(20, 10), axis=1), 0.02, 0.95, 64)
    # Tight samples inside each round, but rounds that disagree: not converged (the next run would differ).
    drifting = np.concatenate(
        [10 * (1 + 0.05 * rng.standard_normal()) + rng.normal(0, 0.01, 10) for _ in range(20)]
    )
    assert not converged(drifting, np.median(drifting.reshape(20, 10), axis=1), 0.02, 0.95, 64)


def test_rounds_at_two_speeds_converge_once_their_rounds_agree():
    """A host that runs the VM's two CPUs as one for a third of the rounds: those rounds run 1.9x slower,
    so the samples' median sits 2-3% above the round medians' median. Rounds that agree this well (2000
    of them) pin the median down; an interval spanning that gap never closed
    (results/profiler_cost_1202_parallel.md)."""
    rng = np.random.default_rng(5)
    speeds = np.where(rng.random(2000) < 0.3, 1.9, 1.0)
    samples = speeds[:, None] * rng.lognormal(0, 0.05, (2000, 16))
    rounds = np.median(samples, axis=1)
    assert np.median(samples) / np.median(rounds) > 1.02
    assert converged(samples.ravel(), rounds, ci_rel=0.02, confidence=0.95, min_queries=64)
    low, high = rerun_interval(samples.ravel(), rounds)
    assert low < np.median(samples) < high and (high - low) / np.median(samples) < 0.02


def simulated_run(
    rng: np.random.Generator, rounds: int = 30, per_round: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """A run on a shared machine: each round has its own speed (the state of that moment, 5%), the
    samples inside a round vary by 1% around it."""
    speeds = 1 + 0.05 * rng.standard_normal(rounds)
    samples = 10 * speeds[:, None] * rng.lognormal(0, 0.01, (rounds, per_round))
    return samples.ravel(), np.median(samples, axis=1)


def test_the_reported_interval_holds_the_next_runs_median_where_the_samples_interval_does_not():
    rng = np.random.default_rng(4)
    runs = [simulated_run(rng) for _ in range(401)]
    held = {"rerun": 0, "samples": 0}
    for (samples, rounds), (following, _) in zip(runs[:-1], runs[1:], strict=True):
        target = np.median(following)
        low, high = rerun_interval(samples, rounds)
        held["rerun"] += low <= target <= high
        low, high = median_ci(samples)
        held["samples"] += low <= target <= high
    assert held["rerun"] / 400 >= 0.9
    assert held["samples"] / 400 < 0.6  # correlated samples: an interval from them promises too much
    samples, rounds = simulated_run(rng, rounds=4)  # too few rounds for their own interval: still an interval
    low, high = rerun_interval(samples, rounds)
    assert low <= rounds.min() and high >= rounds.max()


def test_paired_ratio_cancels_a_drift_that_moves_both_jobs_alike():
    rng = np.random.default_rng(3)
    speed = np.linspace(1.0, 1.8, 40)  # the machine slows down by 80% during the run
    small = {r: 1.0 * speed[r] * rng.normal(1, 0.005) for r in range(40)}
    large = {r: 4.0 * speed[r] * rng.normal(1, 0.005) for r in range(40)}
    ratio = Ratio.paired(small, large)
    assert ratio.rounds == 40 and ratio.low <= 0.25 <= ratio.high
    assert ratio.within(ci_rel=0.02, min_rounds=8) and not ratio.within(ci_rel=0.02, min_rounds=41)
    assert Ratio.paired({0: 1.0}, {1: 4.0}) is None  # never in the same round: no ratio


def test_the_ranking_ratio_pairs_burst_minima_so_a_burst_slowed_by_contention_does_not_move_it():
    from profilers.scheduler import _Measurement

    rng = np.random.default_rng(4)
    reference = _Measurement(job=None, index=0, model=None)
    narrow = _Measurement(job=None, index=1, model=None, reference=reference)
    reference.reference = reference
    for r in range(30):
        slowed = 1.6 if r % 3 == 0 else 1.0  # every third burst of the narrow job waits for the CPU
        reference.round_minima_ms[r], reference.round_medians_ms[r] = 4.0, 4.0 * rng.normal(1.02, 0.01)
        narrow.round_minima_ms[r], narrow.round_medians_ms[r] = 1.0, 1.0 * slowed * rng.normal(1.02, 0.01)
    ratio = narrow.ratio(0.95)
    assert ratio.value == pytest.approx(0.25) and ratio.rounds == 30
    assert reference.ratio(0.95).value == 1.0


def history_records(
    shifts: list[float], jobs: dict[str, float], contended: bool = False, crowded: bool = False
) -> pd.DataFrame:
    """One record per job and run: the job's latency times the run's common shift (the machine's state)."""
    rows = []
    for run, shift in enumerate(shifts):
        for onnx_id, ms in jobs.items():
            rows.append(
                {
                    "run_id": f"run{run}", "timestamp": f"2026-11-30T10:{run:02d}:00+00:00", "onnx": onnx_id,
                    "backend": "onnxruntime", "device": "cpu", "precision": "fp32", "batch": 1, "threads": 1,
                    "contended": contended, "crowded": crowded, "p50_ms": ms * shift,
                    "ratio": ms * shift / 4.0,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_run_spread_is_the_pooled_spread_of_each_jobs_median_between_runs():
    shifts = [1.0, 1.04, 0.97, 1.02]  # every job of a run moves together, as on this host
    result = spread(history_records(shifts, {"a": 1.0, "b": 4.0}))
    logs = np.log(shifts)
    assert result.runs == 4
    assert result.sigma == pytest.approx(np.std(logs, ddof=1))
    assert spread(history_records([1.0], {"a": 1.0, "b": 4.0})).runs == 0  # one run: nothing to compare
    records = history_records(shifts, {"a": 1.0, "b": 4.0})
    lone = records.iloc[[0]].assign(onnx="c")  # a job measured in one run only adds nothing
    unknown = records[records["onnx"] == "b"].assign(threads=np.nan)  # unknown threads: a job of its own
    moved = unknown.assign(p50_ms=unknown["p50_ms"] * [1.0, 1.5, 1.0, 1.5])
    result = spread(pd.concat([records, lone, moved], ignore_index=True))
    squares = 2 * np.sum((logs - logs.mean()) ** 2) + np.sum(
        (np.log(moved["p50_ms"]) - np.log(moved["p50_ms"]).mean()) ** 2
    )
    assert result.runs == 4 and result.sigma == pytest.approx(np.sqrt(squares / 9))


def test_the_run_to_run_interval_uses_students_t_over_runs_and_needs_two():
    assert RunSpread(0.03, 0).interval(2.0) is None and RunSpread(0.03, 1).interval(2.0) is None
    low, high = RunSpread(0.02, 5).interval(2.0)
    half = 2.776 * math.sqrt(2) * 0.02  # t(4) at 97.5%
    assert low == pytest.approx(2.0 * math.exp(-half), rel=1e-3)
    assert high == pytest.approx(2.0 * math.exp(half), rel=1e-3)
    assert RunSpread(0.02, 20).interval(2.0)[1] < high  # more runs, a surer spread


def test_a_first_run_assumes_a_spread_that_the_hosts_own_runs_then_replace():
    def quiet(shifts: list[float]) -> RunSpread:
        return state_spread(history_records(shifts, {"a": 1.0}), "onnxruntime", "cpu", QUIET)

    first = quiet([1.0])  # one run: nothing of this host's own to compare
    assert (first.sigma, first.runs, first.freedom) == (PRIOR_SIGMA["p50_ms", QUIET], 0, 4)
    low, high = first.interval(2.0)
    assert low < 2.0 / 1.09 and high > 2.0 * 1.09  # t(4): about +-10%, never the within-run +-1%
    busy = state_spread(history_records([1.0], {"a": 1.0}), "onnxruntime", "cpu", BUSY)
    assert busy.interval(2.0)[1] > first.interval(2.0)[1] * 1.3  # a busy machine is assumed to move more
    crowded = state_spread(history_records([1.0], {"a": 1.0}), "onnxruntime", "cpu", CROWDED)
    assert crowded.interval(2.0)[1] > 2.0 * 2.5  # others on the job's own cores: runs jump between speeds
    steady = quiet([1.0, 1.001, 0.999, 1.0005] * 5)  # a steady host: its own runs narrow the interval
    assert steady.runs == 20 and steady.sigma < PRIOR_SIGMA["p50_ms", QUIET] / 2
    assert steady.interval(2.0)[1] < high
    swinging = quiet([1.0, 1.2, 0.85])  # a host that moves more than assumed widens it at once
    assert swinging.sigma > PRIOR_SIGMA["p50_ms", QUIET] * 2 and swinging.interval(2.0)[1] > high


def test_history_keeps_busy_runs_apart_from_quiet_ones(tmp_path):
    history = RunHistory(tmp_path, host="box")
    for _, record in history_records([1.0, 1.5, 0.6], {"a": 1.0}, contended=True).iterrows():
        history.record(record.to_dict())
    for _, record in history_records([1.0, 1.01], {"a": 1.0}).iterrows():
        records = history.record(record.to_dict())
    quiet = state_spread(records, "onnxruntime", "cpu", QUIET)
    # the busy runs' 50% swings do not widen quiet rows: the quiet ones narrow the assumed spread
    assert quiet.runs == 2 and quiet.sigma < PRIOR_SIGMA["p50_ms", QUIET]
    assert len(history.read()) == 5 and history.path == tmp_path / "history" / "box.csv"


def test_crowded_runs_learn_their_spread_apart_from_busy_ones(tmp_path):
    """Beside a spinner that leaves the job its cores, runs move a few %; with others on the job's own
    cores, they jump between speeds: pooled, the busy runs would hide the jumps."""
    history = RunHistory(tmp_path, host="box")
    steady = history_records([1.0, 1.02, 0.99, 1.01], {"a": 1.0}, contended=True)
    jumping = history_records([1.0, 2.1, 1.0, 2.1], {"a": 1.0}, contended=True, crowded=True)
    for _, record in pd.concat([steady, jumping.assign(run_id=lambda r: r["run_id"] + "c")]).iterrows():
        records = history.record(record.to_dict())
    busy = state_spread(records, "onnxruntime", "cpu", BUSY)
    crowded = state_spread(records, "onnxruntime", "cpu", CROWDED)
    assert busy.runs == crowded.runs == 4 and busy.sigma < PRIOR_SIGMA["p50_ms", BUSY]
    assert crowded.interval(1.0)[1] > 2.1  # a jump to the other speed stays inside
    old = tmp_path / "old"  # a history written before crowded runs were told apart: all of them busy
    RunHistory(old, host="box").record({**steady.iloc[0].to_dict(), "crowded": True})
    path = RunHistory(old, host="box").path
    path.write_text(pd.read_csv(path).drop(columns="crowded").to_csv(index=False))
    assert not RunHistory(old, host="box").read()["crowded"].any()


def test_the_machine_state_says_whether_others_took_the_jobs_own_cores():
    assert machine_state(False, 0.5, True) == QUIET  # not contended: quiet, whatever else
    assert machine_state(True, 0.10, True) == BUSY  # one spinner on the spare core: the threads rarely waited
    assert machine_state(True, 0.39, True) == CROWDED  # two spinners on two cores: waited 39% of the time
    assert machine_state(True, math.nan, True) == BUSY  # no scheduler account to go by
    # flagged for steal, its own two threads waiting for the 2 cores 30% of the time, no one else busy:
    # the waits are its own, not others taking its cores
    assert machine_state(True, 0.30, False) == BUSY


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("run_id,timestamp\n1,2", "not a run history of this version (no column onnx"),
        ("\x00\x01garbage", "not a r"),
    ],
)
def test_a_corrupt_history_stops_the_run_before_anything_is_measured(
    models, fast, tmp_path, content, message
):
    cache = tmp_path / "cache"
    path = RunHistory(cache).path
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ProfilerError, match=re.escape(f"{path}: {message}")):
        run_jobs([job(models["narrow"])], tmp_path / "out", dataclasses.replace(fast, cache_dir=cache))
    assert not (tmp_path / "out" / "latency.parquet").exists()


def test_a_job_stops_once_more_rounds_could_not_narrow_the_reported_interval():
    from profilers.scheduler import _Measurement

    rng = np.random.default_rng(5)
    measurement = _Measurement(job=None, index=0, model=None)
    for r in range(12):  # rounds 4% apart, as on a busy machine: a 2% within-run interval is far off
        level = 10 * rng.normal(1, 0.04)
        measurement.round_medians_ms[r] = level
        measurement.add_burst([int(level * 1e6 * rng.normal(1, 0.002)) for _ in range(8)])
    settings = Settings(ci_rel=0.02, min_queries=64)
    assert not measurement.converged(settings)
    measurement.median_between_runs = {QUIET: 0.15, BUSY: 0.4}  # the host's runs differ more anyway
    assert measurement.converged(settings)
    measurement.median_between_runs = {QUIET: 0.01, BUSY: 0.4}  # a steady host: keep measuring
    assert not measurement.converged(settings)


def test_the_ratio_has_its_own_run_to_run_spread_and_stops_on_it():
    from profilers.scheduler import _Measurement

    # ratios cancel the run's common shift: the p50s move 4%, the ratio of a to b not at all
    records = history_records([1.0, 1.04, 0.97, 1.02], {"a": 1.0, "b": 4.0})
    assert spread(records, "ratio").sigma == pytest.approx(spread(records).sigma)  # same shifts here
    records.loc[records["onnx"] == "b", "ratio"] = math.nan  # b is the reference: no ratio recorded
    assert spread(records, "ratio").runs == 4
    ratio = Ratio(0.25, 0.249, 0.251, 20).widened(RunSpread(0.02, 5))
    assert ratio.low < 0.25 * 0.93 and ratio.high > 0.25 * 1.07 and ratio.value == 0.25
    assert Ratio(0.25, math.nan, math.nan, 3).widened(RunSpread(0.02, 5)).low < 0.25

    rng = np.random.default_rng(6)
    reference = _Measurement(job=None, index=0, model=None, worker=object())
    reference.reference = reference
    narrow = _Measurement(job=None, index=1, model=None, reference=reference)
    for r in range(12):  # a tight median, but a ratio that wanders 4% from round to round
        narrow.round_medians_ms[r] = 1.0 * rng.normal(1, 0.001)
        narrow.round_minima_ms[r] = 1.0 * rng.normal(1, 0.04)
        reference.round_minima_ms[r] = 4.0
        narrow.add_burst([int(1e6)] * 8)
    settings = Settings(ci_rel=0.02, min_queries=64)
    assert not narrow.converged(settings)
    narrow.ratio_between_runs = {BUSY: 0.1, CROWDED: 0.1}
    assert not narrow.converged(settings)  # quiet: a ratio ranks inside the run, so it measures on
    narrow.load = LoadMeter(total=100, other=50, cores=2)  # another process on the spare core all along
    assert narrow.converged(settings)  # busy: more rounds could not narrow the reported interval


def test_a_row_beyond_its_earlier_runs_spread_is_told_from_one_within_it():
    shifts = [1.0, 1.02, 0.98, 1.01]  # a steady host's earlier runs
    records = history_records(shifts, {"a": 2.0, "b": 8.0})
    new = {**records.iloc[0].to_dict(), "run_id": "new", "timestamp": "2026-11-30T11:00:00+00:00"}
    center, off = compared_with_earlier_runs(records, {**new, "p50_ms": 2.04}, QUIET)
    assert center == pytest.approx(2.0 * np.median(shifts)) and off is False
    assert compared_with_earlier_runs(records, {**new, "p50_ms": 2.0 * 1.7}, QUIET)[1] is True  # a slow spell
    assert compared_with_earlier_runs(records, {**new, "p50_ms": 2.0 / 1.7}, QUIET)[1] is True
    # not earlier runs: the new run's own other jobs (shifted alike, they would widen the spread they are
    # held to), busy runs when the row is quiet, other jobs
    mixed = pd.concat(
        [
            records,
            pd.DataFrame([{**new, "onnx": "b", "p50_ms": 8.0 * 3}]),
            history_records([3.0, 1.0], {"a": 2.0}, contended=True).assign(run_id=["busy0", "busy1"]),
        ],
        ignore_index=True,
    )
    assert compared_with_earlier_runs(mixed, {**new, "p50_ms": 2.0 * 1.7}, QUIET) == (center, True)
    assert compared_with_earlier_runs(mixed, {**new, "p50_ms": 2.04}, QUIET) == (center, False)
    center, off = compared_with_earlier_runs(records, {**new, "onnx": "c"}, QUIET)  # never run before
    assert math.isnan(center) and off is None


def test_a_rerun_far_from_its_earlier_runs_says_so_in_its_row(models, fast, tmp_path):
    settings = dataclasses.replace(fast, cache_dir=tmp_path / "cache", max_seconds=0.5)
    first = run_jobs([job(models["narrow"])], tmp_path / "out", settings).iloc[0]
    assert math.isnan(first["history_p50_ms"]) and pd.isna(first["off_history"])
    # this host's earlier runs, as if the job had run 3x slower in every machine state
    history = RunHistory(settings.cache_dir)
    (record,) = history.read().to_dict("records")
    states = [(False, False), (True, False), (True, True)]
    earlier = [
        {**record, "run_id": f"slow{run}-{index}", "contended": contended, "crowded": crowded}
        for run in range(2)
        for index, (contended, crowded) in enumerate(states)
    ]
    pd.DataFrame(earlier).assign(p50_ms=3 * first["p50_ms"]).to_csv(history.path, index=False)
    second = run_jobs([job(models["narrow"])], tmp_path / "out", settings, force=True).iloc[0]
    assert second["history_p50_ms"] == pytest.approx(3 * first["p50_ms"])
    assert bool(second["off_history"])  # NA (no earlier run in its state) would raise


def test_a_rerun_widens_the_interval_by_the_spread_measured_between_runs(models, fast, tmp_path):
    settings = dataclasses.replace(fast, cache_dir=tmp_path / "cache", max_seconds=0.5)
    jobs = [job(models["narrow"]), job(models["mid"])]
    first = run_jobs(jobs, tmp_path / "out", settings).set_index("config_id")
    assert (first["spread_runs"] == 0).all()
    for _, row in first.iterrows():  # no history: the assumed spread of the row's state
        assert row["run_spread"] == PRIOR_SIGMA["p50_ms", row_state(row)]
        low, high = RunSpread(row["run_spread"], 0, prior_freedom=4).interval(row["p50_ms"])
        assert row["ci_low_ms"] <= low and row["ci_high_ms"] >= high
    second = run_jobs(jobs, tmp_path / "out", settings, force=True).set_index("config_id")
    assert len(RunHistory(settings.cache_dir).read()) == 4
    for config_id, row in second.iterrows():
        if row_state(first.loc[config_id]) != row_state(row):  # a busy row is compared with busy runs only
            continue
        low, high = RunSpread(row["run_spread"], 2, prior_freedom=4).interval(row["p50_ms"])
        assert row["spread_runs"] == 2 and row["ci_low_ms"] <= low and row["ci_high_ms"] >= high
    states = {row_state(row) for table in (first, second) for _, row in table.iterrows()}
    if len(states) == 1:  # the reference, recorded last, rests on both jobs' moves between the runs
        moves = np.log(second["p50_ms"] / first["p50_ms"])
        measured = (moves**2).sum() / 4  # each job's two medians about their mean, 2 degrees of freedom
        prior = PRIOR_SIGMA["p50_ms", states.pop()]
        reference = second.loc[second["ref_config_id"].iloc[0]]
        assert reference["run_spread"] == pytest.approx(math.sqrt((4 * prior**2 + measured) / 5), rel=1e-3)


# --- measuring ----------------------------------------------------------------------------------------


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a two-thread job needs two CPUs")
def test_a_two_thread_row_records_the_cpus_its_threads_got_at_once(models, fast, tmp_path):
    two = dataclasses.replace(job(models["narrow"]), threads=2)
    table = run_jobs([two], tmp_path, dataclasses.replace(fast, cache_dir=tmp_path / "cache"))
    assert 0 < table.loc[0, "parallel_cpus"] < 3
    assert "parallel_cpus" in load_latency(tmp_path).columns


def test_run_jobs_measures_every_job_into_the_documented_table(models, fast, tmp_path):
    jobs = [
        job(models[name], backend, width=width, macs=macs, note="hello")
        for backend in ("onnxruntime", "openvino")
        for name, width, macs in (("narrow", 0.125, 1000), ("wide", 1.0, 64000))
    ]
    no_history = dataclasses.replace(fast, cache_dir=tmp_path / "cache")  # the assumed spread only
    table = run_jobs(jobs, tmp_path, no_history)

    assert len(table) == 4
    assert list(table.columns[: len(SCHEMA)]) == list(SCHEMA)
    assert set(table["status"]) == {"ok"}
    assert (table["n"] >= fast.min_queries).all()
    assert ((table["ci_low_ms"] <= table["p50_ms"]) & (table["p50_ms"] <= table["ci_high_ms"])).all()
    assert (table["min_ms"] <= table["p50_ms"]).all() and (table["p50_ms"] <= table["p99_ms"]).all()
    assert (table["first_ms"] > 0).all() and (table["peak_rss_bytes"] > 0).all()
    assert (table["artifact_bytes"] > 0).all()
    assert table["env_cpu"].str.len().min() > 0 and (table["env_threads"] == 1).all()
    assert table["parallel_cpus"].isna().all()  # one thread each: nothing to run at once
    assert set(table["env_runtime"]) == {"onnxruntime", "openvino"}
    assert set(table["note"]) == {"hello"}  # caller metadata is copied into the row
    for _, row in table.iterrows():  # converged: its own noise lies inside the assumed run-to-run interval
        if row["converged"]:
            low, high = RunSpread(row["run_spread"], 0, prior_freedom=4).interval(row["p50_ms"])
            assert (row["ci_low_ms"], row["ci_high_ms"]) == pytest.approx((low, high))
    wide_weights = (64 * 3 * 9 + 64 * 64 * 9 + 64 * 10) * 4
    assert set(table.loc[table["config_id"] == "wide", "weight_bytes"]) == {wide_weights}
    for backend in ("onnxruntime", "openvino"):  # 64 channels cost ~40x the MACs of 8
        rows = table[table["backend"] == backend].set_index("config_id")
        assert rows.loc["wide", "p50_ms"] > rows.loc["narrow", "p50_ms"]
        # Each backend's series is compared with its largest model, round by round.
        assert set(rows["ref_config_id"]) == {"wide"}
        assert rows.loc["wide", "ratio_to_ref"] == 1.0
        assert 0 < rows.loc["narrow", "ratio_ci_low"] <= rows.loc["narrow", "ratio_to_ref"] < 1
        assert rows.loc["narrow", "rounds"] <= rows.loc["wide", "rounds"]  # the reference stays to the end

    on_disk = load_latency(tmp_path)
    assert len(on_disk) == 4 and (tmp_path / "latency.csv").exists()
    assert len(pd.read_csv(tmp_path / "latency.csv")) == 4


def test_a_table_of_another_writer_is_read_with_the_documented_types(tmp_path):
    """A table saved with pandas' default text type (missing = NaN) reads back with the schema's (NA)."""
    store = LatencyStore(tmp_path)
    row = {"model": "m", "target": "cpu", "backend": "onnxruntime", "device": "CPU", "precision": "fp32",
           "batch": 1, "status": "ok", "p50_ms": 1.0}  # fmt: skip
    store.add({**row, "config_id": "a"})
    other = load_latency(tmp_path).astype({"model": "str", "error": "str", "p50_ms": "float32"})
    other.to_parquet(tmp_path / "latency.parquet", index=False)
    store.add({**row, "config_id": "b", "p50_ms": 2.0})
    table = load_latency(tmp_path)
    assert [str(table[c].dtype) for c in ("model", "error", "p50_ms")] == ["string", "string", "float64"]
    assert table["error"].isna().all() and table["error"].iloc[0] is pd.NA
    assert list(table["config_id"]) == ["a", "b"] and list(table["p50_ms"]) == [1.0, 2.0]
    store.add({**row, "config_id": "a", "p50_ms": 3.0})  # measured again: replaces its row
    table = load_latency(tmp_path).set_index("config_id")
    assert len(table) == 2 and table.loc["a", "p50_ms"] == 3.0 and table.loc["b", "p50_ms"] == 2.0


def test_a_fast_model_runs_more_than_burst_size_per_turn(models, fast, tmp_path):
    # The narrow model takes tens of microseconds: 8 inferences would be a turn of well under 5 ms.
    (row,) = run_jobs([job(models["narrow"])], tmp_path, fast).itertuples()
    assert row.n / row.rounds > fast.burst_size


def test_rerun_skips_measured_jobs_and_force_measures_again(models, fast, tmp_path):
    jobs = [job(models["narrow"]), job(models["mid"])]
    first = run_jobs(jobs, tmp_path, fast)
    events = []
    started = time.perf_counter()
    again = run_jobs(jobs, tmp_path, fast, progress=events.append)
    assert time.perf_counter() - started < 5
    assert [e.kind for e in events] == ["skipped", "skipped"]
    assert list(again["run_id"]) == list(first["run_id"])

    forced = run_jobs(jobs, tmp_path, fast, force=True)
    assert len(load_latency(tmp_path)) == 2  # one row per key: the new measurement replaces the old
    assert set(forced["run_id"]).isdisjoint(set(first["run_id"]))


def test_crashed_and_hung_workers_lose_no_other_result(models, tmp_path, fast):
    settings = Settings(**{**fast.to_dict(), "timeout_s": 2.0, "max_seconds": 1.0})
    jobs = [job(models["narrow"]), job(models["mid"]), job(models["wide"])]

    def sabotage(event):
        if event.kind == "ready" and event.index == 1:
            os.kill(event.pid, signal.SIGKILL)  # a crash
        if event.kind == "ready" and event.index == 2:
            os.kill(event.pid, signal.SIGSTOP)  # a hang: the worker never answers

    table = run_jobs(jobs, tmp_path, settings, progress=sabotage).set_index("config_id")
    assert table.loc["narrow", "status"] == "ok"
    assert table.loc["mid", "status"] == "error" and "exited" in table.loc["mid", "error"]
    assert table.loc["wide", "status"] == "timeout" and "2 s" in table.loc["wide", "error"]
    assert len(load_latency(tmp_path)) == 3

    # A re-run measures what failed and keeps what succeeded.
    resumed = run_jobs(jobs, tmp_path, settings).set_index("config_id")
    assert set(resumed["status"]) == {"ok"}
    assert resumed.loc["narrow", "run_id"] == table.loc["narrow", "run_id"]


def test_a_worker_that_dies_warming_up_is_an_error_row_and_the_group_is_measured(
    models, tmp_path, fast, monkeypatch
):
    """The workers of a group warm up together; one that dies then fails alone."""
    from profilers import scheduler

    send = scheduler.WorkerHandle.send

    def die_warming_up(handle, message):  # job 1's worker, by its log's name (RUN-0001-BACKEND.log)
        send(handle, message)
        if message.get("cmd") == "warmup" and handle.log_path.name.split("-")[1] == "0001":
            os.kill(handle.process.pid, signal.SIGKILL)

    monkeypatch.setattr(scheduler.WorkerHandle, "send", die_warming_up)
    jobs = [job(models["narrow"]), job(models["mid"]), job(models["wide"])]
    table = run_jobs(jobs, tmp_path, fast).set_index("config_id")
    assert table.loc["mid", "status"] == "error" and "exited" in table.loc["mid", "error"]
    assert table.loc["narrow", "status"] == "ok" and table.loc["wide", "status"] == "ok"


def test_a_model_the_runtime_cannot_run_is_an_error_row(tmp_path, fast, models):
    bad = failing_model(tmp_path / "bad.onnx")
    table = run_jobs([job(bad), job(models["narrow"])], tmp_path / "out", fast).set_index("config_id")
    assert table.loc["bad", "status"] == "error"
    assert "\n" not in table.loc["bad", "error"] and table.loc["bad", "error"]
    assert table.loc["narrow", "status"] == "ok"


def test_killing_the_parent_keeps_finished_rows_and_a_rerun_resumes(models, fast, tmp_path):
    jobs_file = tmp_path / "jobs.json"
    items = [
        {"onnx": str(models[n]), "threads": 1, "metadata": {"model": "conv", "config_id": n}}
        for n in ("narrow", "mid", "wide")
    ]
    # No job can converge (more queries than its time limit allows), so the run is killed mid-way: a
    # precision goal alone would not do, as a busy machine stops at its assumed run-to-run spread.
    settings = {**fast.to_dict(), "min_queries": 10**9, "cache_dir": str(tmp_path / "cache")}
    jobs_file.write_text(json.dumps({"jobs": items, "settings": settings}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "profilers", "run", "--jobs", str(jobs_file), "--out", str(out)]
    command += ["--max-seconds", "20", "--quiet"]
    parent = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    children: set[int] = set()
    while time.monotonic() < deadline and len(children) < 3:
        children |= _children(parent.pid)
        time.sleep(0.05)
    assert len(children) == 3, "the three workers did not start"
    time.sleep(1.0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for pid in children:  # orphaned workers see their input close and exit by themselves
        _wait_gone(pid, timeout_s=30)
    assert load_latency(out).empty  # nothing finished yet: no partial row, and the table is readable

    done = profilers_main(["run", "--jobs", str(jobs_file), "--out", str(out), "--max-seconds", "0.5"])
    assert done == 0
    assert set(load_latency(out)["status"]) == {"ok"} and len(load_latency(out)) == 3


def _children(pid: int) -> set[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return {int(c) for t in tasks for c in (t / "children").read_text().split()}
    except OSError:
        return set()


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} outlived its parent")


def test_profilers_imports_and_measures_without_torch(models, fast, tmp_path):
    # A `torch` package that fails to import, first on the path of this process and of its workers: the
    # same ImportError as on a device without torch. (sys.modules["torch"] = None is not used: scipy's
    # array-API helpers then fail on the None entry, which no real install has.)
    blocker = tmp_path / "block" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    script = textwrap.dedent(f"""
        import sys
        import profilers
        cache = {str(fast.cache_dir)!r}
        table = profilers.run_jobs(
            [profilers.Job({str(models["narrow"])!r}, threads=1)], {str(tmp_path / "out")!r},
            profilers.Settings(warmup_s=0.05, min_queries=32, max_seconds=1, cache_dir=cache),
        )
        assert "torch" not in sys.modules, "torch was imported"
        print(table.loc[0, "status"], table.loc[0, "n"])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    status, count = done.stdout.split()
    assert status == "ok" and int(count) >= 32


def test_torch_backend_runs_the_exported_program_beside_the_onnx(tmp_path, fast):
    torch = pytest.importorskip("torch")
    onnx_path = conv_model(tmp_path / "net.onnx", 8)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
    program = torch.export.export(module.eval(), (torch.zeros(1, 3, 32, 32),))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    table = run_jobs([job(onnx_path, "torch")], tmp_path / "out", fast)
    assert table.loc[0, "status"] == "ok" and table.loc[0, "env_runtime"] == "torch"
    assert table.loc[0, "artifact_bytes"] == (tmp_path / "net.pt2").stat().st_size


# --- bad input: one line, exit 2 ------------------------------------------------------------------------


def _run_cli(tmp_path: Path, jobs: list | dict, capsys) -> tuple[int, str]:
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    code = profilers_main(["run", "--jobs", str(jobs_file), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("job_fields", "message"),
    [
        ({"onnx": "missing.onnx"}, "does not exist"),
        ({"onnx": "corrupt.onnx"}, "is not a valid ONNX model"),
        ({"onnx": "good.onnx", "backend": "tflite"}, "unknown backend 'tflite'"),
        ({"onnx": "good.onnx", "device": "GPU"}, "onnxruntime has no device 'GPU'"),
        ({"onnx": "good.onnx", "backend": "openvino", "device": "MYRIAD"}, "openvino has no device"),
        ({"onnx": "good.onnx", "backend": "tensorrt", "device": "GPU"}, "pip install tensorrt"),
        ({"onnx": "good.onnx", "backend": "trtexec", "device": "GPU"}, "trtexec is not installed"),
        ({"onnx": "good.onnx", "backend": "torch"}, "torch.export.save"),
        ({"onnx": "good.onnx", "precision": "int3"}, "unknown precision"),
        ({"onnx": "good.onnx", "batch": 4}, "static batch of 1"),
        ({"onnx": "good.onnx", "colour": "red"}, "unknown key '[0].colour'"),
    ],
)
def test_bad_jobs_are_one_line_errors_with_exit_2(tmp_path, capsys, job_fields, message):
    if job_fields.get("backend") in ("tensorrt", "trtexec") and _has_tensorrt():
        pytest.skip("TensorRT is installed here")
    conv_model(tmp_path / "good.onnx", 8)
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07this is not protobuf" * 10)
    code, err = _run_cli(tmp_path, [job_fields], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "latency.parquet").exists()


def test_bad_jobs_files_and_flags_exit_2(tmp_path, capsys):
    assert profilers_main(["run", "--jobs", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    code, err = _run_cli(tmp_path, {"jobs": [{"onnx": "x.onnx"}], "settings": {"ci_rel": 2}}, capsys)
    assert code == 2 and "ci_rel=2" in err
    code, err = _run_cli(tmp_path, {"jobs": [{"onnx": "x.onnx"}], "settings": {"wait_quiet_s": 1e6}}, capsys)
    assert code == 2 and err == "error: invalid profiler setting(s): wait_quiet_s=1000000.0"
    with pytest.raises(SystemExit) as exit_info:
        profilers_main(["run", "--jobs"])
    assert exit_info.value.code == 2
    with pytest.raises(ProfilerError, match="threads"):
        Job("x.onnx", threads=-1)


def test_jobs_file_paths_are_relative_to_the_file(models, fast, tmp_path, capsys):
    work = tmp_path / "device"
    work.mkdir()
    (work / "m.onnx").write_bytes(models["narrow"].read_bytes())
    settings = {**fast.to_dict(), "cache_dir": str(fast.cache_dir)}
    (work / "jobs.json").write_text(
        json.dumps({"jobs": [{"onnx": "m.onnx", "threads": 1}], "settings": settings})
    )
    code = profilers_main(["run", "--jobs", str(work / "jobs.json"), "--out", str(tmp_path / "out")])
    assert code == 0
    assert "1 of 1 jobs measured" in capsys.readouterr().out
    row = load_latency(tmp_path / "out").iloc[0]
    assert row["model"] == "m" and len(row["config_id"]) == 10 and row["target"] == "local"


def test_backends_command_lists_what_is_installed(capsys):
    assert profilers_main(["backends", "--json"]) == 0
    listing = {entry["backend"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listing["onnxruntime"]["installed"] and "CPU" in listing["onnxruntime"]["devices"]
    assert "AzureExecutionProvider" not in str(listing["onnxruntime"])
    assert listing["openvino"]["installed"] and "CPU" in listing["openvino"]["devices"]
    if not _has_tensorrt():
        assert not listing["tensorrt"]["installed"] and "pip install tensorrt" in listing["tensorrt"]["note"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]
    with replacing(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == [path]


def test_load_latency_of_an_empty_directory_has_the_schema(tmp_path):
    table = load_latency(tmp_path)
    assert table.empty and list(table.columns) == list(SCHEMA)


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_jobs_file_round_trips_jobs_and_settings(tmp_path):
    from profilers import load_jobs_file

    (tmp_path / "models").mkdir()
    jobs = [Job(tmp_path / "models" / "a.onnx", backend="openvino", threads=3, metadata={"width": 0.5})]
    settings = Settings(ci_rel=0.01, max_seconds=5)
    path = write_jobs_file(tmp_path / "jobs.json", jobs, settings)
    assert json.loads(path.read_text())["jobs"][0]["onnx"] == "models/a.onnx"  # relative: the folder can move
    loaded, loaded_settings = load_jobs_file(path)
    assert loaded == jobs and loaded_settings == settings


# --- contention -------------------------------------------------------------------------------------


def test_rows_measured_next_to_a_cpu_spinner_are_flagged_with_the_figures(models, fast, tmp_path):
    settings = dataclasses.replace(fast, cache_dir=tmp_path / "cache")
    with spinning(2):
        table = run_jobs([job(models["narrow"]), job(models["mid"])], tmp_path / "out", settings)
    assert table["contended"].all()
    assert (table["other_cores"] > 0.5).all()
    assert table["contention"].str.contains("other processes used").all()
    # two spinners on 2 cores share the one-thread job's core: its runs are told apart as crowded
    assert (table["wait_pct"] > 20).all()
    assert table["contention"].str.contains("crowded: its threads waited").all()
    assert RunHistory(settings.cache_dir).read()["crowded"].all()
    assert (table["speed_before_ms"] > 0).all() and (table["speed_after_ms"] > 0).all()
    assert table["load_avg"].notna().all()


def test_a_table_written_before_the_load_columns_still_loads(tmp_path):
    old = pd.DataFrame(
        [
            {
                "model": "m",
                "config_id": "a",
                "target": "cpu",
                "backend": "onnxruntime",
                "device": "CPU",
                "precision": "fp32",
                "batch": 1,
                "status": "ok",
                "p50_ms": 1.0,
            }
        ]
    )
    old.to_parquet(tmp_path / "latency.parquet")
    table = load_latency(tmp_path)
    assert list(table.columns) == list(SCHEMA) and table.loc[0, "p50_ms"] == 1.0
    assert pd.isna(table.loc[0, "contended"]) and math.isnan(table.loc[0, "other_cores"])


def test_waiting_for_quiet_is_bounded_and_recorded(models, fast, tmp_path):
    with pytest.raises(ProfilerError, match="wait_quiet_s"):
        Settings(wait_quiet_s=-1)
    with pytest.raises(ProfilerError, match="wait_quiet_s"):
        Settings(wait_quiet_s=1e9)
    settings = dataclasses.replace(fast, wait_quiet_s=1.5)
    started = time.perf_counter()
    (row,) = run_jobs([job(models["narrow"])], tmp_path, settings).itertuples()
    assert 0 < row.quiet_wait_s <= 1.5 + 1.0 and row.status == "ok"
    assert time.perf_counter() - started < 30


def test_idle_cpus_are_held_awake_when_asked_and_the_kernel_lets(models, fast, tmp_path, monkeypatch):
    """The PM QoS request goes to /dev/cpu_dma_latency (here a stand-in file): 0 us while the jobs run, and
    each row says whether it was held; without a writable file, or when not asked, rows say it was not."""
    request = tmp_path / "cpu_dma_latency"
    monkeypatch.setattr("profilers.load.CPU_DMA_LATENCY", request)
    asked = dataclasses.replace(fast, keep_cpus_awake=True)
    (row,) = run_jobs([job(models["narrow"], config_id="no-file")], tmp_path / "a", asked).itertuples()
    assert row.status == "ok" and not row.cpus_awake

    request.write_bytes(b"\xff" * 4)
    (row,) = run_jobs([job(models["narrow"], config_id="held")], tmp_path / "b", asked).itertuples()
    assert row.status == "ok" and row.cpus_awake
    assert request.read_bytes() == (0).to_bytes(4, sys.byteorder)  # a wake-up latency of 0 us
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(request.resolve()) not in open_files  # the request ends with the measuring

    request.write_bytes(b"\xff" * 4)  # not asked: the default
    (row,) = run_jobs([job(models["narrow"], config_id="not asked")], tmp_path / "c", fast).itertuples()
    assert not row.cpus_awake and request.read_bytes() == b"\xff" * 4

    jobs_file = write_jobs_file(tmp_path / "jobs.json", [job(models["narrow"], config_id="device")], fast)
    argv = ["run", "--jobs", str(jobs_file), "--out", str(tmp_path / "d"), "--quiet", "--keep-cpus-awake"]
    assert profilers_main(argv) == 0  # the device side's flag, over the jobs file's settings
    assert load_latency(tmp_path / "d")["cpus_awake"].tolist() == [True] and request.read_bytes() == bytes(4)
