"""The measuring process: one per (configuration, backend) job, started as `python -m profilers.worker`.

It builds (or finds) the artifact, takes the memory baseline, opens the session, times the first
inference apart and reports loaded; told to, it warms up for a fixed time and reports warm, then runs
bursts on request until told to close. The parent starts workers one after another and warms them up
together (profilers.scheduler). Requests and replies are JSON lines: requests on stdin, replies on the
original stdout, which is kept for the protocol while fd 1 is pointed at stderr so a runtime's own
prints cannot corrupt it.
When the parent dies, stdin closes and the worker exits.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import time
from contextlib import ExitStack
from typing import IO, Any

from profilers.backends import get_backend
from profilers.cache import artifact_bytes, ensure_artifact
from profilers.environment import environment
from profilers.errors import ProfilerError, first_line
from profilers.jobs import Job, Settings
from profilers.memory import PeakOverBaseline
from profilers.modelfile import ModelFile


def _reply(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _requests(stream: IO[str]):
    for line in stream:
        if line.strip():
            yield json.loads(line)


def serve(job: Job, settings: Settings, requests, channel: IO[str]) -> None:
    """Import the runtime and say so, prepare the session when asked to build, report ready, then answer
    burst requests until `close` (or end of input)."""
    backend = get_backend(job.backend)
    backend.sdk()  # imported before the baseline: the runtime library is not the model's memory
    model = ModelFile.inspect(job.onnx, job.batch)
    _reply(channel, {"imported": True})
    request = next(requests, None)
    if request is None:  # the parent has gone
        return
    if request.get("cmd") != "build":
        raise ProfilerError(f"expected a build request after importing, got {request!r}")
    started = time.perf_counter()
    artifact = ensure_artifact(backend, model, job, settings.resolved_cache_dir, settings.build_timeout_s)
    build_s = time.perf_counter() - started
    gc.collect()
    memory = PeakOverBaseline()
    with ExitStack() as stack:
        started = time.perf_counter()
        session = stack.enter_context(backend.open(artifact, model, job, model.random_input(settings.seed)))
        load_s = time.perf_counter() - started
        first_ns = session.burst(1, math.inf)[0]
        _reply(
            channel,
            {
                "loaded": True,
                "first_ms": first_ns / 1e6,
                "build_s": build_s,
                "load_s": load_s,
                "input_shape": model.shape_text,
                "weight_bytes": model.weight_bytes,
                "artifact_bytes": artifact_bytes(artifact),
                "env": environment(
                    job.resolved_threads, backend.name, backend.version(), backend.sdk_module or None
                ),
            },
        )
        request = next(requests, None)
        if request is None:  # the parent has gone
            return
        if request.get("cmd") != "warmup":
            raise ProfilerError(f"expected a warmup request after loading, got {request!r}")
        warmup_end = time.perf_counter() + settings.warmup_s
        warmup_runs = 0
        while time.perf_counter() < warmup_end:
            warmup_runs += len(session.burst(settings.burst_size, settings.burst_seconds))
        _reply(channel, {"warm": True, "warmup_runs": warmup_runs})
        for request in requests:
            if request.get("cmd") == "burst":
                times = session.burst(
                    int(request["count"]), float(request["seconds"]), int(request["warmup"])
                )
                _reply(channel, {"times_ns": times})
            elif request.get("cmd") == "close":
                _reply(
                    channel, {"peak_rss_bytes": memory.bytes(), "device_mem_bytes": session.device_mem_bytes}
                )
                return
            else:
                raise ProfilerError(f"unknown worker request {request!r}")


def main() -> int:
    # Ctrl-C reaches the whole process group; the parent decides what an interrupt means (it kills us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        requests = _requests(sys.stdin)
        start = next(requests)
        serve(Job.from_dict(start["job"]), Settings.from_dict(start["settings"]), requests, channel)
    except ProfilerError as error:
        _reply_quietly(channel, {"error": str(error)})
        return 2
    except (StopIteration, BrokenPipeError):
        return 1
    except Exception as error:  # an SDK crash inside one job must reach the parent as that job's error
        _reply_quietly(channel, {"error": f"{type(error).__name__}: {first_line(error)}"})
        raise
    return 0


def _reply_quietly(channel: IO[str], message: dict[str, Any]) -> None:
    try:
        _reply(channel, message)
    except OSError:
        pass


if __name__ == "__main__":
    code = main()
    # Everything is answered and the session closed: skip the interpreter's teardown of the runtime
    # libraries, which the parent waited 0.11 s for after every job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
