"""Device-side profiler: measures what a configuration (an ONNX file) costs on a runtime.

    from profilers import Job, Settings, run_jobs, load_latency
    table = run_jobs([Job("w050.onnx", backend="openvino", threads=4, metadata={...})], "out/")

Imports no torch and no runtime SDK: each backend imports its own when used. Names are resolved lazily,
so a measuring worker does not pay for pandas and scipy, which only the parent needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKENDS": "profilers.backends",
    "available_backends": "profilers.backends",
    "get_backend": "profilers.backends",
    "ProfilerError": "profilers.errors",
    "KEY_COLUMNS": "profilers.jobs",
    "Job": "profilers.jobs",
    "Settings": "profilers.jobs",
    "load_jobs_file": "profilers.jobs",
    "write_jobs_file": "profilers.jobs",
    "SCHEMA": "profilers.results",
    "load_latency": "profilers.results",
    "ProgressEvent": "profilers.scheduler",
    "run_jobs": "profilers.scheduler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'profilers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
