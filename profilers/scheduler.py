"""Measuring a set of jobs: one worker process per job, rounds that interleave them, adaptive stopping.

Drift on a shared CPU (frequency, other tenants, thermal) is slow compared with a burst, so running the
jobs in interleaved rounds (order reshuffled every round) spreads it over all of them alike instead of
penalising whichever ran during a bad minute; only one worker runs at a time. Within a group, the jobs of
one series (same model, target, backend, device, precision and batch) are also compared with the
series' reference, its largest model: one ratio of burst medians per round, in which the drift cancels,
so the ranking of the widths holds even when absolute medians swing between runs.

A job stops when the interval a re-run's median should fall in (from its round medians, see stats) and
the interval of its ratio to the reference are tight enough (after a minimum count), or when its time is
up; the reference stays until its series is done.
Every request has a timeout; a worker that crashes or hangs is killed and only its own row says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from profilers.backends import get_backend
from profilers.cache import onnx_digest
from profilers.environment import environment
from profilers.errors import ProfilerError
from profilers.history import (
    BUSY,
    CROWDED,
    QUIET,
    RunHistory,
    compared_with_earlier_runs,
    machine_state,
    state_spread,
)
from profilers.jobs import KEY_COLUMNS, Job, Settings
from profilers.load import LoadMeter, Snapshot, SpeedTrack, cpus_kept_awake, wait_until_quiet
from profilers.modelfile import ModelFile
from profilers.results import LatencyStore, load_latency, row_key
from profilers.stats import Ratio, Summary, converged

# Rounds shared with the reference before a job's ratio may count as converged.
MIN_RATIO_ROUNDS = 8


class WorkerFailed(Exception):
    """The worker reported an error, died, or did not answer in time (`status` says which)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class WorkerHandle:
    """The parent's end of one worker process: JSON-line requests with a timeout each."""

    def __init__(self, job: Job, settings: Settings, log_path: Path) -> None:
        environment_vars = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        environment_vars["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, environment_vars.get("PYTHONPATH", "")) if p
        )
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "profilers.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=environment_vars,
            )
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self.send({"job": job.to_dict(), "settings": settings.to_dict()})

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            note = self._death_note()
            self.kill()
            raise WorkerFailed("error", note) from None

    def receive(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerFailed("timeout", f"no answer from the worker within {timeout_s:g} s (killed)")
            if not self._selector.select(remaining):
                continue
            chunk = os.read(self.process.stdout.fileno(), 1 << 20)
            if not chunk:
                note = self._death_note()
                self.kill()
                raise WorkerFailed("error", note)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            self.kill()
            raise WorkerFailed("error", reply["error"])
        return reply

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.send(message)
        return self.receive(timeout_s)

    def _death_note(self) -> str:
        code = self.process.wait(timeout=10)
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        last = f": {lines[-1].strip()}" if lines else ""
        return f"worker exited with code {code}{last} (log: {self.log_path})"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._close_pipes()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout_s: float) -> dict[str, Any]:
        reply = self.request({"cmd": "close"}, timeout_s)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._close_pipes()
        return reply

    def _close_pipes(self) -> None:
        self._selector.close()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


@dataclass(frozen=True)
class ProgressEvent:
    """What `run_jobs` reports as it goes: skipped, ready (with the worker pid) or finished (with the row)."""

    kind: str
    job: Job
    index: int
    total: int
    row: dict[str, Any] | None = None
    pid: int | None = None


@dataclass(eq=False)  # identity: jobs are compared as objects, not by their samples
class _Measurement:
    job: Job
    index: int
    model: ModelFile
    worker: WorkerHandle | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    # every timed inference so far, in ms: an array grown per burst, since `converged` reads it every round
    # (converting a list of up to 131k ints on every check made the checks a third of the demo's profiling)
    samples: np.ndarray = field(default_factory=lambda: np.empty(0))
    round_medians_ms: dict[int, float] = field(default_factory=dict)
    round_minima_ms: dict[int, float] = field(default_factory=dict)
    reference: _Measurement | None = None  # the largest model of this job's series in the group
    setup_s: float = 0.0  # worker start to warm: build (if not cached), load, first inference, warm-up
    measure_s: float = 0.0  # this job's own bursts (the others' turns in a round are not counted)
    load: LoadMeter = field(default_factory=LoadMeter)  # what else the machine did during its rounds
    quiet_wait_s: float = math.nan
    cpus_awake: bool = False  # idle CPUs held out of their idle states (profilers.load.cpus_kept_awake)
    # The host's run-to-run interval half-widths (relative) of a median and of a ratio, by machine state
    # (profilers.history): measuring on cannot narrow the reported intervals below them.
    median_between_runs: dict[str, float] = field(default_factory=dict)
    ratio_between_runs: dict[str, float] = field(default_factory=dict)

    def state(self, contended: bool, settings: Settings) -> str:
        """The machine state its rounds so far were measured in (`profilers.history.machine_state`)."""
        others_busy = self.load.other_cores() > settings.contention_cores
        return machine_state(contended, self.load.wait_share(), others_busy)

    def add_burst(self, times_ns: list[int]) -> None:
        self.samples = np.concatenate([self.samples, np.asarray(times_ns, dtype=np.float64) / 1e6])

    def turn_count(self, settings: Settings) -> int:
        """burst_size inferences, or as many as fill burst_min_seconds at the last burst's median."""
        if not self.round_medians_ms:
            return settings.burst_size
        last_ms = self.round_medians_ms[max(self.round_medians_ms)]
        return max(settings.burst_size, math.ceil(settings.burst_min_seconds * 1000 / last_ms))

    def ratio(self, confidence: float) -> Ratio | None:
        """Paired per-round ratio of the bursts' minima to the reference's: the ranking statistic that moved
        least between runs, quiet and with a spinner (results/busy_repeatability_quiet.md)."""
        if self.reference is None:
            return None
        if self.reference is self:
            return Ratio(1.0, 1.0, 1.0, len(self.round_minima_ms))
        return Ratio.paired(self.round_minima_ms, self.reference.round_minima_ms, confidence)

    def converged(self, settings: Settings) -> bool:
        """Its median's interval is tight, and so is its ratio's, unless it has no live reference: each
        within ci_rel, or within the host's run-to-run interval for the machine's present state where
        that is wider. A quiet ratio always measures to ci_rel: ratios rank configurations against each
        other inside a run, and one stopped at the run-to-run spread put its own imprecision into the
        history that spread is learned from, so the spread could only widen (every job down to the minimum
        8 rounds by the 7th of 10 quiet runs, results/busy_repeatability_prior.md)."""
        rounds = np.array(list(self.round_medians_ms.values()))
        state = self.state(self.load.other_cores() > settings.contention_cores, settings)
        tolerance = max(settings.ci_rel, self.median_between_runs.get(state, 0.0))
        if not converged(self.samples, rounds, tolerance, settings.confidence, settings.min_queries):
            return False
        if self.reference is self or self.reference is None or self.reference.worker is None:
            return True
        ratio = self.ratio(settings.confidence)
        tolerance = max(settings.ci_rel, self.ratio_between_runs.get(state, 0.0))
        return ratio is not None and ratio.within(tolerance, MIN_RATIO_ROUNDS)


def _between_runs(
    records: pd.DataFrame, backend: str, device: str, confidence: float
) -> tuple[dict[str, float], dict[str, float]]:
    """The host's run-to-run interval half-widths of a median and of a ratio, by machine state."""
    medians, ratios = {}, {}
    for state in (QUIET, BUSY, CROWDED):
        spread = state_spread(records, backend, device, state)
        # A quiet first run measures on to ci_rel, so the medians inside it stay as sharp as before; a busy
        # one stops at the assumed spread, which no longer run on a busy machine narrows.
        own = spread.runs >= 2
        medians[state] = spread.relative_half_width(confidence) if own or state != QUIET else 0.0
        if state != QUIET:  # quiet ratios always measure to ci_rel (see converged)
            ratio_spread = state_spread(records, backend, device, state, "ratio")
            ratios[state] = ratio_spread.relative_half_width(confidence)
    return medians, ratios


def _assign_references(group: list[_Measurement]) -> None:
    """Each series' reference is its member with the most weight bytes (the widest configuration)."""
    series: dict[tuple, list[_Measurement]] = {}
    for measurement in group:
        identity = measurement.job.identity()
        key = tuple(identity[column] for column in KEY_COLUMNS if column != "config_id")
        series.setdefault(key, []).append(measurement)
    for members in series.values():
        reference = max(members, key=lambda m: m.model.weight_bytes)
        for measurement in members:
            measurement.reference = reference


def validate(jobs: Sequence[Job]) -> dict[int, ModelFile]:
    """Reject bad input before any worker starts: missing/corrupt ONNX, unknown backend or device."""
    models: dict[int, ModelFile] = {}
    seen: dict[tuple, int] = {}
    for index, job in enumerate(jobs):
        models[index] = ModelFile.inspect(job.onnx, job.batch)
        backend = get_backend(job.backend)
        backend.check(job)
        if job.precision == "int8" and not models[index].quantized:
            raise ProfilerError(
                f"{job.onnx} has no QuantizeLinear/DequantizeLinear nodes: int8 measures a quantized ONNX "
                "(planner profile writes one from --calibration-data)"
            )
        backend.artifact_for(models[index], job)
        key = job.key()
        if key in seen:
            raise ProfilerError(
                f"jobs {seen[key] + 1} and {index + 1} measure the same thing {key}: give "
                "them different metadata (model, config_id, target)"
            )
        seen[key] = index
    return models


def run_jobs(
    jobs: Sequence[Job],
    out_dir: Path,
    settings: Settings | None = None,
    force: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> pd.DataFrame:
    """Measure every job not yet measured under out_dir; return the rows of all given jobs.

    Rows are added to out_dir/latency.parquet (+ .csv) as each job finishes. Bad input raises
    ProfilerError before anything runs; a job whose worker fails gets a row with status error/timeout.
    """
    settings = settings or Settings()
    jobs = list(jobs)
    if not jobs:
        raise ProfilerError("no jobs to run")
    models = validate(jobs)
    history = RunHistory(settings.resolved_cache_dir)
    history.read()  # a corrupt history stops the run before anything is measured, naming the file
    store = LatencyStore(out_dir)
    done = set() if force else store.measured_keys()
    report = progress or (lambda event: None)
    pending = []
    for index, job in enumerate(jobs):
        if job.key() in done:
            report(ProgressEvent("skipped", job, index, len(jobs)))
        else:
            pending.append(_Measurement(job, index, models[index]))
    if pending and settings.wait_quiet_s > 0:
        waited = wait_until_quiet(settings.wait_quiet_s, settings.contention_cores)
        for measurement in pending:
            measurement.quiet_wait_s = waited.waited_s
    run_id = uuid.uuid4().hex[:12]
    rng = np.random.default_rng(settings.seed)
    with contextlib.ExitStack() as held:
        awake = settings.keep_cpus_awake and bool(pending) and held.enter_context(cpus_kept_awake())
        for measurement in pending:
            measurement.cpus_awake = awake
        for start in range(0, len(pending), settings.max_workers):
            _measure_group(
                pending[start : start + settings.max_workers],
                len(jobs),
                store,
                history,
                settings,
                run_id,
                rng,
                report,
            )
    wanted = {row_key(job.identity()) for job in jobs}
    table = load_latency(out_dir)
    keys = table[list(KEY_COLUMNS)].to_dict("records")
    return table[[row_key(row) in wanted for row in keys]].reset_index(drop=True)


def _measure_group(
    group: list[_Measurement],
    total: int,
    store: LatencyStore,
    history: RunHistory,
    settings: Settings,
    run_id: str,
    rng: np.random.Generator,
    report: Callable[[ProgressEvent], None],
) -> None:
    def finish(measurement: _Measurement, row: dict[str, Any]) -> None:
        store.add(row)
        report(ProgressEvent("finished", measurement.job, measurement.index, total, row))

    loaded: list[_Measurement] = []
    speed: SpeedTrack | None = None
    try:
        # Every worker starts and imports its runtime at once (0.7 s each, one after another a third of a
        # small group's setup); then they build, load and run their first inference one after another,
        # so none of that competes with another worker.
        starting, imported = [], []
        for measurement in group:
            log = store.out_dir / "logs" / f"{run_id}-{measurement.index:04d}-{measurement.job.backend}.log"
            try:
                measurement.worker = WorkerHandle(measurement.job, settings, log)
                starting.append(measurement)
            except WorkerFailed as failure:
                finish(measurement, _failed_row(measurement, failure, run_id))
        for measurement in starting:
            try:
                measurement.worker.receive(settings.build_timeout_s)
                imported.append(measurement)
            except WorkerFailed as failure:
                finish(measurement, _failed_row(measurement, failure, run_id))
        for measurement in imported:
            started = time.perf_counter()
            try:
                measurement.ready = measurement.worker.request({"cmd": "build"}, settings.build_timeout_s)
            except WorkerFailed as failure:
                measurement.setup_s = time.perf_counter() - started
                finish(measurement, _failed_row(measurement, failure, run_id))
                continue
            measurement.setup_s = time.perf_counter() - started
            loaded.append(measurement)
        active = _warm_up(loaded, settings, lambda m, failure: finish(m, _failed_row(m, failure, run_id)))
        for measurement in active:
            report(
                ProgressEvent(
                    "ready", measurement.job, measurement.index, total, pid=measurement.worker.process.pid
                )
            )
        _assign_references(active)
        records = history.read()
        # one backend and device's spreads hold for all its jobs: a LUT group holds a dozen, and each
        # spread is a pass over the history (about 7 ms on a 2-core VM)
        between_runs: dict[tuple[str, str], tuple[dict[str, float], dict[str, float]]] = {}
        for measurement in active:
            key = (measurement.job.backend, measurement.job.device)
            if key not in between_runs:
                between_runs[key] = _between_runs(records, *key, settings.confidence)
            medians, ratios = between_runs[key]
            measurement.median_between_runs, measurement.ratio_between_runs = dict(medians), dict(ratios)
        # every job of the group starts its rounds together, after this first probe
        widest = max((m.job.resolved_threads for m in active), default=1)
        speed = SpeedTrack(threads=min(widest, os.cpu_count() or 1))
        speed.probe()
        round_index = 0
        while active:
            # What else the machine did is read around the whole round, not around each burst: every
            # process of the round is ours, and a microsecond model's 5-ms bursts span too few of
            # /proc's 10-ms ticks to tell (one tick of anything else read as 0.3-0.9 cores).
            own = [os.getpid()] + [m.worker.process.pid for m in active if m.worker is not None]
            round_start = Snapshot.read(own)
            took_part = []
            for position in rng.permutation(len(active)):
                measurement = active[position]
                request = {
                    "cmd": "burst",
                    "count": measurement.turn_count(settings),
                    "seconds": settings.burst_seconds,
                    "warmup": settings.burst_warmup,
                }
                began = time.perf_counter()
                try:
                    reply = measurement.worker.request(request, settings.timeout_s)
                except WorkerFailed as failure:
                    finish(measurement, _failed_row(measurement, failure, run_id))
                    measurement.worker = None
                    continue
                measurement.measure_s += time.perf_counter() - began
                took_part.append(measurement)
                measurement.add_burst(reply["times_ns"])
                if reply["times_ns"]:
                    measurement.round_medians_ms[round_index] = float(np.median(reply["times_ns"])) / 1e6
                    measurement.round_minima_ms[round_index] = min(reply["times_ns"]) / 1e6
            round_end = Snapshot.read(own)
            for measurement in took_part:
                measurement.load.add(round_start, round_end)
            speed.probe_if_due()
            round_index += 1
            active = [measurement for measurement in active if measurement.worker is not None]
            verdicts = {id(m): m.converged(settings) for m in active}
            leaving = _stopping(active, verdicts, settings)
            for measurement in leaving:
                try:
                    closing = measurement.worker.close(settings.timeout_s)
                except WorkerFailed as failure:
                    finish(measurement, _failed_row(measurement, failure, run_id))
                    measurement.worker = None
                    continue
                speed.probe_if_due()
                row = _ok_row(
                    measurement, closing, verdicts[id(measurement)], run_id, settings, history, speed
                )
                finish(measurement, row)
                if measurement.worker.log_path.stat().st_size == 0:
                    measurement.worker.log_path.unlink()  # nothing to read: keep logs/ for what went wrong
                measurement.worker = None
            active = [measurement for measurement in active if measurement not in leaving]
    finally:
        if speed is not None:
            speed.close()
        for measurement in group:
            if measurement.worker is not None and measurement.worker.alive:
                measurement.worker.kill()


def _warm_up(
    loaded: list[_Measurement],
    settings: Settings,
    failed: Callable[[_Measurement, WorkerFailed], None],
) -> list[_Measurement]:
    """Warm every loaded worker up at once; the ones that answered warm.

    Nothing is timed during a warm-up, so the workers need not take turns: one after another, a group of
    8 quick jobs spent 8 s of its 13 s warming up (1 s each)."""
    started = time.perf_counter()
    asked = []
    for measurement in loaded:
        try:
            measurement.worker.send({"cmd": "warmup"})
            asked.append(measurement)
        except WorkerFailed as failure:
            failed(measurement, failure)
    warm = []
    for measurement in asked:
        try:
            measurement.worker.receive(settings.build_timeout_s)
        except WorkerFailed as failure:
            measurement.setup_s += time.perf_counter() - started
            failed(measurement, failure)
            continue
        measurement.setup_s += time.perf_counter() - started
        warm.append(measurement)
    return warm


def _stopping(
    active: list[_Measurement], verdicts: dict[int, bool], settings: Settings
) -> list[_Measurement]:
    """The jobs that stop after this round: converged or out of time. A reference stops only once the
    rest of its series has, because their ratios need it in every round."""

    def done(m: _Measurement) -> bool:
        return verdicts[id(m)] or m.measure_s >= settings.max_seconds

    leaving = [m for m in active if m.reference is not m and done(m)]
    staying = [m for m in active if m not in leaving]
    return leaving + [
        m
        for m in staying
        if m.reference is m and done(m) and not any(o.reference is m and o is not m for o in staying)
    ]


def _base_row(measurement: _Measurement, run_id: str) -> dict[str, Any]:
    job = measurement.job
    meta = dict(job.metadata)
    return {
        **meta,
        **job.identity(),
        "width": meta.get("width", math.nan),
        "config": meta.get("config", ""),
        "input_shape": measurement.model.shape_text,
        "run_id": run_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "estimated": False,
        "weight_bytes": measurement.model.weight_bytes,
        "macs": meta.get("macs"),
        "params": meta.get("params"),
        "wall_s": measurement.setup_s + measurement.measure_s,
        "quiet_wait_s": measurement.quiet_wait_s,
        "cpus_awake": measurement.cpus_awake,
    }


def _ok_row(
    measurement: _Measurement,
    closing: dict[str, Any],
    is_converged: bool,
    run_id: str,
    settings: Settings,
    history: RunHistory,
    speed: SpeedTrack,
) -> dict[str, Any]:
    ready = measurement.ready
    job = measurement.job
    samples = measurement.samples
    load = measurement.load.columns(speed.probes_ms, settings.contention_cores)
    state = measurement.state(load["contended"], settings)
    if state == CROWDED:
        load["contention"] += f"; crowded: its threads waited for a CPU {load['wait_pct']:.0f}% of the time"
    ratio = measurement.ratio(settings.confidence)
    ranked = ratio is not None and measurement.reference is not measurement
    entry = {
        "run_id": run_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "onnx": onnx_digest(job.onnx),
        "backend": job.backend,
        "device": job.device,
        "precision": job.precision,
        "batch": job.batch,
        "threads": job.resolved_threads,
        "contended": load["contended"],
        "crowded": state == CROWDED,
        "p50_ms": float(np.median(samples)),
        "ratio": ratio.value if ranked else math.nan,
    }
    records = history.record(entry)
    same_state = (records, job.backend, job.device, state)
    run_spread = state_spread(*same_state)
    rounds = np.array(list(measurement.round_medians_ms.values()))
    summary = Summary.of(samples, rounds, job.batch, settings.confidence, run_spread)
    history_p50, off_history = compared_with_earlier_runs(records, entry, state, settings.confidence)
    if ranked:
        ratio = ratio.widened(state_spread(*same_state, "ratio"), settings.confidence)
    return {
        **_base_row(measurement, run_id),
        "status": "ok",
        "error": "",
        "converged": is_converged,
        **vars(summary),
        "history_p50_ms": history_p50,
        "off_history": pd.NA if off_history is None else off_history,
        **load,
        "parallel_cpus": speed.mean_parallel_cpus(),
        "ref_config_id": measurement.reference.job.identity()["config_id"],
        "ratio_to_ref": ratio.value if ratio else math.nan,
        "ratio_ci_low": ratio.low if ratio else math.nan,
        "ratio_ci_high": ratio.high if ratio else math.nan,
        "rounds": len(measurement.round_medians_ms),
        "round_ms": json.dumps(
            {
                "round": sorted(measurement.round_medians_ms),
                "median": [
                    round(measurement.round_medians_ms[r], 6) for r in sorted(measurement.round_medians_ms)
                ],
                "min": [
                    round(measurement.round_minima_ms[r], 6) for r in sorted(measurement.round_minima_ms)
                ],
            }
        ),
        "first_ms": ready["first_ms"],
        "peak_rss_bytes": closing["peak_rss_bytes"],
        "artifact_bytes": ready["artifact_bytes"],
        "device_mem_bytes": closing.get("device_mem_bytes"),
        **ready["env"],
    }


def _failed_row(measurement: _Measurement, failure: WorkerFailed, run_id: str) -> dict[str, Any]:
    job = measurement.job
    env = measurement.ready.get("env") or environment(job.resolved_threads, job.backend, "")
    message = " ".join(str(failure).split())
    return {
        **_base_row(measurement, run_id),
        "status": failure.status,
        "error": message,
        "converged": False,
        "n": len(measurement.samples),
        **env,
    }
