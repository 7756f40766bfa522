"""Load test of the ladder runtime: does switching widths hold the latency budget while the device gets busy?

Drives `profilers.ladder.Ladder` with inputs (closed loop: `concurrency` callers back to back; or open
loop: `rate` requests per second, latency counted from the scheduled arrival) while its own interference
runs on a schedule such as "quiet:20s,spin2:20s,quiet:20s" (CPU-spinning processes, at most one per core,
each also bounded by its phase's end, always ended by the test, also on Ctrl-C). The same run is repeated
with the ladder pinned to each fixed rung, so the adaptive ladder is compared with every width it could
have shipped alone. Per 1-s window: p50, p90 against the budget, the rung served, the accuracy served.
Writes loadtest.json, loadtest.csv (the windows) and loadtest.png (latency and rung over time).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.units import parse_duration_ms
from profilers.errors import ProfilerError
from profilers.files import replacing
from profilers.ladder import ControllerSettings, Ladder, measure_memory

HOLD_FRACTION = 0.95  # a run "holds the budget" when at least this share of its 1-s windows does
_PHASE = re.compile(r"^(?P<kind>quiet|spin(?P<count>\d+)):(?P<duration>[^:]+)$")
# A spinner busy-loops until its deadline or until its parent is gone (bounded even if the test is killed).
_SPIN = (
    "import os, sys, time\n"
    "parent, deadline = os.getppid(), time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < deadline and os.getppid() == parent:\n"
    "    for _ in range(20000): pass\n"
)


@dataclass(frozen=True)
class Phase:
    """`spinners` CPU-spinning processes for `seconds` (0 spinners: quiet)."""

    spinners: int
    seconds: float

    @property
    def name(self) -> str:
        return f"spin{self.spinners}" if self.spinners else "quiet"


def max_spinners() -> int:
    """One spinner per core this process may use: more only measures the scheduler."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_schedule(text: str) -> list[Phase]:
    """`quiet:20s,spin2:20s,quiet:20s` as phases; a malformed phase or too many spinners is a PlannerError."""
    phases = []
    limit = max_spinners()
    for part in (piece.strip() for piece in text.split(",")):
        match = _PHASE.match(part)
        if not match:
            raise PlannerError(
                f"--interference: {part!r} is not a phase; write e.g. quiet:20s,spin2:20s,quiet:20s"
            )
        count = int(match["count"]) if match["count"] else 0
        if match["kind"] != "quiet" and count < 1:
            raise PlannerError(
                f"--interference: {part!r} asks for no spinners; write quiet:{match['duration']}"
            )
        if count > limit:
            raise PlannerError(
                f"--interference: {part!r} asks for {count} spinners; this machine has {limit} cores "
                f"(at most spin{limit})"
            )
        try:
            seconds = parse_duration_ms(match["duration"]) / 1e3
        except PlannerError:
            seconds = 0.0
        if seconds <= 0:
            raise PlannerError(
                f"--interference: phase {part!r} needs a duration longer than 0 with its unit, e.g. 20s"
            )
        phases.append(Phase(count, seconds))
    return phases


def fit_schedule(phases: list[Phase], duration_s: float | None) -> list[Phase]:
    """The schedule over the whole test: quiet after its end; a schedule longer than the test is refused."""
    total = sum(phase.seconds for phase in phases)
    if duration_s is None:
        return phases
    if duration_s <= 0:
        raise PlannerError(f"--duration must be positive, got {duration_s:g} s")
    if total > duration_s + 1e-9:
        raise PlannerError(f"--interference lasts {total:g} s, longer than --duration {duration_s:g} s")
    return phases + ([Phase(0, duration_s - total)] if duration_s - total > 1e-9 else [])


class Interference:
    """Starts and stops the schedule's spinners from a background thread; `stop()` ends them all."""

    def __init__(self, phases: list[Phase]) -> None:
        self.phases = phases
        self._stop = threading.Event()
        self._processes: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        end = start
        for phase in self.phases:
            end += phase.seconds
            if phase.spinners:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._processes = [
                        subprocess.Popen([sys.executable, "-c", _SPIN, f"{phase.seconds + 1:.3f}"])
                        for _ in range(phase.spinners)
                    ]
            self._stop.wait(max(0.0, end - time.monotonic()))
            self._end_spinners()
            if self._stop.is_set():
                return

    def _end_spinners(self) -> None:
        with self._lock:
            processes, self._processes = self._processes, []
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._end_spinners()


@contextmanager
def interference(phases: list[Phase]) -> Iterator[Interference]:
    running = Interference(phases)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class LoadtestResult:
    """The windows of every run, their summaries, the switches, memory, and the files written."""

    windows: pd.DataFrame
    summary: pd.DataFrame
    report: dict[str, Any]
    files: list[Path]


def run_loadtest(
    manifest: Path,
    out_dir: Path,
    schedule: str,
    duration_s: float | None = None,
    rate: float | None = None,
    concurrency: int = 1,
    budget_ms: float | None = None,
    fixed: bool = True,
    memory: bool = True,
    threads: int | None = None,
    settings: ControllerSettings | None = None,
    say: Callable[[str], None] = print,
) -> LoadtestResult:
    """The adaptive ladder (and, with `fixed`, each rung pinned) under the interference schedule."""
    phases = fit_schedule(parse_schedule(schedule), duration_s)
    if rate is not None and rate <= 0:
        raise PlannerError(f"--rate must be positive, got {rate:g}")
    if concurrency < 1:
        raise PlannerError(f"--concurrency must be at least 1, got {concurrency}")
    total_s = sum(phase.seconds for phase in phases)
    try:
        ladder = Ladder.from_manifest(manifest, budget_ms=budget_ms, settings=settings, threads=threads)
    except ProfilerError as error:
        raise PlannerError(str(error)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, runs = [], []
    with ladder, _log_lines(say):
        state = ladder.state()
        budget, metric = state["budget_ms"], state["metric"]
        say(
            f"ladder: {' -> '.join(rung['label'] for rung in state['rungs'])}; "
            f"{metric} budget {budget:.3f} ms; starting on {state['label']}"
            + ("; no rung meets the budget, serving the fastest" if state["budget_unmet"] else "")
        )
        names = ["adaptive"] + ([f"fixed {rung['label']}" for rung in state["rungs"]] if fixed else [])
        for run_index, name in enumerate(names):
            ladder.pin(None if run_index == 0 else run_index - 1)
            say(f"{name}: {total_s:g} s, {' '.join(f'{p.name}:{p.seconds:g}s' for p in phases)}")
            switched = len(ladder.switches)
            requests, started = _drive(ladder, phases, total_s, rate, concurrency)
            for switch in ladder.switches[switched:]:
                switch["t_s"] = switch["at"] - started  # seconds into this run
            windows = _windows(requests, phases, ladder, budget)
            windows.insert(0, "run", name)
            frames.append(windows)
            runs.append(_summary(name, requests, windows, ladder, budget, len(ladder.switches) - switched))
            say(_describe(runs[-1]))
        switches = [
            {key: value for key, value in switch.items() if key != "at"} for switch in ladder.switches
        ]
        final_state = ladder.state()
    summary = pd.DataFrame(runs)
    report = {
        "manifest": str(manifest),
        "model": ladder.manifest["model"]["name"],
        "target": ladder.manifest["target"]["name"],
        "budget_ms": budget,
        "metric": metric,
        "schedule": [{"phase": p.name, "spinners": p.spinners, "seconds": p.seconds} for p in phases],
        "load": {"rate": rate} if rate is not None else {"concurrency": concurrency},
        "threads": threads if threads is not None else ladder.manifest["target"]["threads"],
        "runs": runs,
        "switches": switches,
        "switching_cost": _switching_cost(switches),
        "rungs": final_state["rungs"],
        "verdict": _verdict(summary),
        "machine": _machine_state(),
    }
    if memory:
        try:
            report["memory"] = measure_memory(manifest, threads)
        except ProfilerError as error:
            report["memory"] = {"error": str(error)}
    windows = pd.concat(frames, ignore_index=True)
    files = _write(out_dir, windows, report, budget, phases)
    return LoadtestResult(windows, summary, report, files)


def _drive(
    ladder: Ladder, phases: list[Phase], total_s: float, rate: float | None, concurrency: int
) -> tuple[pd.DataFrame, float]:
    """Serve requests for `total_s` under the interference: one row per request, and when it started
    (on the controller's clock)."""
    inputs = [np.random.default_rng(seed).random(ladder.input_shape, dtype=np.float32) for seed in range(8)]
    rows: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    slot = [0]
    errors: list[BaseException] = []
    stop = threading.Event()  # set on Ctrl-C: callers finish their inference and leave

    def closed_loop(start: float, end: float) -> None:
        count = 0
        while (now := time.perf_counter()) < end and not stop.is_set():
            served = ladder.serve(inputs[count % len(inputs)])
            count += 1
            with lock:
                rows.append((now - start, served.latency_ms, served.rung))

    def open_loop(start: float, end: float) -> None:
        while True:
            with lock:
                index = slot[0]
                slot[0] += 1
            scheduled = start + index / rate
            if scheduled >= end or stop.wait(max(0.0, scheduled - time.perf_counter())):
                return
            served = ladder.serve(inputs[index % len(inputs)])
            with lock:
                rows.append((scheduled - start, (time.perf_counter() - scheduled) * 1e3, served.rung))

    def guarded(target: Callable[[float, float], None], start: float, end: float) -> None:
        try:
            target(start, end)
        except BaseException as error:  # reported in the calling thread
            errors.append(error)

    workers = concurrency if rate is None else max(4, concurrency)
    target = closed_loop if rate is None else open_loop
    with interference(phases):
        start, started = time.perf_counter(), ladder.controller.clock()
        threads = [
            threading.Thread(target=guarded, args=(target, start, start + total_s), daemon=True)
            for _ in range(workers)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():  # join with a timeout: Ctrl-C still reaches the main thread
                    thread.join(0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    if errors:
        error = errors[0]
        if isinstance(error, ProfilerError):
            raise PlannerError(str(error)) from None
        raise error
    table = pd.DataFrame(rows, columns=["t_s", "latency_ms", "rung"]).sort_values("t_s", ignore_index=True)
    return table, started


def _phase_at(phases: list[Phase], t: float) -> Phase:
    end = 0.0
    for phase in phases:
        end += phase.seconds
        if t < end:
            return phase
    return phases[-1]


def _windows(requests: pd.DataFrame, phases: list[Phase], ladder: Ladder, budget: float) -> pd.DataFrame:
    """Per 1-s window (by request start): p50, p90 against the budget, rung and accuracy served."""
    accuracy = np.array([rung.accuracy for rung in ladder.rungs])
    widths = [rung.label for rung in ladder.rungs]
    rows = []
    total = sum(phase.seconds for phase in phases)
    for second in range(int(np.ceil(total))):
        part = requests[(requests["t_s"] >= second) & (requests["t_s"] < second + 1)]
        if second + 1 > total + 1e-9 and len(part) == 0:
            continue
        latency = part["latency_ms"].to_numpy()
        rungs = part["rung"].to_numpy()
        phase = _phase_at(phases, second + 0.5)
        p90 = float(np.quantile(latency, 0.9)) if len(latency) else float("nan")
        rows.append(
            {
                "second": second,
                "phase": phase.name,
                "spinners": phase.spinners,
                "requests": len(latency),
                "p50_ms": float(np.quantile(latency, 0.5)) if len(latency) else float("nan"),
                "p90_ms": p90,
                "within_budget": bool(len(latency) and p90 <= budget),
                "rung": float(rungs.mean()) if len(rungs) else float("nan"),
                "rung_label": widths[int(np.bincount(rungs).argmax())] if len(rungs) else "",
                "accuracy": float(accuracy[rungs].mean()) if len(rungs) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _summary(
    name: str, requests: pd.DataFrame, windows: pd.DataFrame, ladder: Ladder, budget: float, switches: int
) -> dict[str, Any]:
    accuracy = np.array([rung.accuracy for rung in ladder.rungs])
    busy = windows[windows["spinners"] > 0]
    quiet = windows[windows["spinners"] == 0]
    latency = requests["latency_ms"].to_numpy()
    return {
        "run": name,
        "requests": len(requests),
        "throughput_ips": len(requests) / max(1.0, len(windows)),
        "p50_ms": float(np.quantile(latency, 0.5)) if len(latency) else None,
        "p90_ms": float(np.quantile(latency, 0.9)) if len(latency) else None,
        "windows": len(windows),
        "windows_within_pct": 100.0 * float(windows["within_budget"].mean()) if len(windows) else 0.0,
        "busy_within_pct": 100.0 * float(busy["within_budget"].mean()) if len(busy) else None,
        "quiet_within_pct": 100.0 * float(quiet["within_budget"].mean()) if len(quiet) else None,
        "accuracy": float(accuracy[requests["rung"].to_numpy()].mean()) if len(requests) else None,
        "switches": switches,
        "budget_ms": budget,
    }


def _describe(run: dict[str, Any]) -> str:
    busy = "" if run["busy_within_pct"] is None else f" (busy {run['busy_within_pct']:.0f}%)"
    return (
        f"  {run['requests']} requests, p90 {run['p90_ms']:.3f} ms, within budget in "
        f"{run['windows_within_pct']:.0f}% of {run['windows']} windows{busy}, "
        f"accuracy served {run['accuracy']:.2f}%, {run['switches']} switches"
    )


def _switching_cost(switches: list[dict[str, Any]]) -> dict[str, Any]:
    """Decision to the start of the first inference on the new rung, and that inference's latency."""
    waits = [s["to_first_inference_ms"] for s in switches if s.get("to_first_inference_ms") is not None]
    firsts = [s["first_inference_ms"] for s in switches if s.get("first_inference_ms") is not None]
    return {
        "switches": len(switches),
        "decision_to_first_inference_ms": {
            "median": float(np.median(waits)) if waits else None,
            "max": float(np.max(waits)) if waits else None,
        },
        "first_inference_ms": {
            "median": float(np.median(firsts)) if firsts else None,
            "max": float(np.max(firsts)) if firsts else None,
        },
    }


def _verdict(summary: pd.DataFrame) -> dict[str, Any]:
    """The issue's criteria, computed rather than eyeballed."""
    adaptive = summary.iloc[0]
    fixed = summary.iloc[1:]
    holding = fixed[fixed["windows_within_pct"] >= 100 * HOLD_FRACTION]
    best = holding.loc[holding["accuracy"].idxmax()] if len(holding) else None
    widest = fixed.iloc[-1] if len(fixed) else None
    return {
        "adaptive_within_pct": float(adaptive["windows_within_pct"]),
        "adaptive_holds": bool(adaptive["windows_within_pct"] >= 100 * HOLD_FRACTION),
        "widest_fixed": None if widest is None else widest["run"],
        "widest_fixed_busy_within_pct": None if widest is None else widest["busy_within_pct"],
        "best_fixed_holding": None if best is None else best["run"],
        "best_fixed_holding_accuracy": None if best is None else float(best["accuracy"]),
        "adaptive_accuracy": float(adaptive["accuracy"]),
        "adaptive_at_least_as_accurate": None
        if best is None
        else bool(adaptive["accuracy"] >= float(best["accuracy"]) - 1e-9),
    }


def _machine_state() -> dict[str, Any]:
    """Load average when the test ended: this is a shared machine, and the numbers depend on it."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"loadavg": [round(value, 2) for value in load], "cores": max_spinners()}


@contextmanager
def _log_lines(say: Callable[[str], None]) -> Iterator[None]:
    """The ladder's log lines (switches, warnings) printed through `say` while the test runs."""
    logger = logging.getLogger("profilers.ladder")

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            say("  " + record.getMessage())

    handler = Handler(logging.INFO)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _write(
    out_dir: Path, windows: pd.DataFrame, report: dict[str, Any], budget: float, phases: list[Phase]
) -> list[Path]:
    json_path, csv_path, png_path = (out_dir / f"loadtest.{ext}" for ext in ("json", "csv", "png"))
    with replacing(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=_plain) + "\n", encoding="utf-8")
    with replacing(csv_path) as tmp:
        windows.to_csv(tmp, index=False, float_format="%.4f")
    files = [json_path, csv_path]
    try:
        _plot(png_path, windows, report, budget, phases)
        files.append(png_path)
    except ImportError:
        report["plot"] = "matplotlib is not installed: pip install 'planner[report]'"
    return files


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _plot(
    path: Path, windows: pd.DataFrame, report: dict[str, Any], budget: float, phases: list[Phase]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 2))
    start = 0.0
    for phase in phases:
        if phase.spinners:
            for axis in (top, bottom):
                axis.axvspan(start, start + phase.seconds, color="0.9", zorder=0)
            # above the plot, where no curve or budget line runs under it
            top.text(
                start + phase.seconds / 2,
                1.01,
                f"{phase.spinners} spinner(s)",
                ha="center",
                va="bottom",
                transform=top.get_xaxis_transform(),
                fontsize=8,
                color="0.4",
            )
        start += phase.seconds
    names = list(dict.fromkeys(windows["run"]))
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(1, len(names) - 1)))
    for index, name in enumerate(names):
        part = windows[windows["run"] == name]
        x = part["second"] + 0.5
        if name == "adaptive":
            top.plot(
                x, part["p90_ms"], color="crimson", lw=2.2, marker="o", ms=3, label="adaptive p90", zorder=5
            )
            top.plot(x, part["p50_ms"], color="crimson", lw=1, ls=":", label="adaptive p50", zorder=5)
            seconds = [*part["second"], part["second"].iloc[-1] + 1]  # the last window drawn to its end
            rungs = [*part["rung"], part["rung"].iloc[-1]]
            bottom.step(seconds, rungs, where="post", color="crimson", lw=2, label="adaptive")
        else:
            top.plot(x, part["p90_ms"], color=colours[index - 1], lw=1, alpha=0.8, label=f"{name} p90")
    top.axhline(budget, color="black", ls="--", lw=1, label=f"budget {budget:.3g} ms")
    top.set_ylabel("latency per 1-s window (ms)")
    latency = windows[["p50_ms", "p90_ms"]].to_numpy()
    if np.nanmax(latency) > 5 * np.nanmin(latency):
        top.set_yscale("log")
    top.legend(fontsize=7, ncol=2, loc="upper left")
    top.set_title(
        f"{report['model']} on {report['target']}: ladder under interference (shaded: spinners)",
        fontsize=10,
        pad=16,
    )
    labels = [f"{rung['label']} ({rung['accuracy']:.1f}%)" for rung in report["rungs"]]
    bottom.set_yticks(range(len(labels)), labels, fontsize=8)
    bottom.set_ylim(-0.5, len(labels) - 0.5)
    bottom.set_ylabel("rung served")
    bottom.set_xlabel("time (s)")
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
