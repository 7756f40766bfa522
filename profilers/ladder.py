"""Switch widths at run time: serve a manifest's ladder and step down a rung when the device gets busy.

    ladder = Ladder.from_manifest("deploy/cpu/manifest.json")
    y = ladder.infer(x)          # on the current rung; thread-safe
    ladder.state()               # current rung, switches, window statistics

A device's resources change while it runs (other processes, thermal limits), so the width that met the
budget when it was measured may not meet it now. The manifest's ladder holds the Pareto-optimal widths that
fit, fastest to most accurate, each with its artifact; this runtime opens one session per rung, watches the
latencies it serves, and moves along the ladder:

- down when the rolling window's quantile (the budget's metric, usually p90) exceeds the budget, straight
  to the widest rung predicted to fit: the window's quantile plus the other rung's extra compute, slowed
  down as much as the window's median is (see `Controller.predict`), with the rungs' compute timed
  here when they are loaded (fastest of a few warm-up inferences, which also keeps the first inference
  after a switch from paying for cold caches), or the manifest's figures when not every rung is loaded,
  and lowered to the fastest inference served on the rung since;
- up one rung when the wider rung's predicted quantile is within `headroom` of the budget;
- hysteresis (the headroom) and a minimum dwell per direction, so it does not oscillate; a switch applies
  to the next inference, never one in flight; the window is emptied on a switch.

Loading is all or nothing: a manifest that fails the schema (profilers/schemas, the file planner writes
against) or a sha256, a missing artifact or runtime is a ProfilerError before anything serves. A budget
that no rung meets is served on the fastest rung, with a warning in the log and in `state()`.
Imports no torch and no planner; each runtime's SDK is imported by its backend.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from profilers.errors import ProfilerError
from profilers.files import replacing
from profilers.jobs import Job
from profilers.manifests import MANIFEST_NAME, inside, read_manifest
from profilers.memory import current_rss

log = logging.getLogger("profilers.ladder")

SERVED_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
KEEP = ("all", "neighbours")
WARMUP = 12  # inferences per rung when it is loaded; the fastest but the first times the rung


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller reads its window and how eagerly it moves.

    window_s: the rolling window of observed latencies (at most max_samples of them); min_samples before it
    decides anything. down_dwell_s / up_dwell_s: minimum time on a rung before stepping down / up (down is
    quick because a violated budget costs now; up is slow because a wrong step up costs again).
    headroom: step up only when the wider rung's predicted quantile is <= headroom * budget.
    max_backoff: a step up that is undone within twice its dwell doubles the next up dwell, up to this
    factor (a failed probe is not retried every up_dwell_s); a step up that holds resets it.
    check_every_s: how often the window's quantile is computed (a decision is never made mid-inference).
    """

    window_s: float = 1.0
    min_samples: int = 8
    max_samples: int = 256
    down_dwell_s: float = 0.3
    up_dwell_s: float = 2.0
    headroom: float = 0.8
    max_backoff: float = 16.0
    check_every_s: float = 0.02

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ProfilerError("controller window: window_s > 0 and 1 <= min_samples <= max_samples")
        if not 0 < self.headroom < 1:
            raise ProfilerError(f"headroom must be in (0, 1), got {self.headroom:g}")
        if self.down_dwell_s < 0 or self.up_dwell_s < 0 or self.check_every_s < 0:
            raise ProfilerError("dwell and check times must not be negative")
        if self.max_backoff < 1:
            raise ProfilerError(f"max_backoff must be at least 1, got {self.max_backoff:g}")


@dataclass(frozen=True)
class Decision:
    """A switch the controller decided at `at` (its clock), and why."""

    source: int
    target: int
    at: float
    window_quantile_ms: float
    samples: int
    reason: str


class Controller:
    """Which rung to serve, from the latencies observed on the current one. Not thread-safe on its own
    (the Ladder calls it under its lock); the clock is injectable so tests are deterministic.

    expected_ms: each rung's measured latency (the budget's metric), fastest first: the starting rung is the
    widest that fits. Predictions use only the ratios between rungs (`scale`, by default the same figures),
    so a loaded device that slows every rung alike is predicted correctly.
    """

    def __init__(
        self,
        expected_ms: Sequence[float],
        budget_ms: float,
        quantile: float = 0.9,
        settings: ControllerSettings | None = None,
        start: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not expected_ms or any(not (value > 0) for value in expected_ms):
            raise ProfilerError("every rung needs a positive measured latency")
        if not budget_ms > 0:
            raise ProfilerError(f"the budget must be positive, got {budget_ms:g} ms")
        self.expected = [float(value) for value in expected_ms]
        self.scale = list(self.expected)
        self.budget_ms = float(budget_ms)
        self.quantile = quantile
        self.settings = settings or ControllerSettings()
        self.clock = clock
        fitting = [index for index, value in enumerate(self.expected) if value <= self.budget_ms]
        self.budget_unmet = not fitting
        self.current = (fitting[-1] if fitting else 0) if start is None else start
        self.start_given = start is not None
        self.since = -math.inf  # no dwell on the starting rung: its latency is only a guess
        self.window: deque[tuple[float, float]] = deque(maxlen=self.settings.max_samples)
        self.last_check = -math.inf
        self.over_budget = False  # on the fastest rung and still over the budget
        self.backoff = 1.0  # multiplies up_dwell_s after failed steps up
        self.probe: tuple[int, float] | None = None  # (rung, time) of the last step up, until it holds

    def observe(
        self, rung: int, latency_ms: float, allowed: Callable[[int], bool] = lambda index: True
    ) -> Decision | None:
        """Record one finished inference; a Decision when the next inference should run on another rung.

        Inferences that ran on another rung (in flight during a switch) are not counted. `allowed` says
        which rungs can be switched to now (a rung being loaded cannot).
        """
        now = self.clock()
        if rung != self.current:
            return None
        self.window.append((now, latency_ms))
        # The fastest inference seen on a rung is the best estimate of its compute (a warm-up on a busy
        # device can be slow throughout): the rungs' compute estimates only ever improve.
        self.scale[rung] = min(self.scale[rung], latency_ms)
        if now - self.last_check < self.settings.check_every_s:
            return None
        self.last_check = now
        stats = self.window_stats(now)
        if stats["n"] < self.settings.min_samples:
            return None
        observed = stats["quantile_ms"]
        dwell = now - self.since
        current = self.current
        if observed > self.budget_ms:
            if current == 0:
                if not self.over_budget:
                    log.warning(
                        "ladder: the fastest rung's window %s %.3f ms exceeds the budget %.3f ms; serving it",
                        _metric(self.quantile), observed, self.budget_ms,
                    )  # fmt: skip
                self.over_budget = True
                return None
            if dwell < self.settings.down_dwell_s:
                return None
            target = next(
                (i for i in range(current - 1, -1, -1) if self.predict(stats, i) <= self.budget_ms), 0
            )
            candidates = [i for i in range(target, current) if allowed(i)]
            if not candidates:
                return None
            reason = f"window {_metric(self.quantile)} {observed:.3f} ms > budget {self.budget_ms:.3f} ms"
            if self.probe is not None and self.probe[0] == current:  # the last step up did not hold
                self.backoff = min(2 * self.backoff, self.settings.max_backoff)
                self.probe = None
            return self._switch(candidates[0], now, stats, reason)
        self.over_budget = False
        up_dwell = self.settings.up_dwell_s * self.backoff
        if self.probe is not None and now - self.probe[1] >= 2 * self.settings.up_dwell_s:
            self.probe, self.backoff = None, 1.0  # the step up held
        wider = current + 1
        if wider < len(self.expected) and dwell >= up_dwell and allowed(wider):
            predicted = self.predict(stats, wider)
            if predicted <= self.settings.headroom * self.budget_ms:
                reason = (
                    f"predicted {_metric(self.quantile)} {predicted:.3f} ms <= "
                    f"{self.settings.headroom:g} x budget {self.budget_ms:.3f} ms"
                )
                self.probe = (wider, now)
                return self._switch(wider, now, stats, reason)
        return None

    def calibrate(self, timings_ms: Sequence[float]) -> None:
        """Predict with rung latencies timed on this device now; before the first inference, also start
        on the widest rung whose timing is within the headroom (unless a start was given), and call the
        budget unmet only when even the fastest rung's timing exceeds it."""
        if len(timings_ms) != len(self.expected) or any(not (value > 0) for value in timings_ms):
            raise ProfilerError("calibrate needs one positive timing per rung")
        self.scale = [float(value) for value in timings_ms]
        if self.window or self.start_given:
            return
        fitting = [
            i for i, value in enumerate(self.scale) if value <= self.settings.headroom * self.budget_ms
        ]
        self.current = fitting[-1] if fitting else 0
        self.budget_unmet = self.scale[0] > self.budget_ms

    def predict(self, stats: dict[str, Any], rung: int) -> float:
        """The window's quantile on `rung`: the observed quantile plus the other rung's extra compute
        (its `scale` minus the current one's) slowed down as much as the window's median is.

        When the device is uniformly slower this is the quantile scaled by the rungs' ratio; when the tail
        is time spent waiting for a CPU (other processes), the wait is kept rather than scaled, so a
        narrower rung is not expected to shorten it and a wider one is not expected to lengthen it.
        """
        slowdown = stats["p50_ms"] / self.scale[self.current]
        return stats["quantile_ms"] + (self.scale[rung] - self.scale[self.current]) * slowdown

    def _switch(self, target: int, now: float, stats: dict[str, Any], reason: str) -> Decision:
        decision = Decision(self.current, target, now, stats["quantile_ms"], stats["n"], reason)
        self.current, self.since = target, now
        self.window.clear()
        self.over_budget = False
        return decision

    def window_stats(self, now: float | None = None) -> dict[str, Any]:
        """n, p50, the controller's quantile and the mean of the window (NaN-free: None when empty)."""
        now = self.clock() if now is None else now
        while self.window and self.window[0][0] < now - self.settings.window_s:
            self.window.popleft()
        if not self.window:
            return {"n": 0, "p50_ms": None, "quantile_ms": None, "mean_ms": None}
        values = np.fromiter((value for _, value in self.window), dtype=float, count=len(self.window))
        return {
            "n": len(values),
            "p50_ms": float(np.quantile(values, 0.5)),
            "quantile_ms": float(np.quantile(values, self.quantile)),
            "mean_ms": float(values.mean()),
        }


def _metric(quantile: float) -> str:
    return f"p{quantile * 100:g}"


@dataclass
class Rung:
    """One width of the ladder: its manifest entry, and its session while loaded."""

    index: int
    label: str
    config_id: str
    width: float | None
    accuracy: float
    expected_ms: float
    artifact: Path
    onnx: Path | None
    session: Any = None
    rss_bytes: int | None = None
    load_ms: float | None = None
    warm_ms: float | None = None
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def loaded(self) -> bool:
        return self.session is not None


@dataclass(frozen=True)
class Served:
    """One inference: its output, the rung it ran on and how long it took."""

    output: np.ndarray
    rung: int
    latency_ms: float


class Ladder:
    """The rungs of one manifest, the controller, and `infer(x)` on the current rung. Use as a context
    manager or call close(); build it with `Ladder.from_manifest`."""

    def __init__(
        self,
        manifest: dict[str, Any],
        rungs: list[Rung],
        open_session: Callable[[Rung], Any],
        controller: Controller,
        input_shape: tuple[int, ...],
        keep: str,
    ) -> None:
        self.manifest, self.rungs, self._open = manifest, rungs, open_session
        self.controller, self.input_shape, self.keep = controller, input_shape, keep
        self.thread_safe = manifest["target"]["backend"] == "onnxruntime"  # the others: one request each
        self.switches: list[dict[str, Any]] = []
        self.served = [0] * len(rungs)
        self.pinned: int | None = None
        self._lock = threading.RLock()
        self._pending: Decision | None = None
        self._loader: threading.Thread | None = None
        self.closed = False

    @classmethod
    def from_manifest(
        cls,
        path: str | Path,
        budget_ms: float | None = None,
        settings: ControllerSettings | None = None,
        keep: str = "all",
        rungs: Sequence[int] | None = None,
        threads: int | None = None,
        max_memory_bytes: int | None = None,
        start: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Ladder:
        """Verify the manifest, open the rungs (all, or the starting rung and its neighbours), start on the
        widest rung whose measured latency fits the budget (the manifest's unless `budget_ms`).

        rungs: indices of the manifest's ladder to hold (default all; e.g. one to serve a fixed width).
        threads: intra-op threads (default the manifest target's). max_memory_bytes: refuse a ladder whose
        recorded memory (`ladder_memory` in the manifest) does not fit. start: the rung to start on.
        """
        if keep not in KEEP:
            raise ProfilerError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
        manifest, base = read_manifest(path)
        target = manifest["target"]
        backend_name = target["backend"]
        if backend_name not in SERVED_BACKENDS:
            raise ProfilerError(
                f"the ladder runtime serves {', '.join(SERVED_BACKENDS)} artifacts; this manifest is for "
                f"{backend_name} (write one for another target with planner manifest)"
            )
        recorded = (manifest.get("ladder_memory") or {}).get("all_rungs_bytes")
        if (
            max_memory_bytes is not None
            and recorded is not None
            and keep == "all"
            and recorded > max_memory_bytes
        ):
            raise ProfilerError(
                f"the ladder needs {recorded / 2**20:.1f} MiB resident (measured), more than the "
                f"{max_memory_bytes / 2**20:.1f} MiB allowed: use keep='neighbours'"
            )
        from profilers.backends import get_backend

        backend = get_backend(backend_name)
        backend.sdk()  # a missing runtime: ProfilerError with the pip command, before anything loads
        model = manifest["model"]
        shape = (target["batch"], model["in_channels"], model["input_size"], model["input_size"])
        job = Job(
            base / MANIFEST_NAME,
            backend=backend_name,
            device=target["device"],
            precision=target["precision"],
            threads=target["threads"] if threads is None else threads,
            batch=target["batch"],
        )
        backend.check(job)
        metric = manifest["budget"]["metric"]
        entries = manifest["ladder"]
        chosen = list(range(len(entries))) if rungs is None else sorted(set(rungs))
        if not chosen or any(not 0 <= index < len(entries) for index in chosen):
            raise ProfilerError(f"rungs must be indices of the ladder (0..{len(entries) - 1}), got {rungs}")
        ladder_rungs = [
            _rung(i, entries[index], metric, base, backend_name) for i, index in enumerate(chosen)
        ]
        budget = float(manifest["budget"]["max_latency_ms"] if budget_ms is None else budget_ms)
        if start is not None and not 0 <= start < len(ladder_rungs):
            raise ProfilerError(f"start must be a rung index (0..{len(ladder_rungs) - 1}), got {start}")
        expected = [rung.expected_ms for rung in ladder_rungs]
        controller = Controller(expected, budget, QUANTILES[metric], settings, start=start, clock=clock)
        feed = np.zeros(shape, dtype=np.float32)

        def open_session(rung: Rung) -> Any:
            from profilers.modelfile import ModelFile

            if backend_name == "tensorrt":
                engine = rung.artifact
                if not engine.is_file():  # engines are built on the device that runs them
                    log.info(
                        "ladder: building the TensorRT engine of %s (first run on this device)", rung.label
                    )
                    backend.build(ModelFile.inspect(rung.onnx, batch=job.batch), job, engine.parent)
                inspected = ModelFile.inspect(rung.onnx, batch=job.batch)
            elif backend_name == "onnxruntime":
                inspected = ModelFile.inspect(rung.artifact, batch=job.batch)
            else:
                inspected = ModelFile(rung.artifact, "", shape, 0)
            return backend.open(rung.artifact, inspected, job, feed)

        ladder = cls(manifest, ladder_rungs, open_session, controller, shape, keep)
        try:
            for rung in ladder_rungs:
                if keep == "all" or abs(rung.index - controller.current) <= 1:
                    ladder._load(rung)
        except BaseException:
            ladder.close()
            raise
        source = "the manifest's measurement"
        if keep == "all" and all(rung.warm_ms for rung in ladder_rungs):
            # Timed here and now, back to back: better than figures measured elsewhere or under other load.
            controller.calibrate([float(rung.warm_ms) for rung in ladder_rungs])
            source = "timed here when loaded"
        if controller.budget_unmet:
            log.warning(
                "ladder: no rung meets the budget %.3f ms (the fastest takes %.3f ms, %s); serving %s",
                budget, controller.scale[0] if keep == "all" else ladder_rungs[0].expected_ms, source,
                ladder_rungs[0].label,
            )  # fmt: skip
        log.info(
            "ladder: %d rungs (%s), %s loaded, %.1f MiB; starting on %s for a %s budget of %.3f ms",
            len(ladder_rungs), " -> ".join(rung.label for rung in ladder_rungs), keep,
            ladder.memory_bytes() / 2**20, ladder_rungs[controller.current].label, metric, budget,
        )  # fmt: skip
        return ladder

    # -- serving ------------------------------------------------------------------------------------

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model's output for `x` on the current rung (the first output of the graph)."""
        return self.serve(x).output

    def serve(self, x: np.ndarray) -> Served:
        """One inference with the rung it ran on and its latency; the controller sees the latency."""
        if tuple(x.shape) != self.input_shape:
            raise ProfilerError(f"input shape {tuple(x.shape)}, the ladder serves {self.input_shape}")
        with self._lock:
            if self.closed:
                raise ProfilerError("the ladder is closed")
            index = self.controller.current if self.pinned is None else self.pinned
            rung = self.rungs[index]
            rung.in_flight += 1
            pending = self._pending
            if pending is not None and pending.target == index:
                self._pending = None
                self.switches[-1]["to_first_inference_ms"] = (self.controller.clock() - pending.at) * 1e3
        try:
            if self.thread_safe:
                start = time.perf_counter()
                output = rung.session.run(x)
            else:
                with rung.lock:
                    start = time.perf_counter()
                    output = rung.session.run(x)
            latency_ms = (time.perf_counter() - start) * 1e3
        finally:
            with self._lock:
                rung.in_flight -= 1
        with self._lock:
            self.served[index] += 1
            if pending is not None and pending.target == index:
                self.switches[-1]["first_inference_ms"] = latency_ms
            if self.pinned is None:
                decision = self.controller.observe(index, latency_ms, lambda i: self.rungs[i].loaded)
                if decision is not None:
                    self._record(decision)
        return Served(output, index, latency_ms)

    def pin(self, index: int | None) -> None:
        """Serve rung `index` whatever the latency (None: let the controller choose again)."""
        with self._lock:
            if index is not None and not (0 <= index < len(self.rungs) and self.rungs[index].loaded):
                raise ProfilerError(f"rung {index} is not loaded")
            self.pinned = index

    def _record(self, decision: Decision) -> None:
        source, target = self.rungs[decision.source], self.rungs[decision.target]
        direction = "down" if decision.target < decision.source else "up"
        self.switches.append(
            {
                "at": decision.at,
                "from": source.label,
                "to": target.label,
                "from_index": decision.source,
                "to_index": decision.target,
                "direction": direction,
                "window_ms": decision.window_quantile_ms,
                "samples": decision.samples,
                "reason": decision.reason,
                "to_first_inference_ms": None,
                "first_inference_ms": None,
            }
        )
        self._pending = decision
        log.info("ladder: step %s %s -> %s: %s (n=%d)", direction, source.label, target.label,
                 decision.reason, decision.samples)  # fmt: skip
        if self.keep == "neighbours":
            self._rebalance(decision.target)

    # -- loading ------------------------------------------------------------------------------------

    def _load(self, rung: Rung) -> None:
        before, start = current_rss(), time.perf_counter()
        session = self._open(rung)
        try:
            session.activate()
            rung.load_ms = (time.perf_counter() - start) * 1e3
            rung.rss_bytes = max(0, current_rss() - before)
            feed = np.zeros(self.input_shape, dtype=np.float32)
            timings = []
            for _ in range(WARMUP):  # the first inferences are slow: pay for them here, not when switching
                begin = time.perf_counter()
                session.run(feed)
                timings.append((time.perf_counter() - begin) * 1e3)
        except BaseException:
            session.release()
            raise
        rung.warm_ms = min(timings[1:])
        rung.session = session

    def _rebalance(self, center: int) -> None:
        """Neighbours mode: load center +-1 and release the others, in the background (never blocking
        an inference; a rung still loading cannot be switched to)."""

        def work() -> None:
            wanted = {i for i in (center - 1, center, center + 1) if 0 <= i < len(self.rungs)}
            for index in sorted(wanted):
                rung = self.rungs[index]
                if not rung.loaded and not self.closed:
                    try:
                        self._load(rung)
                    except ProfilerError as error:
                        log.error("ladder: cannot load %s: %s", rung.label, error)
            for rung in self.rungs:
                if rung.index not in wanted and rung.loaded:
                    self._release_when_idle(rung)

        previous = self._loader
        thread = threading.Thread(target=lambda: (previous.join() if previous else None, work()), daemon=True)
        self._loader = thread
        thread.start()

    def _release_when_idle(self, rung: Rung) -> None:
        while True:
            with self._lock:
                current = self.controller.current if self.pinned is None else self.pinned
                if rung.index in (current - 1, current, current + 1):
                    return
                if rung.in_flight == 0:
                    session, rung.session = rung.session, None
                    break
            time.sleep(0.001)
        if session is not None:
            session.release()

    def close(self) -> None:
        """Release every session (waits for a background load to finish first)."""
        with self._lock:
            self.closed = True
        if self._loader is not None:
            self._loader.join()
        for rung in self.rungs:
            with rung.lock:
                if rung.session is not None:
                    rung.session.release()
                    rung.session = None

    def __enter__(self) -> Ladder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reporting ----------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Resident memory the loaded rungs added (RSS growth while each was opened)."""
        return sum(rung.rss_bytes or 0 for rung in self.rungs if rung.loaded)

    def state(self) -> dict[str, Any]:
        """What the ladder is doing, as plain data (JSON-serialisable)."""
        with self._lock:
            controller = self.controller
            current = controller.current if self.pinned is None else self.pinned
            window = controller.window_stats()
            return {
                "current": current,
                "label": self.rungs[current].label,
                "width": self.rungs[current].width,
                "accuracy": self.rungs[current].accuracy,
                "pinned": self.pinned is not None,
                "budget_ms": controller.budget_ms,
                "metric": _metric(controller.quantile),
                "budget_unmet": controller.budget_unmet,
                "over_budget": controller.over_budget,
                "window": {key: window[key] for key in ("n", "p50_ms", "mean_ms")}
                | {f"{_metric(controller.quantile)}_ms": window["quantile_ms"]},
                "switches": len(self.switches),
                "last_switches": self.switches[-10:],
                "served": dict(zip((rung.label for rung in self.rungs), self.served, strict=True)),
                "keep": self.keep,
                "loaded": [rung.label for rung in self.rungs if rung.loaded],
                "memory_bytes": self.memory_bytes(),
                "rungs": [
                    {
                        "label": rung.label,
                        "config_id": rung.config_id,
                        "width": rung.width,
                        "accuracy": rung.accuracy,
                        "expected_ms": rung.expected_ms,
                        "loaded": rung.loaded,
                        "rss_bytes": rung.rss_bytes,
                        "load_ms": rung.load_ms,
                        "warm_ms": rung.warm_ms,
                    }
                    for rung in self.rungs
                ],
            }


def _rung(index: int, entry: dict[str, Any], metric: str, base: Path, backend: str) -> Rung:
    latency = entry["latency"]
    expected = latency.get(f"{metric}_ms") or latency.get("bound_ms")
    if not expected or expected <= 0:
        raise ProfilerError(f"rung {entry['label']} has no measured {metric} latency in the manifest")
    files = {item["role"]: base / item["path"] for item in entry["artifact"]["files"]}
    onnx = files["model"] if entry["artifact"]["format"] == "onnx" else None
    if backend == "tensorrt":
        build = entry["artifact"].get("build")
        if onnx is None or build is None:
            raise ProfilerError(f"rung {entry['label']}: a TensorRT rung needs the ONNX and its build entry")
        artifact = inside(base, build["output"], base / MANIFEST_NAME)
    else:
        expected_format = "onnx" if backend == "onnxruntime" else "openvino-ir"
        if entry["artifact"]["format"] != expected_format:
            raise ProfilerError(
                f"rung {entry['label']}: a {entry['artifact']['format']} artifact cannot run on {backend}"
            )
        artifact = files["model"]
    return Rung(
        index=index,
        label=entry["label"],
        config_id=entry["config_id"],
        width=entry.get("width"),
        accuracy=float(entry["accuracy"]["top1"]),
        expected_ms=float(expected),
        artifact=artifact,
        onnx=onnx,
    )


def measure_memory(path: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Resident memory of holding every rung, the starting rung's neighbours, and the widest rung alone,
    each measured in a fresh process (RSS growth while the sessions open; the runtime's own import is
    excluded)."""
    manifest, _ = read_manifest(path)
    widest = len(manifest["ladder"]) - 1
    figures = {}
    for name, options in (
        ("all_rungs_bytes", ["--keep", "all"]),
        ("neighbours_bytes", ["--keep", "neighbours"]),
        ("widest_bytes", ["--rungs", str(widest)]),
    ):
        command = [sys.executable, "-m", "profilers.ladder", "rss", str(path), *options]
        if threads is not None:
            command += ["--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise ProfilerError(f"measuring the ladder's memory failed: {done.stderr.strip()[-300:]}")
        figures[name] = int(json.loads(done.stdout)["memory_bytes"])
    return {
        **figures,
        "runtime": manifest["target"]["backend"],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def record_memory(path: str | Path, memory: dict[str, Any]) -> Path:
    """Write `memory` into the manifest as `ladder_memory` (atomically; artifacts and hashes unchanged)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    manifest, _ = read_manifest(path)
    manifest["ladder_memory"] = memory
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def _main(argv: list[str]) -> int:
    """`python -m profilers.ladder memory MANIFEST [--write]`, and the `rss` child it starts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m profilers.ladder")
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("memory", help="resident memory of the ladder (all, neighbours, widest)")
    memory.add_argument("manifest", type=Path)
    memory.add_argument("--write", action="store_true", help="record it in the manifest (ladder_memory)")
    memory.add_argument("--threads", type=int, default=None)
    rss = commands.add_parser("rss", help=argparse.SUPPRESS)
    rss.add_argument("manifest", type=Path)
    rss.add_argument("--keep", default="all")
    rss.add_argument("--rungs", type=int, nargs="*", default=None)
    rss.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "rss":
            from profilers.backends import get_backend

            manifest, _ = read_manifest(arguments.manifest)
            get_backend(manifest["target"]["backend"]).sdk()  # import cost is not the ladder's
            ladder = Ladder.from_manifest(
                arguments.manifest, keep=arguments.keep, rungs=arguments.rungs, threads=arguments.threads
            )
            with ladder:
                ladder.infer(np.zeros(ladder.input_shape, dtype=np.float32))
                print(json.dumps({"memory_bytes": ladder.memory_bytes(), "loaded": ladder.state()["loaded"]}))
            return 0
        figures = measure_memory(arguments.manifest, arguments.threads)
        if arguments.write:
            record_memory(arguments.manifest, figures)
        print(json.dumps(figures, indent=2))
        return 0
    except ProfilerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
