"""Why does even the narrowest rung break the ladder benchmark's budget under two spinners? (issue 16)

One rung of the runtime_ladder manifest served closed loop (one caller, back to back) for a quiet phase and
then with the load test's own two spinners (planner.deploy.loadtest's interference, the same processes in
the same session), under one runtime setting per child process:

- threads: ONNX Runtime intra-op threads (2 = every core here, the cpu target's 0);
- spin: how long idle intra-op threads spin before they sleep (`session.intra_op.spin_duration_us`;
  "spin" = the backend's SPIN_US, 1000 us; "no spin" = `session.intra_op.allow_spinning` 0, they sleep at
  once);
- nice: the serving thread's nice value (measured only: lowering it needs privileges);
- slice: the EEVDF scheduler slice the serving threads request (Linux >= 6.12, `sched_setattr`
  sched_runtime of a SCHED_OTHER thread; no privileges needed; 0 = the kernel's default);

Per phase: p50/p90 of every inference and the share of 1-s windows whose p90 is within the budget, plus
the CPU time the serving process used (its threads) per second, and how long its threads waited runnable
for a CPU (/proc/self/task/TID/schedstat).

    python benchmarks/ladder_contention.py --out results [--work /tmp/runtime_ladder] [--budget-ms 1.28]

The manifest is the one benchmarks/runtime_ladder.py prepares under --work (run that first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import machine_state

from profilers.backends.onnxruntime import SPIN_US

QUIET_S, BUSY_S = 3.0, 12.0
# (label, rung, threads, spin_us (0: no spinning), nice, slice_ms)
CONFIGS = [
    ("0.35x 2 threads, spin 1000 us", "0.35x", 2, SPIN_US, 0, 0),
    ("0.35x 2 threads, no spin", "0.35x", 2, 0, 0, 0),
    ("0.35x 2 threads, spin 100 us", "0.35x", 2, 100, 0, 0),
    ("0.35x 1 thread", "0.35x", 1, 0, 0, 0),
    ("0.35x 1 thread, slice 20 ms", "0.35x", 1, 0, 0, 20),
    ("0.35x 2 threads, no spin, slice 20 ms", "0.35x", 2, 0, 0, 20),
    ("0.35x 1 thread, nice -5", "0.35x", 1, 0, -5, 0),
    ("0.5x 2 threads, spin 1000 us", "0.5x", 2, SPIN_US, 0, 0),
    ("0.5x 2 threads, no spin", "0.5x", 2, 0, 0, 0),
    ("0.5x 1 thread", "0.5x", 1, 0, 0, 0),
]


def set_slice(tid: int, slice_ms: float) -> None:
    """Ask for an EEVDF slice of `slice_ms` for thread `tid` (sched_setattr, x86_64 syscall 314)."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, int(slice_ms * 1e6), 0, 0, 0, 0)
    if libc.syscall(314, tid, ctypes.c_char_p(attr), 0) != 0:
        raise OSError(ctypes.get_errno(), "sched_setattr")


def child(manifest: Path, rung: str, threads: int, spin_us: int, nice: int, slice_ms: float) -> dict:
    """Serve one rung quiet then under two spinners; latencies and own CPU time per phase."""
    import onnxruntime as ort

    from planner.deploy.loadtest import Phase, interference

    entry = next(e for e in json.loads(manifest.read_text())["ladder"] if e["label"] == rung)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    path = manifest.parent / entry["artifact"]["files"][0]["path"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    for _ in range(20):
        session.run(None, {name: x})
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # this thread only (Linux: per-thread nice)
    serving = [int(tid) for tid in os.listdir("/proc/self/task")]  # this thread and ORT's pool
    rows = []
    cpu = {}
    with interference([Phase(0, QUIET_S), Phase(2, BUSY_S)]):
        for tid in serving if slice_ms else ():  # after the spinners' thread started: they keep the default
            set_slice(tid, slice_ms)
        start = time.perf_counter()
        marks = {"quiet": (start, resource.getrusage(resource.RUSAGE_SELF), _waited(serving))}
        while (now := time.perf_counter()) < start + QUIET_S + BUSY_S:
            if now >= start + QUIET_S and "busy" not in marks:
                marks["busy"] = (now, resource.getrusage(resource.RUSAGE_SELF), _waited(serving))
            session.run(None, {name: x})
            rows.append((now - start, (time.perf_counter() - now) * 1e3))
        end = (time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), _waited(serving))
    waits = {}
    for phase, following in (("quiet", marks["busy"]), ("busy", end)):
        (t0, r0, w0), (t1, r1, w1) = marks[phase], following
        used = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        cpu[phase] = used / (t1 - t0)
        waits[phase] = [(w1[0] - w0[0]) / (t1 - t0) / 1e9, (w1[1] - w0[1]) / (t1 - t0)]
    return {"rows": rows, "cpu_cores": cpu, "waits": waits}


def _waited(tids: list[int]) -> tuple[int, int]:
    """Nanoseconds the threads waited runnable for a CPU, and how many times they were scheduled in
    (/proc/PID/task/TID/schedstat: run time, wait time, timeslices)."""
    total, slices = 0, 0
    for tid in tids:
        fields = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        total, slices = total + int(fields[1]), slices + int(fields[2])
    return total, slices


def summarise(label: str, result: dict, budget: float) -> list[dict]:
    table = pd.DataFrame(result["rows"], columns=["t_s", "latency_ms"])
    out = []
    for phase, low, high in (("quiet", 0.0, QUIET_S), ("busy", QUIET_S + 1.0, QUIET_S + BUSY_S)):
        part = table[(table["t_s"] >= low) & (table["t_s"] < high)]  # busy: 1 s for the spinners to start
        windows = part.groupby(part["t_s"].astype(int))["latency_ms"].quantile(0.9)
        out.append(
            {
                "setting": label,
                "phase": phase,
                "requests_per_s": len(part) / (high - low),
                "p50_ms": part["latency_ms"].quantile(0.5),
                "p90_ms": part["latency_ms"].quantile(0.9),
                "p99_ms": part["latency_ms"].quantile(0.99),
                # inferences that waited about a tick or more (HZ=250: 4 ms) beyond the phase's median
                "waited_pct": 100.0 * float((part["latency_ms"] > part["latency_ms"].median() + 2.0).mean()),
                "windows_within_pct": 100.0 * float((windows <= budget).mean()),
                # other sessions' load only adds waits: the best window bounds what the setting can do
                "best_window_p90_ms": float(windows.min()),
                "own_cpu_cores": result["cpu_cores"][phase],
                "runqueue_wait_s_per_s": result["waits"][phase][0],
                "scheduled_in_per_s": result["waits"][phase][1],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/runtime_ladder"))
    parser.add_argument("--budget-ms", type=float, default=1.28, help="runtime_ladder_quiet.md's budget")
    parser.add_argument("--name", default="ladder_contention")
    parser.add_argument(
        "--settings",
        default=None,
        help="comma list of setting indices (default all), e.g. 0,1 to compare two",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the settings this many times, interleaved")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    manifest = arguments.work / "deploy" / "cpu" / "manifest.json"
    if arguments.child is not None:
        _, rung, threads, spin_us, nice, slice_ms = CONFIGS[int(arguments.child)]
        print(json.dumps(child(manifest, rung, threads, spin_us, nice, slice_ms)))
        return
    before = machine_state()
    rows = []
    chosen = range(len(CONFIGS)) if arguments.settings is None else map(int, arguments.settings.split(","))
    chosen = list(chosen)
    for round_, index in ((r, i) for r in range(arguments.rounds) for i in chosen):
        label = CONFIGS[index][0] + (f" (round {round_ + 1})" if arguments.rounds > 1 else "")
        done = subprocess.run(
            [sys.executable, __file__, "--work", str(arguments.work), "--child", str(index)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows += summarise(label, json.loads(done.stdout), arguments.budget_ms)
        print(pd.DataFrame(rows[-2:]).to_string(index=False, float_format="%.2f"), flush=True)
    after = machine_state()
    table = pd.DataFrame(rows)
    arguments.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(arguments.out / f"{arguments.name}.csv", index=False, float_format="%.4f")
    command = shlex.join(["python", "benchmarks/ladder_contention.py", *sys.argv[1:]])
    lines = [
        "# One rung under the ladder benchmark's two spinners: threads, spinning, priority (issue 16)",
        "",
        f"    {command}",
        "",
        f"Budget {arguments.budget_ms:g} ms (p90 per 1-s window); {QUIET_S:g} s quiet, then {BUSY_S:g} s "
        "with two spinners (the first busy second skipped). own_cpu_cores: CPU time of the serving process "
        "per second (all its threads); runqueue_wait_s_per_s: seconds per second the serving threads "
        "waited runnable for a CPU (summed over threads, schedstat); scheduled_in_per_s: how often they were "
        "put on a CPU per second; waited_pct: share of inferences more than 2 ms slower than the phase's "
        "median (they waited for a CPU: a tick is 4 ms here); best_window_p90_ms: the lowest p90 of the "
        "phase's 1-s windows (other sessions' load only adds waits, so this bounds what a setting can do).",
        "",
        table.to_markdown(index=False, floatfmt=".2f"),
        "",
        "## Machine state (before, after)",
        "",
        f"```\n{before}\n\n{after}\n```\n",
    ]
    (arguments.out / f"{arguments.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
