"""Statistics of a latency sample: percentiles and distribution-free intervals of the median.

Latency distributions on a shared CPU are skewed with long tails, so no normal approximation: an interval
is a pair of order statistics whose coverage follows from the binomial distribution of how many values
fall below the true median. The same interval serves the paired ratio of two jobs: one ratio per round of
their burst medians, so a slow drift of the machine's speed, which moves both alike, cancels out.

The reported interval of a row's median (`rerun_interval`) is built from its round medians, not its
samples: samples inside a burst share the machine's state of that moment, so an interval from them is far
too narrow (results/busy_repeatability.md: it held the next run's median in 56-69% of cases). Round
medians are closer to independent draws; their order-statistic interval is widened by sqrt(2) about the
median, because it must hold the next run's median, which carries its own error as large as this run's.
That is the within-run part only: whole runs move together by more (profilers.history), so a row's
interval is the union of this one and the host's run-to-run interval where its history has one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import binom

from profilers.history import NO_SPREAD, RunSpread


@lru_cache(maxsize=4096)  # asked for every job after every round; scipy's binomial takes 0.4 ms
def median_ci_indices(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based order-statistic indices (lo, hi) with P(x[lo] <= median <= x[hi]) >= confidence.

    None when n is too small for any interval at that confidence.
    """
    alpha = 1.0 - confidence
    # Largest k with P(B <= k) <= alpha/2 for B ~ Binomial(n, 1/2); the interval is [x_(k+1), x_(n-k)].
    k = int(binom.ppf(alpha / 2, n, 0.5))
    while k >= 0 and binom.cdf(k, n, 0.5) > alpha / 2:
        k -= 1
    if k < 0:
        return None
    return k, n - 1 - k


def median_ci(samples_ms: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The confidence interval of the median (NaN, NaN when there are too few samples)."""
    indices = median_ci_indices(len(samples_ms), confidence)
    if indices is None:
        return math.nan, math.nan
    ordered = np.sort(samples_ms)
    return float(ordered[indices[0]]), float(ordered[indices[1]])


# A re-run's median has an error as large as this run's: the interval of a difference of two is sqrt(2) wider.
RERUN_SCALE = math.sqrt(2)


def rerun_interval(
    samples_ms: np.ndarray, round_medians_ms: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Where a re-run's median should fall: the order-statistic interval of the round medians, moved to lie
    about the samples' median (the samples' own, extended to the round medians' range, while there are too
    few rounds for one), widened by RERUN_SCALE. (NaN, NaN) without samples."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        return math.nan, math.nan
    return _rerun_interval_about(float(np.median(samples)), samples, round_medians_ms, confidence)


def _rerun_interval_about(
    center: float, samples: np.ndarray, round_medians_ms: np.ndarray, confidence: float
) -> tuple[float, float]:
    """`rerun_interval` about the samples' median `center`, which the caller has already computed.

    The round medians' interval is moved to lie about `center`: where rounds run at two speeds the
    samples' median and the round medians' median part (2.7% for onnxruntime's 0.35x in a run whose host
    squeezed its two CPUs into one for a tenth of the rounds), and an interval that spanned that gap could
    never close to +-2%, however many rounds ran: in two of four runs 3 and 7 of 8 jobs measured to their
    30-s cap (results/profiler_cost_1202_parallel.md). The gap is the same in a re-run with the same mix
    of rounds; the interval's width is what says how far a re-run moves."""
    rounds = np.asarray(round_medians_ms, dtype=np.float64)
    low, high = median_ci(rounds, confidence)
    if not math.isnan(low):
        middle = float(np.median(rounds))
        low, high = center + (low - middle), center + (high - middle)
    else:
        low, high = median_ci(samples, confidence)
        if math.isnan(low):
            return math.nan, math.nan
        if rounds.size:
            low, high = min(low, float(rounds.min())), max(high, float(rounds.max()))
    low, high = min(low, center), max(high, center)
    return center - RERUN_SCALE * (center - low), center + RERUN_SCALE * (high - center)


def converged(
    samples_ms: np.ndarray, round_medians_ms: np.ndarray, ci_rel: float, confidence: float, min_queries: int
) -> bool:
    """Enough samples and rounds, and the re-run interval lies within median * (1 +- ci_rel)."""
    if len(samples_ms) < min_queries or median_ci_indices(len(round_medians_ms), confidence) is None:
        return False
    samples = np.asarray(samples_ms, dtype=np.float64)
    median = float(np.median(samples))  # a pass over every sample, every round: taken once
    low, high = _rerun_interval_about(median, samples, round_medians_ms, confidence)
    return low >= median * (1 - ci_rel) and high <= median * (1 + ci_rel)


@dataclass(frozen=True)
class Ratio:
    """latency(job) / latency(reference): the median of the per-round ratios and its confidence interval."""

    value: float
    low: float
    high: float
    rounds: int

    @classmethod
    def paired(
        cls, rounds: Mapping[int, float], reference_rounds: Mapping[int, float], confidence: float = 0.95
    ) -> Ratio | None:
        """From two jobs' burst medians keyed by round; None when they never shared a round."""
        shared = sorted(set(rounds) & set(reference_rounds))
        if not shared:
            return None
        ratios = np.array([rounds[r] / reference_rounds[r] for r in shared])
        low, high = median_ci(ratios, confidence)
        return cls(float(np.median(ratios)), low, high, len(shared))

    def widened(self, run_spread: RunSpread, confidence: float = 0.95) -> Ratio:
        """The same ratio, its interval also holding the host's run-to-run spread of ratios."""
        low, high = run_spread.joined(self.low, self.high, self.value, confidence)
        return Ratio(self.value, low, high, self.rounds)

    def within(self, ci_rel: float, min_rounds: int) -> bool:
        """At least min_rounds, and the interval lies within value * (1 +- ci_rel)."""
        return (
            self.rounds >= min_rounds
            and not math.isnan(self.low)
            and self.low >= self.value * (1 - ci_rel)
            and self.high <= self.value * (1 + ci_rel)
        )


@dataclass(frozen=True)
class Summary:
    """The latency columns of a result row (milliseconds)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    n: int
    ci_low_ms: float
    ci_high_ms: float
    run_spread: float
    spread_runs: int
    throughput_ips: float

    @classmethod
    def of(
        cls,
        samples_ms: np.ndarray,
        round_medians_ms: np.ndarray,
        batch: int = 1,
        confidence: float = 0.95,
        run_spread: RunSpread = NO_SPREAD,
    ) -> Summary:
        """The columns of one run's samples; the interval also holds the host's run-to-run spread."""
        samples = np.asarray(samples_ms, dtype=np.float64)
        if samples.size == 0:
            raise ValueError("no samples")
        p50, p90, p99 = np.percentile(samples, [50, 90, 99])
        low, high = run_spread.joined(
            *rerun_interval(samples, round_medians_ms, confidence), float(p50), confidence
        )
        return cls(
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(samples.mean()),
            std_ms=float(samples.std(ddof=1)) if samples.size > 1 else 0.0,
            min_ms=float(samples.min()),
            n=int(samples.size),
            ci_low_ms=low,
            ci_high_ms=high,
            run_spread=run_spread.sigma,
            spread_runs=run_spread.runs,
            # Single-stream throughput: inputs per second at the median latency.
            throughput_ips=float(batch * 1000.0 / p50) if p50 > 0 else math.nan,
        )
