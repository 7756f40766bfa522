"""Which small probe sees the host's slow spells: the profiler's speed index (a single-threaded sort that
fits in L2) read fast in every row of a run whose models ran 1.5x slower (results/profiler_cost_1202.md).

One process alternates, for --minutes: the speed index, the median of the same sorts, a 64 MiB copy
(memory bandwidth), a random gather over 8 MiB (the last-level cache), the sorts on two threads at once
against one, round trips waking a thread on the other CPU, and bursts of S-MobileNetV2 at
0.35x and 1x through ONNX Runtime (the profiler's session options; one thread unless --threads). A probe
is worth adding to the rows if it moves with the models' latency, and above all with their ratio, which
ranking uses.

    python benchmarks/host_probes.py --minutes 10 --name host_probes
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
from machine import machine_state
from profiler_common import RESULTS, command_line, conditions, export_widths
from scipy.stats import mannwhitneyu

from profilers import Job
from profilers.backends import get_backend
from profilers.load import _SPEED_DATA, ParallelProbe, cpus_kept_awake, speed_index_ms
from profilers.modelfile import ModelFile

COPY_BYTES = 64 << 20
GATHER_BYTES = 8 << 20
BURST = {0.35: 20, 1.0: 6}  # inferences per burst, about 20 ms each at one thread


def sort_median_ms(repeats: int = 10) -> float:
    """The median, not the best, of the speed index's sorts: a spell that slows some sorts shows here."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        np.sort(_SPEED_DATA, kind="quicksort")
        times.append((time.perf_counter_ns() - started) / 1e6)
    return float(np.median(times))


class MemoryProbes:
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.source = rng.random(COPY_BYTES // 8)
        self.target = np.empty_like(self.source)
        self.table = rng.random(GATHER_BYTES // 4).astype(np.float32)
        self.index = rng.integers(0, self.table.size, size=1 << 20)

    def copy_ms(self) -> float:
        return min(_timed(lambda: np.copyto(self.target, self.source)) for _ in range(2))

    def gather_ms(self) -> float:
        return min(_timed(lambda: self.table.take(self.index)) for _ in range(3))


class WakeProbe:
    """Round trips between a thread pinned to the first CPU and one pinned to the second: how long the
    second CPU takes to run a thread woken on it. Two-thread models wake their other thread at every
    operator, so a host that runs the VM's CPUs one at a time should show here first."""

    def __init__(self, cpus: list[int]) -> None:
        self.cpus = cpus
        self.ask, self.answer = threading.Event(), threading.Event()
        threading.Thread(target=self._peer, daemon=True).start()

    def _peer(self) -> None:
        os.sched_setaffinity(0, {self.cpus[1]})
        while True:
            self.ask.wait()
            self.ask.clear()
            self.answer.set()

    def trips_us(self, count: int = 20) -> tuple[float, float]:
        """The median and the longest of `count` round trips, from a thread pinned to the first CPU."""
        trips: list[float] = []

        def caller() -> None:
            os.sched_setaffinity(0, {self.cpus[0]})
            for _ in range(count):
                started = time.perf_counter_ns()
                self.ask.set()
                self.answer.wait()
                self.answer.clear()
                trips.append((time.perf_counter_ns() - started) / 1e3)

        thread = threading.Thread(target=caller)
        thread.start()
        thread.join()
        return float(np.median(trips)), float(max(trips))


def _timed(action) -> float:
    started = time.perf_counter_ns()
    action()
    return (time.perf_counter_ns() - started) / 1e6


def steal_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8])


def open_sessions(work: Path, threads: int) -> dict[float, object]:
    sessions = {}
    for width, job in export_widths(work).items():
        if width not in BURST:
            continue
        job = Job(job.onnx, backend="onnxruntime", threads=threads, metadata=job.metadata)
        backend = get_backend("onnxruntime")
        model = ModelFile.inspect(job.onnx)
        artifact_dir = work / f"artifact-{width:g}-{threads}"
        artifact_dir.mkdir(parents=True, exist_ok=True)
        backend.build(model, job, artifact_dir)
        session = backend.open(artifact_dir / backend.artifact_name, model, job, model.random_input())
        session.activate()
        for _ in range(20):
            session.infer()
        sessions[width] = session
    return sessions


def burst_ms(session, count: int) -> tuple[float, float]:
    times = [_timed(session.infer) for _ in range(count)]
    return float(min(times)), float(np.median(times))


def measure(minutes: float, work: Path, threads: int) -> pd.DataFrame:
    sessions = open_sessions(work, threads)
    memory = MemoryProbes()
    pair = ParallelProbe(2)  # the profiler's own probe: ten sorts on each of two threads at once
    wake = WakeProbe(sorted(os.sched_getaffinity(0))[:2])
    rows = []
    started = time.monotonic()
    steal = steal_ticks()
    while time.monotonic() - started < minutes * 60:
        row = {"t_s": time.monotonic() - started}
        row["speed_index_ms"] = speed_index_ms(10)
        row["sort_median_ms"] = sort_median_ms()
        row["copy_ms"] = memory.copy_ms()
        row["gather_ms"] = memory.gather_ms()
        row["single_ms"] = min(_timed(lambda: ParallelProbe.sorts(_SPEED_DATA)) for _ in range(3))
        row["pair_ms"] = pair.together_ms()
        row["wake_us"], row["wake_max_us"] = wake.trips_us()
        for width, session in sessions.items():
            row[f"min_{width:g}_ms"], row[f"p50_{width:g}_ms"] = burst_ms(session, BURST[width])
        now = steal_ticks()
        row["steal_ticks"], steal = now - steal, now
        rows.append(row)
    pair.close()
    table = pd.DataFrame(rows)
    table["pair_over_single"] = table["pair_ms"] / table["single_ms"]
    table["ratio_min"] = table["min_0.35_ms"] / table["min_1_ms"]
    table["ratio_p50"] = table["p50_0.35_ms"] / table["p50_1_ms"]
    return table


PROBES = [
    "speed_index_ms",
    "sort_median_ms",
    "copy_ms",
    "gather_ms",
    "pair_ms",
    "pair_over_single",
    "wake_us",
    "wake_max_us",
    "steal_ticks",
]
TARGETS = ["p50_1_ms", "p50_0.35_ms", "min_1_ms", "min_0.35_ms", "ratio_min", "ratio_p50"]


def _slow(table: pd.DataFrame) -> pd.Series:
    """Cycles in a slow spell: 1x p50 more than 15% above its 10th percentile."""
    return table["p50_1_ms"] > 1.15 * table["p50_1_ms"].quantile(0.1)


def _auc(probe: pd.Series, slow: pd.Series) -> float:
    """The chance that a slow cycle's reading is above a fast one's (Mann-Whitney U over the pairs)."""
    if slow.all() or not slow.any():
        return math.nan
    u = mannwhitneyu(probe[slow], probe[~slow]).statistic
    return float(u / (slow.sum() * (~slow).sum()))


def report(table: pd.DataFrame, command: str, state: str, window_s: float) -> str:
    windows = table.groupby((table["t_s"] // window_s).astype(int)).median()
    correlation = windows[PROBES + TARGETS].corr(method="spearman").loc[PROBES, TARGETS]
    slow = _slow(table)
    split = pd.DataFrame(
        {
            "1x p50 within 15% of its 10th percentile": table[~slow].median(),
            "1x p50 over 15% above it (slow spell)": table[slow].median(),
        }
    ).loc[PROBES + TARGETS]
    tells_slow = pd.DataFrame(
        {
            "cycles": [_auc(table[probe], slow) for probe in PROBES],
            f"{window_s:g}-s windows": [_auc(windows[probe], _slow(windows)) for probe in PROBES],
        },
        index=PROBES,
    )
    return "\n".join(
        [
            "# Host probes beside model latency",
            "",
            f"Command: `{command}`",
            "",
            f"Conditions: {state}",
            "",
            f"{len(table)} cycles over {table['t_s'].max() / 60:.1f} min; {slow.mean():.0%} of them in a "
            "slow spell (1x p50 more than 15% above its 10th percentile).",
            "",
            f"Spearman correlation of each probe with the models, over {window_s:g}-s windows (medians):",
            "",
            correlation.round(2).to_markdown(),
            "",
            "Medians of every column, in and out of the slow spells:",
            "",
            split.round(4).to_markdown(),
            "",
            "How well each probe tells slow-spell cycles (and windows) from the others: the area under its "
            "ROC curve (0.5: not at all, 1: perfectly, higher readings in the spells):",
            "",
            tells_slow.round(2).to_markdown(),
            "",
            "Spread over the whole run (ratio of the 90th to the 10th percentile of the windows):",
            "",
            (windows[PROBES[:-1] + TARGETS].quantile(0.9) / windows[PROBES[:-1] + TARGETS].quantile(0.1))
            .round(3)
            .to_frame("p90/p10")
            .to_markdown(),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--threads", type=int, default=1, help="the models' intra-op threads")
    parser.add_argument(
        "--keep-cpus-awake", action="store_true", help="hold idle CPUs out of their idle states (needs root)"
    )
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window of the correlations")
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner-host-probes"))
    parser.add_argument("--name", default="host_probes")
    args = parser.parse_args()
    command = command_line()
    state = f"{conditions()} {machine_state()}."
    with cpus_kept_awake() if args.keep_cpus_awake else nullcontext(False) as awake:
        if args.keep_cpus_awake and not awake:
            parser.error("--keep-cpus-awake: cannot write /dev/cpu_dma_latency (needs root)")
        table = measure(args.minutes, args.work, args.threads)
    state += f" Idle CPUs held awake: {'yes' if awake else 'no'}."
    table.round(5).to_csv(RESULTS / f"{args.name}.csv", index=False)
    text = report(table, command, state, args.window)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
