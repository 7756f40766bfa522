"""Shared by the profiler benchmarks: the S-MobileNetV2 exports they measure and small helpers."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from profilers import Job
from profilers.environment import cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
WIDTHS = (0.35, 0.5, 0.75, 1.0)
# the columns every profiler benchmark's CSV starts with
ROW_COLUMNS = ["run", "backend", "width", "p50_ms", "ci_low_ms", "ci_high_ms"]


def runs_parser(description: str, runs: int, max_seconds: float) -> argparse.ArgumentParser:
    """The options the repeated-profiling benchmarks share: how many runs, threads, time, work directory."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=max_seconds)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner-busy-bench"))
    return parser


def export_widths(work_dir: Path, model_name: str = "s_mobilenet_v2") -> dict[float, Job]:
    """One 224x224 ONNX file per trained width (exported once, reused), as profiler jobs."""
    import planner
    from planner.nn.export import export_onnx

    work_dir.mkdir(parents=True, exist_ok=True)
    model = planner.create_model(model_name)
    jobs = {}
    for width in WIDTHS:
        config = model.config(width)
        path = work_dir / f"{model_name}-{width:g}.onnx"
        if not path.exists():
            export_onnx(model, config, path)
        cost = planner.count(model, config)
        metadata = {
            "model": model_name,
            "config_id": config.id,
            "width": width,
            "target": "cpu",
            "macs": cost.macs,
            "params": cost.params,
        }
        jobs[width] = Job(path, metadata=metadata)
    return jobs


def conditions() -> str:
    """A paragraph on what the machine was doing, for the report."""
    load = os.getloadavg()
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu_model()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average before the run "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} (other developers' test suites share this machine)."
    )


def command_line() -> str:
    """The command that produced a report, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def benchmark_app(onnx: Path, seconds: float) -> tuple[float, str, int | None]:
    """OpenVINO's own benchmark_app on the same file: its median latency (ms), command and thread count.

    Both tools infer in f32: `-ip f32` is only the input's precision, and on a CPU with bf16 support
    benchmark_app otherwise runs the network in bf16 (1.8x faster than the profiler's f32 at 1x on this
    machine, results/profiler_fidelity_bf16.md).

    benchmark_app rejects -nthreads together with -hint latency, so the hint picks the threads; the
    chosen INFERENCE_NUM_THREADS is read from its output to show it matches the profiler's.
    """
    tool = Path(sys.executable).with_name("benchmark_app")
    command = [
        str(tool),
        "-m",
        str(onnx),
        "-d",
        "CPU",
        "-hint",
        "latency",
        "-ip",
        "f32",
        "-infer_precision",  # else a CPU with bf16 (AVX512_BF16, AMX) infers in bf16; the profiler runs f32
        "f32",
        "-t",
        f"{seconds:g}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    threads = re.search(r"INFERENCE_NUM_THREADS: (\d+)", done.stdout)
    median = re.search(r"Median:\s+([0-9.]+) (ms|us)", done.stdout)  # us below 1 ms (OpenVINO 2025+)
    if not median:
        raise RuntimeError(f"no median in benchmark_app output:\n{done.stdout[-2000:]}")
    return (
        float(median.group(1)) / (1000 if median.group(2) == "us" else 1),
        " ".join(["benchmark_app", *command[1:]]),
        int(threads.group(1)) if threads else None,
    )


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` processes that spin on the CPU for the duration: another tenant, reproducibly."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def report_name(stem: str, busy: int) -> str:
    """Results file stem: runs beside busy processes are kept apart from the quiet ones."""
    return f"{stem}_busy{busy}" if busy else stem
