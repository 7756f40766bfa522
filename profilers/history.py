"""This machine's run-to-run spread of a median latency, learned from its own earlier runs (issue 14).

Nothing inside one run sees how far its medians sit from the next run's: on this shared 2-core host every
width of a run moves together by 2-5% between runs, while its rounds agree to about 1%. Two sets of
workers of the same jobs, interleaved in one run, agreed within 1% while consecutive runs differed by 3-8%
(results/interval_shift.md), so the shift is the machine's state over time, not the worker process, and
more rounds or more processes inside a run cannot measure it. pyperf faces the same and spreads its
processes over time; here the time axis is the user's own runs: every measured median goes into a history
per host under the cache directory, and the spread of the same job's median between runs there,
pooled over jobs, widens the interval of every later row (`RunSpread.interval`). The ranking ratio to the
series' reference is recorded beside it: drift cancels in it within a run, yet it too moves a little
between runs, and its spread widens the ratio's interval the same way.

A host's first run has no runs to learn from, and an interval of within-run noise alone would promise what
the next run breaks. So the spread starts from an assumed one (PRIOR_SIGMA, worth PRIOR_FREEDOM degrees of
freedom) that the host's own runs are pooled with, the conjugate prior of a normal variance: the first run
reports the assumed interval, and each later run moves it towards the host's own spread.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from profilers.errors import ProfilerError
from profilers.files import locked, replacing
from profilers.load import CROWDED_WAIT

# The most recent runs of one host, backend, device and machine state that a spread is estimated from:
# a machine's noise changes over weeks, and old runs should not speak for it.
RECENT_RUNS = 20
# Records kept per host file (oldest dropped first), so the file stays small.
KEPT_RECORDS = 5000
# A job: the same file (by content) run the same way.
JOB_COLUMNS = ["onnx", "backend", "device", "precision", "batch", "threads"]
# p50_ms: the run's median; ratio: its ranking ratio to its series' reference (empty for the reference).
COLUMNS = ["run_id", "timestamp", *JOB_COLUMNS, "contended", "crowded", "p50_ms", "ratio"]
# The machine states a spread is learned in apart (`machine_state`).
QUIET, BUSY, CROWDED = "quiet", "busy", "crowded"
# The spread assumed before a host's own runs, by column and machine state: what this project's 2-core
# shared x86 host showed (the standard deviation of log p50 between runs; results/
# busy_repeatability_history.md, busy_repeatability_quiet.md, busy_repeatability_history_loaded.md).
# Quiet medians moved by 0.020-0.025; busy ones by 0.033-0.042 beside one spinner that left the job its
# cores, so a busy first run assumes 0.10, well above; crowded ones by 0.25 under a load nobody controlled;
# ratios by 0.009-0.015 in any state.
PRIOR_SIGMA = {
    ("p50_ms", QUIET): 0.025,
    ("p50_ms", BUSY): 0.10,
    ("p50_ms", CROWDED): 0.25,
    **{("ratio", state): 0.015 for state in (QUIET, BUSY, CROWDED)},
}
# As much weight as five runs of the host's own: t(4) makes a first quiet median's interval +-10%.
PRIOR_FREEDOM = 4


@dataclass(frozen=True)
class RunSpread:
    """How far one run's median of a job moves between runs: the relative standard deviation of its log
    about the job's mean over runs, pooled over jobs; how many of the host's runs that rests on (0: none),
    and the degrees of freedom an assumed spread it was pooled with adds (0: none)."""

    sigma: float
    runs: int
    prior_freedom: int = 0

    @property
    def freedom(self) -> int:
        """Degrees of freedom of sigma: the runs (not the jobs, which move together) are the independent
        draws, and the prior counts as PRIOR_FREEDOM more."""
        return self.prior_freedom + max(self.runs - 1, 0)

    def _log_half_width(self, confidence: float) -> float | None:
        if self.freedom < 1 or not math.isfinite(self.sigma):
            return None
        return float(student_t.ppf((1 + confidence) / 2, self.freedom)) * math.sqrt(2) * self.sigma

    def interval(self, center: float, confidence: float = 0.95) -> tuple[float, float] | None:
        """Where the next run's median should fall, from this run's: both carry the spread, so their ratio
        has sqrt(2) times it; Student's t with `freedom` degrees of freedom. None without any (fewer than
        2 runs and no prior)."""
        half = self._log_half_width(confidence)
        if half is None:
            return None
        return center * math.exp(-half), center * math.exp(half)

    def joined(self, low: float, high: float, center: float, confidence: float = 0.95) -> tuple[float, float]:
        """A within-run interval (low, high) about `center`, widened to hold this spread's interval too;
        as it is without a spread, the spread's alone when the run had too few rounds for one."""
        between = self.interval(center, confidence)
        if between is None:
            return low, high
        if math.isnan(low):
            return between
        return min(low, between[0]), max(high, between[1])

    def relative_half_width(self, confidence: float = 0.95) -> float:
        """The interval's smaller half over its center (0 without one): a within-run interval inside it
        leaves the reported interval as it is, however long the run goes on measuring."""
        half = self._log_half_width(confidence)
        return 0.0 if half is None else 1 - math.exp(-half)


NO_SPREAD = RunSpread(math.nan, 0)


def spread(records: pd.DataFrame, column: str = "p50_ms") -> RunSpread:
    """The pooled run-to-run spread of `column` (p50_ms or ratio) of the jobs in `records` (one host,
    backend, device and state) over their RECENT_RUNS latest runs; only jobs measured in at least two
    runs count.

    Computed on integer codes, not by grouping the frame: it runs twice for every finished row, and
    pandas' grouping took 35 ms a call on a history of 1000 records (7.7 s of a 95-s LUT build)."""
    records = records[pd.to_numeric(records[column], errors="coerce") > 0]
    if records.empty:
        return NO_SPREAD
    recent = _latest_runs(records)
    log_values = np.log(pd.to_numeric(recent[column]).to_numpy(dtype=float))
    run = pd.factorize(recent["run_id"], use_na_sentinel=False)[0]
    runs_seen = int(run.max()) + 1
    # each job's mean log in each of its runs
    pairs, pair_of_record = np.unique(_codes(recent, JOB_COLUMNS) * runs_seen + run, return_inverse=True)
    run_mean = np.bincount(pair_of_record, weights=log_values) / np.bincount(pair_of_record)
    job_of_pair, run_of_pair = np.divmod(pairs, runs_seen)
    _, job_index, runs_of_job = np.unique(job_of_pair, return_inverse=True, return_counts=True)
    job_mean = np.bincount(job_index, weights=run_mean) / runs_of_job
    repeated = runs_of_job[job_index] >= 2
    freedom = int(repeated.sum() - (runs_of_job >= 2).sum())
    if not freedom:
        return NO_SPREAD
    squares = float(((run_mean - job_mean[job_index])[repeated] ** 2).sum())
    return RunSpread(math.sqrt(squares / freedom), int(np.unique(run_of_pair[repeated]).size))


def _latest_runs(records: pd.DataFrame) -> pd.DataFrame:
    """The records of the RECENT_RUNS runs that finished last."""
    latest = records.groupby("run_id")["timestamp"].max().sort_values().index[-RECENT_RUNS:]
    return records[records["run_id"].isin(latest)]


def _codes(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One integer per distinct combination of `columns`' values; a missing value is a value of its own."""
    codes = np.zeros(len(frame), dtype=np.int64)
    for column in columns:
        column_codes, uniques = pd.factorize(frame[column], use_na_sentinel=False)
        codes = pd.factorize(codes * (len(uniques) + 1) + column_codes)[0]
    return codes


class RunHistory:
    """The medians measured on this host: `cache_dir/history/<host>.csv`, rewritten whole under a lock."""

    def __init__(self, cache_dir: Path, host: str | None = None) -> None:
        self.path = Path(cache_dir) / "history" / f"{host or socket.gethostname()}.csv"

    def read(self) -> pd.DataFrame:
        """The records so far (none when the file is missing); a file that is not a history is an error
        that names it, raised before anything is measured."""
        if not self.path.exists():
            return pd.DataFrame(columns=COLUMNS)
        try:
            records = pd.read_csv(self.path, dtype={"run_id": str, "onnx": str, "precision": str})
            if "ratio" not in records:  # recorded before ratios were
                records["ratio"] = np.nan
            if "crowded" not in records:  # recorded before the crowded state was told apart
                records["crowded"] = False
        except (OSError, ValueError, pd.errors.ParserError) as error:
            raise ProfilerError(
                f"{self.path}: not a readable run history ({error}); delete it to start anew"
            ) from None
        missing = [column for column in COLUMNS if column not in records]
        if missing:
            raise ProfilerError(
                f"{self.path}: not a run history of this version (no column {', '.join(missing)}); "
                "delete it to start anew"
            )
        if not pd.to_numeric(records["p50_ms"], errors="coerce").gt(0).all():
            raise ProfilerError(f"{self.path}: p50_ms holds values that are not positive numbers")
        return records[COLUMNS]

    def record(self, entry: dict[str, Any]) -> pd.DataFrame:
        """Add one row's median and ratio; return every record, this one included."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path.with_name(f".{self.path.name}.lock")):
            records = pd.concat([self.read(), pd.DataFrame([entry])[COLUMNS]], ignore_index=True)
            records = records.iloc[-KEPT_RECORDS:]
            with replacing(self.path) as tmp:
                records.to_csv(tmp, index=False)
        return records


def with_prior(observed: RunSpread, prior_sigma: float) -> RunSpread:
    """The host's own spread pooled with an assumed one: sums of squares add, weighted by their degrees of
    freedom (the assumed spread alone before the host's second run)."""
    own = max(observed.runs - 1, 0)
    squares = PRIOR_FREEDOM * prior_sigma**2 + (own * observed.sigma**2 if own else 0.0)
    return RunSpread(math.sqrt(squares / (PRIOR_FREEDOM + own)), observed.runs, PRIOR_FREEDOM)


def machine_state(contended: bool, wait_share: float, others_busy: bool) -> str:
    """quiet; busy: the row was contended, but the job's threads got the CPUs they needed; crowded: other
    processes were busy (`others_busy`: over the contention limit) and the job's threads waited for a CPU
    more than CROWDED_WAIT of the time, so others time-sliced them. A crowded job's runs land at one of
    several speeds (up to 2.1x apart beside one spinner and a test suite,
    results/busy_repeatability_prior2_loaded.md), far more than a busy one's move, so each state learns its
    spread apart: pooled, the busy runs' small spread hid the crowded runs' jumps. Waits with no one else
    busy are the job's own and never make a row crowded: on an idle 2-core machine a microsecond model's
    threads waited 0.5% of the time with one onnxruntime thread, 18-30% with two (docs/ARCHITECTURE.md).
    Where the scheduler's account is unreadable (NaN), a contended row counts as busy."""
    if not contended:
        return QUIET
    return CROWDED if others_busy and wait_share > CROWDED_WAIT else BUSY


def _in_state(records: pd.DataFrame, state: str) -> pd.Series:
    contended = records["contended"].astype(bool)
    crowded = records["crowded"].fillna(False).astype(bool)
    return {QUIET: ~contended, BUSY: contended & ~crowded, CROWDED: contended & crowded}[state]


def state_spread(
    records: pd.DataFrame, backend: str, device: str, state: str, column: str = "p50_ms"
) -> RunSpread:
    """The spread of one backend and device in one machine state (`machine_state`; each compared with its
    own state's runs only), pooled with the spread assumed for that state."""
    same = (records["backend"] == backend) & (records["device"] == device) & _in_state(records, state)
    return with_prior(spread(records[same], column), PRIOR_SIGMA[column, state])


def compared_with_earlier_runs(
    records: pd.DataFrame, entry: dict[str, Any], state: str, confidence: float = 0.95
) -> tuple[float, bool | None]:
    """The job's median over this host's RECENT_RUNS latest other runs in `state` (NaN: it has none), and
    whether `entry`'s median lies outside the interval those runs predict for a new one (None: no run to
    predict from). A row outside it ran in a state of the machine that the earlier runs did not: the one
    sign of this host's slow spells that nothing inside the VM reliably gives (results/host_probes_wake.md).
    The spread is the earlier runs' own, so a shifted run does not widen the interval it is held to."""
    others = records[records["run_id"] != entry["run_id"]]
    earlier = others[_in_state(others, state)]
    for column in JOB_COLUMNS:
        earlier = earlier[earlier[column] == entry[column]]
    if earlier.empty:
        return math.nan, None
    center = float(_latest_runs(earlier).groupby("run_id")["p50_ms"].median().median())
    expected = state_spread(others, entry["backend"], entry["device"], state).interval(center, confidence)
    if expected is None:
        return center, None
    return center, not expected[0] <= entry["p50_ms"] <= expected[1]
