"""The environment record that goes with every row: what the number was measured on.

Read on the device, inside the worker, so it describes the process that measured. Latency on a CPU
depends on the frequency governor and thread count; on a Jetson on the nvpmodel power mode and whether
jetson_clocks pinned the clocks, so those are recorded when the tools exist.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_LIBS = ("numpy", "onnx", "scipy", "pandas", "pyarrow", "onnxruntime", "openvino", "torch", "tensorrt")


# The vector extensions that inference kernels choose between (x86 `flags`, Arm `Features`).
_ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
)  # fmt: skip


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's name, then what tells two CPUs of that name apart: x86 family, model and stepping (or the
    Arm implementer and part) and the vector extensions the runtimes' kernels can use.

    A cloud VM names its CPU by vendor only ("AMD EPYC" here), and the host beneath it may change between
    runs; kernels without avx512_bf16, say, run bf16 models many times slower. The name alone hid that."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}  # the first processor's, and the board's lines at the end (a Raspberry Pi's "Model")
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    name = next(
        (fields[key] for key in ("Model", "model name", "Hardware") if fields.get(key)),
        platform.processor() or platform.machine(),
    )
    identity = [
        f"{label} {fields[key]}"
        for key, label in (
            ("cpu family", "family"), ("model", "model"), ("stepping", "stepping"),
            ("CPU implementer", "implementer"), ("CPU part", "part"), ("CPU variant", "variant"),
        )
        if fields.get(key)
    ]  # fmt: skip
    present = set((fields.get("flags") or fields.get("Features") or "").split())
    extensions = [flag for flag in _ISA_FLAGS if flag in present]
    details = "; ".join(part for part in (" ".join(identity), " ".join(extensions)) if part)
    return f"{name} ({details})" if details else name


def governor() -> str:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return ""


def library_versions(runtime_module: str | None = None) -> dict[str, str]:
    """Versions of the installed libraries that matter (read from package metadata, nothing imported)."""
    names = list(_LIBS)
    if runtime_module and runtime_module not in names:
        names.append(runtime_module)
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _tool_output(arguments: list[str]) -> str:
    try:
        done = subprocess.run(arguments, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def nvpmodel_mode() -> str:
    """`nvpmodel -q` as one line (e.g. "NV Power Mode: 15W; 0"), empty when not a Jetson."""
    if not shutil.which("nvpmodel"):
        return ""
    return "; ".join(line.strip() for line in _tool_output(["nvpmodel", "-q"]).splitlines() if line.strip())


def jetson_clocks_state() -> str:
    """`on` when jetson_clocks pinned every CPU's minimum frequency to its maximum, else `off`."""
    if not shutil.which("jetson_clocks"):
        return ""
    text = _tool_output(["jetson_clocks", "--show"])
    pairs = re.findall(r"MinFreq=(\d+) MaxFreq=(\d+)", text)
    if not pairs:
        return text.splitlines()[0] if text else "unknown"
    return "on" if all(low == high for low, high in pairs) else "off"


def environment(threads: int, runtime: str, runtime_version: str, runtime_module: str | None = None) -> dict:
    """The `env_*` columns of a row."""
    return {
        "env_cpu": cpu_model(),
        "env_cores": os.cpu_count() or 0,
        "env_threads": threads,
        "env_governor": governor(),
        "env_host": socket.gethostname(),
        "env_runtime": runtime,
        "env_runtime_version": runtime_version,
        "env_libs": json.dumps(
            {
                "platform": platform.platform(),
                "executable": sys.executable,
                **library_versions(runtime_module),
            },
            sort_keys=True,
        ),
        "env_nvpmodel": nvpmodel_mode(),
        "env_jetson_clocks": jetson_clocks_state(),
    }
