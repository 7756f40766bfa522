"""TensorRT through `trtexec`, the tool every Jetson has: engine built once, per-iteration times exported.

A turn of this backend is one trtexec run on the cached engine with `--exportTimes`, so the durations are
trtexec's own per-iteration latencies (GPU compute with --noDataTransfers), not a wall-clock span around
a process. Starting trtexec costs a second or so, so a turn runs at least MIN_ITERATIONS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from profilers.backends import Backend, Session
from profilers.errors import ProfilerError
from profilers.jobs import Job
from profilers.modelfile import ModelFile

# Where JetPack and the TensorRT tarballs put the binary when it is not on PATH.
_KNOWN_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
MIN_ITERATIONS = 50
_CONTEXT_MEMORY = re.compile(r"IExecutionContext creation: CPU \+\d+, GPU \+(\d+)")


def find_trtexec() -> Path:
    found = shutil.which("trtexec") or next((p for p in _KNOWN_LOCATIONS if os.access(p, os.X_OK)), None)
    if not found:
        raise ProfilerError(
            "trtexec is not installed or not on PATH: install TensorRT (JetPack on a Jetson) "
            "and add its bin/ directory to PATH"
        )
    return Path(found)


def trtexec_command(
    trtexec: Path,
    *,
    onnx: Path | None = None,
    load_engine: Path | None = None,
    save_engine: Path | None = None,
    fp16: bool = False,
    int8: bool = False,
    warmup_ms: int = 200,
    duration_s: float = 0,
    iterations: int = 10,
    percentiles: tuple[int, ...] = (90, 95, 99),
    cuda_graph: bool = True,
    no_data_transfers: bool = True,
    export_times: Path | None = None,
) -> list[str]:
    """The argument list of one trtexec run (never a shell string)."""
    if (onnx is None) == (load_engine is None):
        raise ValueError("give exactly one of onnx or load_engine")
    command = [str(trtexec)]
    command.append(f"--onnx={onnx}" if onnx is not None else f"--loadEngine={load_engine}")
    if save_engine is not None:
        command.append(f"--saveEngine={save_engine}")
    if fp16:
        command.append("--fp16")
    if int8:  # explicit quantization: the ONNX holds the Q/DQ scales, so no --calib cache
        command.append("--int8")
    command += [
        f"--warmUp={int(warmup_ms)}",
        f"--duration={duration_s:g}",
        f"--iterations={int(iterations)}",
        f"--percentile={','.join(str(p) for p in percentiles)}",
    ]
    if cuda_graph:
        command.append("--useCudaGraph")
    if no_data_transfers:
        command.append("--noDataTransfers")
    if export_times is not None:
        command.append(f"--exportTimes={export_times}")
    return command


def parse_export_times(path: Path, field: str = "latencyMs") -> list[float]:
    """Per-iteration latencies (ms) from a trtexec --exportTimes JSON: a list of per-iteration records."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ProfilerError(f"cannot read trtexec times {path}: {error}") from None
    if not isinstance(records, list) or not records:
        raise ProfilerError(f"trtexec times {path}: expected a non-empty list of per-iteration records")
    latencies = []
    for record in records:
        if not isinstance(record, dict):
            raise ProfilerError(f"trtexec times {path}: a record is not an object")
        if field in record:
            latencies.append(float(record[field]))
        elif "startComputeMs" in record and "endComputeMs" in record:
            latencies.append(float(record["endComputeMs"]) - float(record["startComputeMs"]))
        else:
            raise ProfilerError(f"trtexec times {path}: record without {field} or compute start/end")
    return latencies


def run_trtexec(command: list[str], timeout_s: float | None = None) -> str:
    """Run trtexec; its output, or a ProfilerError with trtexec's last error line."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ProfilerError(f"trtexec did not finish within {timeout_s:g} s") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        errors = [line for line in output.splitlines() if "[E]" in line or "FAILED" in line]
        raise ProfilerError(
            f"trtexec failed (exit {done.returncode}): {(errors or ['no output'])[-1].strip()}"
        )
    return output


class TrtexecBackend(Backend):
    name = "trtexec"
    sdk_module = ""
    install_hint = "install TensorRT (JetPack on a Jetson) and put trtexec on PATH"
    artifact_name = "model.engine"
    precisions = ("fp32", "fp16", "int8")

    def installed(self) -> bool:
        try:
            find_trtexec()
            return True
        except ProfilerError:
            return False

    def sdk(self) -> Any:
        return find_trtexec()

    def version(self) -> str:
        banner = subprocess.run(
            [str(find_trtexec())], capture_output=True, text=True, timeout=30, check=False
        )
        match = re.search(r"TensorRT v(\d+)", banner.stdout + banner.stderr)
        return match.group(1) if match else "unknown"

    def devices(self) -> list[str]:
        find_trtexec()
        return ["GPU"]

    def artifact_settings(self, job: Job) -> dict[str, Any]:
        from profilers.environment import cpu_model

        # No GPU query without CUDA bindings; on a Jetson the SoC identifies the GPU.
        return {**super().artifact_settings(job), "host_cpu": cpu_model()}

    def build(self, model: ModelFile, job: Job, out_dir: Path) -> None:
        command = trtexec_command(
            find_trtexec(),
            onnx=model.path,
            save_engine=out_dir / self.artifact_name,
            fp16=job.precision in ("fp16", "int8"),
            int8=job.precision == "int8",
            warmup_ms=0,
            iterations=1,
        )
        run_trtexec(command)

    def open(self, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray) -> Session:
        return TrtexecSession(artifact, job)


class TrtexecSession(Session):
    """Each burst is a trtexec run over the cached engine; the input is trtexec's own fixed random data."""

    def __init__(self, engine: Path, job: Job) -> None:
        self.engine, self.job = engine, job
        self.trtexec = find_trtexec()
        self.scratch = Path(tempfile.mkdtemp(prefix="trtexec-"))

    def _run(self, iterations: int, warmup_ms: int) -> list[float]:
        times = self.scratch / "times.json"
        command = trtexec_command(
            self.trtexec,
            load_engine=self.engine,
            fp16=self.job.precision in ("fp16", "int8"),
            int8=self.job.precision == "int8",
            warmup_ms=warmup_ms,
            iterations=iterations,
            export_times=times,
        )
        output = run_trtexec(command)
        memory = _CONTEXT_MEMORY.search(output)
        if memory:
            self.device_mem_bytes = int(memory.group(1)) * 1024 * 1024
        return parse_export_times(times)

    def infer(self) -> None:
        self._run(iterations=1, warmup_ms=0)

    def burst(self, count: int, max_seconds: float, warmup: int = 0) -> list[int]:
        latencies = self._run(iterations=max(count, MIN_ITERATIONS), warmup_ms=50 if warmup else 0)
        return [int(ms * 1e6) for ms in latencies]

    def release(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
