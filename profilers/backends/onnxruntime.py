"""ONNX Runtime: CPUExecutionProvider (CUDA / TensorRT execution providers when the build has them).

Threads are set explicitly (the default grabs every core), graph optimisation is ORT_ENABLE_ALL, and the
optimised graph is the cached artifact so a session only loads it. The Azure provider that the wheel lists
is not a device and is filtered out.

Idle pool threads spin for at most SPIN_US before they sleep. Back-to-back inferences are microseconds
apart, so within a burst this changes nothing; by default, though, the threads keep spinning for tens of
milliseconds after a burst and slow down whichever worker runs next: measured here, OpenVINO's 0.35x
MobileNetV2 after an ONNX Runtime turn took 1.95 ms instead of 1.17 ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from profilers.backends import Backend, Session
from profilers.errors import ProfilerError, first_line
from profilers.jobs import Job
from profilers.modelfile import ModelFile

SPIN_US = 1000

# device name -> execution provider
PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "TensorRT": "TensorrtExecutionProvider",
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    sdk_module = "onnxruntime"
    install_hint = "pip install onnxruntime (onnxruntime-gpu for CUDA/TensorRT)"
    artifact_name = "model.optimized.onnx"
    precisions = ("fp32", "int8")  # int8: a QDQ ONNX, run by ORT's int8 kernels

    def devices(self) -> list[str]:
        available = set(self.sdk().get_available_providers())
        return [device for device, provider in PROVIDERS.items() if provider in available]

    def _options(self, job: Job) -> Any:
        ort = self.sdk()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = job.resolved_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
        return options

    def artifact_settings(self, job: Job) -> dict[str, Any]:
        # The optimised graph may hold kernels fused for this CPU's instruction set.
        from profilers.environment import cpu_model

        return {**super().artifact_settings(job), "cpu": cpu_model()}

    def build(self, model: ModelFile, job: Job, out_dir: Path) -> None:
        ort = self.sdk()
        options = self._options(job)
        options.optimized_model_filepath = str(out_dir / self.artifact_name)
        try:
            ort.InferenceSession(str(model.path), sess_options=options, providers=[PROVIDERS[job.device]])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ProfilerError(f"onnxruntime cannot load {model.path}: {first_line(error)}") from None

    def open(self, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray) -> Session:
        return OnnxRuntimeSession(self, artifact, model, job, feed)


class OnnxRuntimeSession(Session):
    def __init__(
        self, backend: OnnxRuntimeBackend, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray
    ) -> None:
        self.backend, self.artifact, self.model, self.job, self.feed = backend, artifact, model, job, feed
        self.session: Any = None

    def activate(self) -> None:
        ort = self.backend.sdk()
        try:
            self.session = ort.InferenceSession(
                str(self.artifact),
                sess_options=self.backend._options(self.job),
                providers=[PROVIDERS[self.job.device]],
            )
        except Exception as error:
            raise ProfilerError(f"onnxruntime cannot load {self.artifact}: {first_line(error)}") from None
        self.inputs = {self.model.input_name: self.feed}

    def infer(self) -> None:
        self.session.run(None, self.inputs)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.model.input_name: x})[0]

    def release(self) -> None:
        self.session = None
