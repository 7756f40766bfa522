"""Runtimes behind one interface: a build step (ONNX -> artifact) and a session that runs one inference.

Each backend lives in its own module and imports its SDK only when used, so `import profilers` works on a
device that has one runtime (or none); a missing SDK is a ProfilerError with the pip command.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from profilers.errors import ProfilerError, missing_sdk
from profilers.jobs import Job
from profilers.modelfile import ModelFile

# name -> (module, class). Order is the order `python -m profilers backends` lists them in.
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("profilers.backends.onnxruntime", "OnnxRuntimeBackend"),
    "openvino": ("profilers.backends.openvino", "OpenVinoBackend"),
    "torch": ("profilers.backends.torch", "TorchBackend"),
    "tensorrt": ("profilers.backends.tensorrt", "TensorRtBackend"),
    "trtexec": ("profilers.backends.trtexec", "TrtexecBackend"),
}


class Session:
    """An opened artifact: `with backend.open(...) as session: session.burst(16, 0.25)`.

    A session frees only what it loaded. `burst` returns one duration per inference in nanoseconds,
    timed on the host with perf_counter_ns around each call unless a backend has a better clock (CUDA
    events, trtexec's own per-iteration times).
    """

    device_mem_bytes: int | None = None

    def activate(self) -> None:
        """Load the artifact onto the device; everything here counts towards peak memory."""

    def infer(self) -> None:
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        """One inference on the caller's input; the first output (what the ladder runtime serves)."""
        raise ProfilerError(f"{type(self).__name__} cannot serve inputs")

    def release(self) -> None:
        """Free what activate() loaded."""

    def burst(self, count: int, max_seconds: float, warmup: int = 0) -> list[int]:
        for _ in range(warmup):
            self.infer()
        clock = time.perf_counter_ns
        deadline = clock() + max_seconds * 1e9
        durations = []
        for _ in range(count):
            start = clock()
            self.infer()
            end = clock()
            durations.append(end - start)
            if end >= deadline:
                break
        return durations

    def __enter__(self) -> Session:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Backend:
    """A runtime: which SDK it needs, which devices it offers, how it builds and opens an artifact."""

    name: str = ""
    sdk_module: str = ""
    install_hint: str = ""
    artifact_name: str | None = None  # file written by build() in its cache directory; None: no build step
    precisions: tuple[str, ...] = ("fp32",)

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.sdk_module) is not None
        except (ImportError, ValueError):
            return False

    def sdk(self) -> Any:
        """The imported SDK module, or a ProfilerError saying how to install it."""
        try:
            return importlib.import_module(self.sdk_module)
        except ImportError:
            raise missing_sdk(self.sdk_module, self.install_hint) from None

    def version(self) -> str:
        return str(getattr(self.sdk(), "__version__", "unknown"))

    def devices(self) -> list[str]:
        raise NotImplementedError

    def check(self, job: Job) -> None:
        """Reject a job this backend cannot run here (unknown device, unsupported precision)."""
        devices = self.devices()
        if job.device not in devices:
            raise ProfilerError(
                f"{self.name} has no device {job.device!r} on this machine: "
                f"available: {', '.join(devices) or 'none'}"
            )
        if job.precision not in self.precisions:
            raise ProfilerError(
                f"{self.name} on {job.device} supports precision {', '.join(self.precisions)}, "
                f"not {job.precision}"
            )

    def artifact_settings(self, job: Job) -> dict[str, Any]:
        """Everything besides the ONNX bytes that changes the built artifact (part of the cache key)."""
        return {
            "backend": self.name,
            "version": self.version(),
            "device": job.device,
            "precision": job.precision,
        }

    def build(self, model: ModelFile, job: Job, out_dir: Path) -> None:
        """Write the artifact `out_dir / self.artifact_name` from the ONNX file."""
        raise NotImplementedError

    def artifact_for(self, model: ModelFile, job: Job) -> Path | None:
        """The artifact when it is not built into the cache (e.g. the torch program beside the ONNX)."""
        return None

    def open(self, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray) -> Session:
        raise NotImplementedError


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ProfilerError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    return getattr(importlib.import_module(module_name), class_name)()


def available_backends() -> list[dict[str, Any]]:
    """Each backend with whether its SDK is installed, its version and devices (or why not)."""
    listing = []
    for name in BACKENDS:
        backend = get_backend(name)
        entry: dict[str, Any] = {
            "backend": name,
            "installed": False,
            "version": "",
            "devices": [],
            "note": "",
        }
        try:
            entry["devices"] = backend.devices()
            entry["version"] = backend.version()
            entry["installed"] = True
        except ProfilerError as error:
            entry["note"] = str(error)
        listing.append(entry)
    return listing
