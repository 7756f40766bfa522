"""What else the machine did while a job was measured: other processes' CPU time, steal, clocks, heat.

A latency measured while another process competes for the cores is too high, and by how much depends on
the minute it ran; nothing in the samples themselves says so. So around every round the parent reads the
kernel's CPU accounting (/proc/stat) and the ticks of its own process tree (itself and its workers,
/proc/PID/stat): busy ticks that are not its own are other processes' (`other_cores`: how many cores
they kept busy on average), `steal` ticks are a hypervisor's other guests. The scheduler's own account of
its threads (/proc/PID/task/TID/schedstat: time on a CPU, time runnable but waiting for one) says whether
the others also took the cores the job's threads needed (`wait_pct`): beside a spinner on a spare core
its threads never wait, with two spinners on two cores they do, though `other_cores` reads about 1.2 in
both cases because our own threads displace the spinners. Clock frequency, thermal zones
and throttle counters come from the documented sysfs files (cpufreq, thermal, devfreq on a Jetson's GPU)
where readable. A speed index (a fixed numpy sort, best of 50) is timed every 0.5 s through the rounds,
and for jobs of several threads the same sorts on that many threads at once (`parallel_cpus`): a host can
run a VM's CPUs one at a time, which no single-threaded probe and no steal counter shows.

A row is `contended` when, during the rounds it took part in, other processes used more than
`contention_cores` cores (Settings, default 0.25), steal exceeded STEAL_LIMIT of the CPU time, a throttle
counter moved, or the speed index moved by more than SPEED_LIMIT between the start of its group's rounds
and the end of its own (`speed_change`); `contention` says which, with the figures. Every file is
read under a root directory (default `/`) so tests can use fixture trees; an unreadable one is NaN.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Steal above this share of the CPU time flags a row (another guest of the hypervisor took the cores).
STEAL_LIMIT = 0.05
# A contended row whose threads waited for a CPU more than this share of their runnable time was crowded:
# others took the cores its threads needed. Measured on this 2-core host (S-MobileNetV2, onnxruntime):
# 1.5-6% quiet, 10% beside a spinner on the spare core, 39-53% with more spinners than spare cores.
CROWDED_WAIT = 0.20
# The speed index after / before beyond this factor (either way) flags a row.
SPEED_LIMIT = 1.3
# How a row flagged by the speed index says so, followed by the factor (`sped_up_only` reads it back).
SPEED_REASON = "speed index moved x"
# The speed index is taken again after a round once this long has passed since the last probe (a probe
# costs about 7 ms: 1.4% of the measuring time).
SPEED_PROBE_INTERVAL_S = 0.5
# A row's speed before and after are each the best of this many probes, 5 s (`speed_change`).
SPEED_WINDOW = 10
# Sorts each thread of a parallel probe runs (about 0.6 ms on this project's VM).
PARALLEL_SORTS = 10
# Devfreq nodes of Jetson GPUs (Nano/TX1, TX2, Xavier, Orin) and any node whose name says gpu.
_GPU_DEVFREQ = ("57000000.gpu", "17000000.gp10b", "17000000.gv11b", "17000000.ga10b")


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate `cpu` line of /proc/stat, in ticks: busy, idle (with iowait) and steal."""

    busy: int
    idle: int
    steal: int
    cores: int = 1  # how many per-CPU lines follow: the aggregate spans all of them

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.steal


def parse_proc_stat(text: str) -> CpuTimes:
    """user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user."""
    lines = [line.split() for line in text.splitlines()]
    cores = sum(1 for fields in lines if fields and fields[0][:3] == "cpu" and fields[0][3:].isdigit())
    for fields in lines:
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]] + [0] * (8 - len(fields[1:9]))
            user, nice, system, idle, iowait, irq, softirq, steal = values
            return CpuTimes(user + nice + system + irq + softirq, idle + iowait, steal, max(cores, 1))
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def parse_process_ticks(text: str) -> int:
    """utime + stime of one process (all its threads) from /proc/PID/stat; the name may hold spaces."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the full line


def parse_schedstat(text: str) -> tuple[int, int]:
    """Nanoseconds on a CPU and waiting on a run queue, from /proc/PID/task/TID/schedstat."""
    fields = text.split()
    return int(fields[0]), int(fields[1])


def parse_loadavg(text: str) -> float:
    return float(text.split()[0])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: Path) -> float:
    text = _read(path)
    try:
        return float(text.strip()) if text is not None else math.nan
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class Snapshot:
    """The counters at one instant: machine CPU times, own processes' ticks, CPU clocks, throttle count."""

    cpu: CpuTimes | None
    own_ticks: dict[int, int]
    cpu_khz: float
    throttles: float
    # per own process: nanoseconds its threads ran and waited for a CPU (absent where unreadable)
    own_sched: dict[int, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, pids: Iterable[int], root: Path = Path("/")) -> Snapshot:
        text = _read(root / "proc/stat")
        try:
            cpu = parse_proc_stat(text) if text is not None else None
        except ValueError:
            cpu = None
        own, sched = {}, {}
        for pid in pids:
            stat = _read(root / f"proc/{pid}/stat")
            if stat is not None:
                try:
                    own[pid] = parse_process_ticks(stat)
                except (IndexError, ValueError):
                    continue
            threads = [_read(path) for path in (root / f"proc/{pid}/task").glob("*/schedstat")]
            try:
                times = [parse_schedstat(text) for text in threads if text is not None]
            except (IndexError, ValueError):
                continue
            if times:
                sched[pid] = (sum(run for run, _ in times), sum(wait for _, wait in times))
        cpus = root / "sys/devices/system/cpu"
        clocks = [_number(p) for p in sorted(cpus.glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))]
        clocks = [c for c in clocks if not math.isnan(c)]
        counters = [_number(p) for p in sorted(cpus.glob("cpu[0-9]*/thermal_throttle/*_throttle_count"))]
        counters = [c for c in counters if not math.isnan(c)]
        return cls(
            cpu=cpu,
            own_ticks=own,
            cpu_khz=float(np.mean(clocks)) if clocks else math.nan,
            throttles=float(sum(counters)) if counters else math.nan,
            own_sched=sched,
        )


def thermal(root: Path = Path("/")) -> dict[str, float]:
    """The hottest thermal zone (deg C) and the GPU clock from devfreq (MHz), NaN where unreadable."""
    temps = [_number(p) / 1000 for p in sorted((root / "sys/class/thermal").glob("thermal_zone*/temp"))]
    temps = [t for t in temps if not math.isnan(t) and -50 < t < 200]  # some zones report placeholders
    gpu = math.nan
    for node in sorted((root / "sys/class/devfreq").glob("*")):
        if node.name in _GPU_DEVFREQ or "gpu" in node.name.lower():
            gpu = _number(node / "cur_freq") / 1e6
            break
    return {"temp_c": max(temps) if temps else math.nan, "gpu_mhz": gpu}


def load_average(root: Path = Path("/")) -> float:
    text = _read(root / "proc/loadavg")
    try:
        return parse_loadavg(text) if text is not None else math.nan
    except (IndexError, ValueError):
        return math.nan


@dataclass
class LoadMeter:
    """Sums, over the bursts of one job, the machine's ticks split into own, others' and stolen."""

    total: int = 0
    other: int = 0
    steal: int = 0
    intervals: int = 0
    cores: int = 1
    khz: list[float] = field(default_factory=list)
    throttles: float = 0.0
    throttles_readable: bool = False
    own_run_ns: int = 0
    own_wait_ns: int = 0

    def add(self, before: Snapshot, after: Snapshot) -> None:
        if before.cpu is None or after.cpu is None:
            return
        total = after.cpu.total - before.cpu.total
        if total <= 0:
            return
        own = sum(after.own_ticks[p] - before.own_ticks[p] for p in before.own_ticks if p in after.own_ticks)
        busy = after.cpu.busy - before.cpu.busy
        self.total += total
        # Signed: /proc's ticks make one interval's own time exceed its busy time as often as fall short,
        # and clamping each interval at 0 summed that noise into a phantom 0.15-0.25 cores of others.
        self.other += busy - own
        self.steal += max(0, after.cpu.steal - before.cpu.steal)
        for pid, (run, wait) in before.own_sched.items():
            if pid in after.own_sched:  # a thread that ended in between takes its times with it: at least 0
                self.own_run_ns += max(0, after.own_sched[pid][0] - run)
                self.own_wait_ns += max(0, after.own_sched[pid][1] - wait)
        self.intervals += 1
        self.cores = after.cpu.cores
        for khz in (before.cpu_khz, after.cpu_khz):
            if not math.isnan(khz):
                self.khz.append(khz)
        if not (math.isnan(before.throttles) or math.isnan(after.throttles)):
            self.throttles += max(0.0, after.throttles - before.throttles)
            self.throttles_readable = True

    def other_cores(self) -> float:
        """Cores other processes kept busy on average (NaN before any interval)."""
        return max(0, self.other) / self.total * self.cores if self.total else math.nan

    def steal_share(self) -> float:
        return self.steal / self.total if self.total else math.nan

    def wait_share(self) -> float:
        """Of the time our threads were runnable, the share they waited for a CPU (NaN if unreadable)."""
        runnable = self.own_run_ns + self.own_wait_ns
        return self.own_wait_ns / runnable if runnable else math.nan

    def columns(self, speeds_ms: list[float], limit_cores: float, root: Path = Path("/")) -> dict[str, Any]:
        """The load columns of a row, with the `contended` flag and its reasons; `speeds_ms` are the speed
        index probes from before its group's first round to after its own last (`SpeedTrack`)."""
        other = self.other_cores()
        steal = self.steal_share()
        reasons = []
        if other > limit_cores:
            reasons.append(f"other processes used {other:.2f} cores")
        if steal > STEAL_LIMIT:
            reasons.append(f"steal {steal:.0%}")
        if self.throttles > 0:
            reasons.append(f"{self.throttles:g} throttle events")
        before_ms, after_ms = speed_change(speeds_ms)
        speed = after_ms / before_ms if before_ms > 0 else math.nan
        if speed > SPEED_LIMIT or speed < 1 / SPEED_LIMIT:
            reasons.append(f"{SPEED_REASON}{speed:.2f}")
        return {
            "contended": bool(reasons),
            "contention": "; ".join(reasons),
            "load_avg": load_average(root),
            "other_cores": other,
            "steal_pct": steal * 100,
            "wait_pct": self.wait_share() * 100,
            "cpu_mhz": float(np.mean(self.khz)) / 1000 if self.khz else math.nan,
            "throttle_events": int(self.throttles) if self.throttles_readable else None,
            "speed_before_ms": before_ms,
            "speed_after_ms": after_ms,
            "speed_probes_ms": json.dumps([round(ms, 4) for ms in speeds_ms]),
            **thermal(root),
        }


def sped_up_only(contention: object) -> bool:
    """Whether a row's `contention` holds no reason but a speed index that got faster ("moved x0.75"): its
    rounds ran partly slow, partly fast, so its latencies are not necessarily too high. A reason in another
    form (a table from another version) is not one."""
    if not isinstance(contention, str) or not contention:
        return False
    pattern = re.escape(SPEED_REASON) + r"(\d+(?:\.\d+)?)"
    moves = [re.fullmatch(pattern, reason) for reason in contention.split("; ")]
    return all(move is not None and float(move[1]) < 1 for move in moves)


_SPEED_DATA = np.random.default_rng(0).standard_normal(20_000)


def speed_index_ms(repeats: int = 50) -> float:
    """Best time of a fixed single-threaded workload (sorting 20k floats): the machine's speed right now.

    Best of 50 (about 7 ms), not of 5: a parent that has waited idle for its workers sorted up to 1.6x
    slower in its first few tries on a quiet machine, which flagged quiet rows
    (results/interval_shift_best_of_5.md)."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter_ns()
        np.sort(_SPEED_DATA, kind="quicksort")
        best = min(best, (time.perf_counter_ns() - started) / 1e6)
    return best


def speed_change(speeds_ms: list[float]) -> tuple[float, float]:
    """The speed index before a row (the best of its group's first SPEED_WINDOW probes) and after it (of
    its own last SPEED_WINDOW); NaN without probes.

    Single probes at the two ends flagged rows on an idle machine: this host flips between two speeds from
    one probe to the next (sorts of 0.136 and 0.18-0.21 ms, about half and half, on 2026-12-01), so one end
    often caught the slow one; a median of three flipped as often. The best of several probes is the speed
    the machine still reaches, as the best of 50 sorts is within a probe: it moves only when a slowdown
    lasts (another guest on every core, throttling), and then the row's latency moves with it. Five probes
    (2.5 s) were still all slow at one end in 1 of 4 runs of the demo's jobs: the host stays slow for
    seconds at a time; ten were not in any (results/speed_index_rounds.md)."""
    if not speeds_ms:
        return math.nan, math.nan
    return min(speeds_ms[:SPEED_WINDOW]), min(speeds_ms[-SPEED_WINDOW:])


class ParallelProbe:
    """How many CPUs' worth of the speed index's sorts `threads` threads get done at once.

    On this project's VM two threads sorted together in 1.15x the time of one outside slow spells and in
    2.16x inside them: the host then ran the VM's two CPUs one at a time. The speed index, one thread, read
    the same in and out, /proc/stat's steal stayed 0, and two-thread models ran 1.5-1.9x slower, small
    widths most (results/host_probes_pair.md). numpy lets go of the GIL while it sorts."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="parallel-probe")
        self.data = [_SPEED_DATA.copy() for _ in range(threads)]

    @staticmethod
    def sorts(data: np.ndarray) -> None:
        for _ in range(PARALLEL_SORTS):
            np.sort(data, kind="quicksort")

    def together_ms(self, repeats: int = 3) -> float:
        """The best time of all the threads' sorts, run at once."""
        together = math.inf
        for _ in range(repeats):
            started = time.perf_counter_ns()
            list(self.pool.map(self.sorts, self.data))
            together = min(together, (time.perf_counter_ns() - started) / 1e6)
        return together

    def cpus(self, single_sort_ms: float) -> float:
        """`threads` x the time one thread takes (`single_sort_ms` a sort, from the speed index) over the
        best time of all of them at once: about `threads` when every thread has a CPU of its own."""
        return self.threads * PARALLEL_SORTS * single_sort_ms / self.together_ms()

    def close(self) -> None:
        self.pool.shutdown()


@dataclass
class SpeedTrack:
    """The speed index through one group's rounds: before the first, then after a round or a row once
    SPEED_PROBE_INTERVAL_S has passed since the last probe (`speed_change`); with `threads` above one,
    each probe also measures the CPUs that many threads get at once (`ParallelProbe`). Close it."""

    probe_ms: Callable[[], float] = speed_index_ms
    clock: Callable[[], float] = time.monotonic
    threads: int = 1
    probes_ms: list[float] = field(default_factory=list)
    parallel_cpus: list[float] = field(default_factory=list)
    last_s: float = -math.inf
    parallel: ParallelProbe | None = None

    def __post_init__(self) -> None:
        if self.threads > 1:
            self.parallel = ParallelProbe(self.threads)

    def probe(self) -> None:
        self.probes_ms.append(self.probe_ms())
        if self.parallel is not None:
            self.parallel_cpus.append(self.parallel.cpus(self.probes_ms[-1]))
        self.last_s = self.clock()

    def mean_parallel_cpus(self) -> float:
        """The CPUs the group's threads got at once, on average over the probes so far (NaN: one thread)."""
        return float(np.mean(self.parallel_cpus)) if self.parallel_cpus else math.nan

    def close(self) -> None:
        if self.parallel is not None:
            self.parallel.close()

    def probe_if_due(self) -> None:
        if self.clock() - self.last_s >= SPEED_PROBE_INTERVAL_S:
            self.probe()


def other_cores_now(window_s: float, root: Path = Path("/"), sleep: Callable[[float], None] = time.sleep):
    """Cores other processes (not this one) kept busy over the next `window_s` seconds."""
    pids = [os.getpid()]
    before = Snapshot.read(pids, root)
    sleep(window_s)
    meter = LoadMeter()
    meter.add(before, Snapshot.read(pids, root))
    return meter.other_cores()


@dataclass(frozen=True)
class QuietWait:
    """How waiting for a quiet machine ended."""

    quiet: bool
    waited_s: float
    other_cores: float


def wait_until_quiet(
    max_s: float,
    limit_cores: float,
    window_s: float = 1.0,
    windows: int = 3,
    measure: Callable[[float], float] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> QuietWait:
    """Wait until others stay under `limit_cores` for `windows` consecutive windows, at most max_s."""
    measure = measure or other_cores_now
    window_s = min(window_s, max_s)
    started = clock()
    calm = 0
    other = math.nan
    while True:
        other = measure(window_s)
        calm = calm + 1 if other <= limit_cores else 0
        if calm >= windows:
            return QuietWait(True, clock() - started, other)
        if clock() - started + window_s > max_s:
            return QuietWait(False, clock() - started, other)


CPU_DMA_LATENCY = Path("/dev/cpu_dma_latency")


@contextmanager
def cpus_kept_awake(request_file: Path | None = None) -> Iterator[bool]:
    """Keep every CPU out of its idle states while measuring: a PM QoS request for a wake-up latency of
    0 us, which holds while the file stays open. Yields whether the kernel took it.

    Between its turns in a round a worker's core goes idle, and a deep idle state takes time to leave
    (what benchmarking guides disable, and jetson_clocks does on a Jetson). On this project's VM the quiet
    runs were less steady than runs beside a spinner on some days; held, idle cores poll instead, which
    no process's CPU time shows (`other_cores` does not move). Whether it helps there is not settled
    (results/busy_repeatability_awake.md), so it is asked for, not the default. Opening the file needs
    root (or a udev rule); without it, measuring goes on as before."""
    try:
        handle = os.open(request_file or CPU_DMA_LATENCY, os.O_WRONLY)
    except OSError:
        yield False
        return
    try:
        os.write(handle, struct.pack("i", 0))
    except OSError:
        os.close(handle)
        yield False
        return
    try:
        yield True
    finally:
        os.close(handle)
