"""Knowing when the machine is busy (profilers.load): parsing /proc and /sys fixture trees, the
contended flag on synthetic snapshots, waiting for quiet, and a real CPU spinner caught in the act."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest
from spinners import spinning

from profilers.load import (
    SPEED_PROBE_INTERVAL_S,
    SPEED_WINDOW,
    LoadMeter,
    ParallelProbe,
    Snapshot,
    SpeedTrack,
    parse_proc_stat,
    parse_process_ticks,
    sped_up_only,
    speed_index_ms,
    thermal,
    wait_until_quiet,
)

# /proc/stat of a 2-core machine (user nice system idle iowait irq softirq steal guest guest_nice).
STAT = "cpu  {user} 0 {system} {idle} 0 0 0 {steal} 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\n"
# /proc/PID/stat: the process name may hold spaces and parentheses; utime and stime are fields 14 and 15.
PID_STAT = "{pid} (python -m (w)) S 1 1 1 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 5 0 0\n"


def proc_tree(
    root: Path,
    user: int,
    idle: int,
    own: dict[int, int],
    steal: int = 0,
    khz: int = 0,
    sched: dict[int, list[tuple[int, int]]] | None = None,
) -> Path:
    """/proc (and cpufreq) as the kernel writes them; `sched`: per pid, each thread's (run ns, wait ns)."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/stat").write_text(STAT.format(user=user, system=0, idle=idle, steal=steal))
    (root / "proc/loadavg").write_text("0.12 0.30 0.25 1/90 8449\n")
    for pid, ticks in own.items():
        (root / f"proc/{pid}").mkdir(exist_ok=True)
        (root / f"proc/{pid}/stat").write_text(PID_STAT.format(pid=pid, utime=ticks, stime=0))
    for pid, threads in (sched or {}).items():
        for tid, (run_ns, wait_ns) in enumerate(threads, start=pid):
            (root / f"proc/{pid}/task/{tid}").mkdir(parents=True, exist_ok=True)
            (root / f"proc/{pid}/task/{tid}/schedstat").write_text(f"{run_ns} {wait_ns} 42\n")
    if khz:
        for cpu in ("cpu0", "cpu1"):
            freq = root / f"sys/devices/system/cpu/{cpu}/cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            (freq / "scaling_cur_freq").write_text(f"{khz}\n")
    return root


def test_proc_files_parse_as_the_kernel_documents_them():
    times = parse_proc_stat(
        "cpu  10 2 3 100 5 1 1 7 4 0\ncpu0 5 1 1 50 2 0 0 3 2 0\ncpu1 5 1 2 50 3 1 1 4 2 0\n"
    )
    assert (times.busy, times.idle, times.steal, times.cores) == (17, 105, 7, 2)  # guest is inside user
    assert parse_process_ticks(PID_STAT.format(pid=7, utime=40, stime=2)) == 42
    with pytest.raises(ValueError):
        parse_proc_stat("intr 1 2 3\n")


def measured(tmp_path: Path, before: dict, after: dict) -> dict:
    meter = LoadMeter()
    pids = list(before["own"])
    first = Snapshot.read(pids, proc_tree(tmp_path / "a", **before))
    second = Snapshot.read(pids, proc_tree(tmp_path / "b", **after))
    meter.add(first, second)
    return meter.columns([1.0, 1.05], limit_cores=0.25, root=tmp_path / "b")


def test_a_quiet_interval_is_not_flagged(tmp_path):
    # 200 ticks over 2 cores = 1 s; the measurement (pids 10, 11) used 98 busy ticks, the rest 2 (noise).
    columns = measured(
        tmp_path,
        {"user": 1000, "idle": 5000, "own": {10: 100, 11: 50}, "khz": 2_400_000},
        {"user": 1100, "idle": 5100, "own": {10: 190, 11: 58}, "khz": 2_400_000},
    )
    assert columns["contended"] is False and columns["contention"] == ""
    assert columns["other_cores"] == pytest.approx(0.02)
    assert columns["cpu_mhz"] == pytest.approx(2400) and columns["load_avg"] == pytest.approx(0.12)


def test_the_time_our_threads_waited_for_a_cpu_is_summed_over_every_thread(tmp_path):
    # pid 10 has two threads: over the interval they ran 0.6 + 0.2 s and waited 0.3 + 0.1 s for a CPU
    before = {"user": 1000, "idle": 5000, "own": {10: 100}, "sched": {10: [(1_000, 500), (2_000, 0)]}}
    after = {"user": 1190, "idle": 5010, "own": {10: 198}}
    after["sched"] = {10: [(1_000 + 600_000_000, 500 + 300_000_000), (2_000 + 200_000_000, 100_000_000)]}
    assert measured(tmp_path, before, after)["wait_pct"] == pytest.approx(100 * 0.4 / 1.2)
    before.pop("sched")
    assert math.isnan(measured(tmp_path / "none", before, after)["wait_pct"])  # unreadable: NaN


def test_another_busy_process_flags_the_row_with_the_figure(tmp_path):
    # Same second, but the machine was busy for 190 ticks: 92 of them not ours = 0.92 cores of others.
    columns = measured(
        tmp_path,
        {"user": 1000, "idle": 5000, "own": {10: 100}},
        {"user": 1190, "idle": 5010, "own": {10: 198}},
    )
    assert columns["contended"] is True
    assert columns["other_cores"] == pytest.approx(0.92)
    assert "other processes used 0.92 cores" in columns["contention"]


def test_the_tick_noise_of_short_rounds_does_not_add_up_to_other_processes(tmp_path):
    # Rounds of 10 ticks in which our own ticks come out one above or below the busy ones, as /proc's
    # 10-ms ticks make them: the others used nothing, and must not add up to a fifth of a core.
    meter = LoadMeter()
    for round_index, own in enumerate([6, 4, 6, 4, 5, 5]):
        before = {"user": 1000 + 5 * round_index, "idle": 5000 + 5 * round_index, "own": {10: 100}}
        after = {"user": before["user"] + 5, "idle": before["idle"] + 5, "own": {10: 100 + own}}
        meter.add(
            Snapshot.read([10], proc_tree(tmp_path / f"a{round_index}", **before)),
            Snapshot.read([10], proc_tree(tmp_path / f"b{round_index}", **after)),
        )
    assert meter.other_cores() == 0.0


def test_steal_and_a_moving_speed_index_flag_a_row(tmp_path):
    columns = measured(
        tmp_path,
        {"user": 1000, "idle": 5000, "steal": 0, "own": {10: 100}},
        {"user": 1050, "idle": 5130, "steal": 20, "own": {10: 150}},
    )
    assert columns["contended"] is True and "steal 10%" in columns["contention"]
    meter = LoadMeter()
    half = SPEED_WINDOW // 2
    # the group's first probes reach 1.0 ms, the row's last ones no better than 1.5: a lasting slowdown
    lasting = [1.4, 1.0] * half + [1.2] + [1.6, 1.5, 1.9] * half
    slowed = meter.columns(lasting, limit_cores=0.25, root=tmp_path)
    assert slowed["contention"] == "speed index moved x1.50"
    assert (slowed["speed_before_ms"], slowed["speed_after_ms"]) == (1.0, 1.5)
    assert json.loads(slowed["speed_probes_ms"]) == lasting
    sped_up = meter.columns([1.5, 1.6] * half + [1.0, 1.3] * half, limit_cores=0.25, root=tmp_path)
    assert sped_up["contention"] == "speed index moved x0.67"  # a change either way mixes two speeds
    # the busy warning reads the reason back: only a speed-up is not "too high"
    assert sped_up_only(sped_up["contention"]) and not sped_up_only(slowed["contention"])
    assert not sped_up_only(columns["contention"])
    # a host flipping between two speeds, each end slow for all but one of its window's probes (the old
    # single-probe rule flagged these)
    slow_ends = [1.4] * (SPEED_WINDOW - 1) + [1.0, 1.4, 1.0] + [1.4] * (SPEED_WINDOW - 1)
    for probes in (slow_ends, [1.0] + slow_ends[1:], slow_ends[:-1] + [1.0], [1.0, 1.4] * SPEED_WINDOW):
        assert meter.columns(probes, limit_cores=0.25, root=tmp_path)["contended"] is False, probes
    # a row of a short group: both ends are the probes there are
    assert meter.columns([1.0, 1.5], limit_cores=0.25, root=tmp_path)["contended"] is False


def test_the_speed_index_is_probed_between_rounds_once_its_interval_has_passed():
    now = [0.0]
    probes = iter([0.2, 0.14, 0.13])
    track = SpeedTrack(probe_ms=lambda: next(probes), clock=lambda: now[0])
    track.probe()  # before the group's first round
    now[0] += 0.2
    track.probe_if_due()  # after a short round: not yet due
    assert track.probes_ms == [0.2]
    now[0] += SPEED_PROBE_INTERVAL_S
    track.probe_if_due()
    track.probe_if_due()  # just probed: not due
    now[0] += SPEED_PROBE_INTERVAL_S
    track.probe_if_due()
    assert track.probes_ms == [0.2, 0.14, 0.13]


def test_a_one_thread_group_takes_no_parallel_probe():
    track = SpeedTrack(probe_ms=lambda: 0.06)
    track.probe()
    assert track.parallel is None and math.isnan(track.mean_parallel_cpus())
    track.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to take one away")
def test_two_threads_on_one_cpu_get_one_cpus_worth_of_work_done():
    """What a host that runs the VM's CPUs one at a time looks like, made here by pinning the probe's
    threads (created after the pin, so they inherit it) to one CPU."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        probe = ParallelProbe(2)
        # the median of five: one reading off (a fresh-clone CI read 1.33 as the largest of five) is noise
        pinned = statistics.median(probe.cpus(speed_index_ms()) for _ in range(5))
        probe.close()
    finally:
        os.sched_setaffinity(0, allowed)
    assert 0.5 < pinned < 1.3
    track = SpeedTrack(threads=2)  # with both CPUs: a value per probe, averaged for the row
    track.probe()
    track.probe()
    assert len(track.parallel_cpus) == 2 and track.mean_parallel_cpus() > 0
    track.close()


def test_unreadable_proc_is_nan_not_a_flag(tmp_path):
    meter = LoadMeter()
    meter.add(Snapshot.read([1], tmp_path), Snapshot.read([1], tmp_path))
    columns = meter.columns([], limit_cores=0.25, root=tmp_path)
    assert columns["contended"] is False and math.isnan(columns["other_cores"])
    assert math.isnan(columns["temp_c"]) and columns["throttle_events"] is None


def test_jetson_thermal_zones_and_gpu_clock_are_read(tmp_path):
    # The documented Jetson layout: thermal zones in millidegrees, the GPU's devfreq node in Hz.
    for index, (kind, milli) in enumerate([("CPU-therm", 48500), ("GPU-therm", 51250), ("PMIC-Die", 100000)]):
        zone = tmp_path / f"sys/class/thermal/thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    gpu = tmp_path / "sys/class/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("918000000\n")
    assert thermal(tmp_path) == {"temp_c": 100.0, "gpu_mhz": 918.0}


def test_x86_throttle_counters_flag_a_row(tmp_path):
    for tree, count in (("a", 3), ("b", 5)):
        root = proc_tree(tmp_path / tree, user=1000 + count, idle=5000 + 10 * count, own={10: 100})
        throttle = root / "sys/devices/system/cpu/cpu0/thermal_throttle"
        throttle.mkdir(parents=True)
        (throttle / "core_throttle_count").write_text(f"{count}\n")
    meter = LoadMeter()
    meter.add(Snapshot.read([10], tmp_path / "a"), Snapshot.read([10], tmp_path / "b"))
    columns = meter.columns([1.0, 1.0], limit_cores=0.25, root=tmp_path / "b")
    assert columns["throttle_events"] == 2 and "2 throttle events" in columns["contention"]


def machine(readings: list[float]):
    """A simulated machine: each window takes its length on a fake clock and reads the next load."""
    now = [0.0]
    values = iter(readings)

    def measure(window_s: float) -> float:
        now[0] += window_s
        return next(values)

    return measure, lambda: now[0]


def test_waiting_for_quiet_needs_consecutive_calm_windows_and_is_bounded():
    measure, clock = machine([1.0, 0.1, 0.1, 0.9, 0.1, 0.05, 0.1])
    waited = wait_until_quiet(60, 0.25, measure=measure, clock=clock)
    assert waited.quiet and waited.waited_s == 7.0
    measure, clock = machine([1.0] * 100)
    waited = wait_until_quiet(10, 0.25, measure=measure, clock=clock)
    assert not waited.quiet and waited.waited_s == 10.0 and waited.other_cores == 1.0


@pytest.fixture
def spinner():
    """One process spinning on a CPU for the length of a test."""
    with spinning(1) as pids:
        yield pids[0]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_a_real_spinner_is_seen(spinner):
    from profilers.load import other_cores_now

    assert other_cores_now(0.5) > 0.5  # the spinner alone keeps most of one core busy
    assert os.getpid() != spinner
