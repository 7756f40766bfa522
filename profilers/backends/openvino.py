"""OpenVINO: `ov.Core` on CPU (GPU, NPU when present), from an IR converted once from the ONNX file.

Compiled with the LATENCY performance hint (one stream, as `benchmark_app -hint latency`), f32 inference
precision unless fp16 or bf16 is asked (CPUs with bf16/AMX would otherwise silently run bf16), and the
thread count in INFERENCE_NUM_THREADS on CPU. int8 is a quantized (QDQ) ONNX: OpenVINO turns its pairs
into FakeQuantize and runs those layers in int8, the rest in f32. Which of fp16, bf16 and int8 a device
can run is its OPTIMIZATION_CAPABILITIES. The input tensor is bound once, so a run times only inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from profilers.backends import Backend, Session
from profilers.errors import ProfilerError, first_line
from profilers.jobs import Job
from profilers.modelfile import ModelFile

_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
# precision -> the OPTIMIZATION_CAPABILITIES entry a device needs for it
_CAPABILITY = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


class OpenVinoBackend(Backend):
    name = "openvino"
    sdk_module = "openvino"
    install_hint = "pip install openvino"
    artifact_name = "model.xml"  # with model.bin beside it
    precisions = ("fp32", "fp16", "bf16", "int8")

    def devices(self) -> list[str]:
        devices = list(self.sdk().Core().available_devices)
        # "GPU.0"/"GPU.1" on multi-GPU machines: also accept the plain family name.
        families = [d.split(".")[0] for d in devices if "." in d]
        return devices + [f for f in dict.fromkeys(families) if f not in devices]

    def version(self) -> str:
        return str(self.sdk().get_version())

    def check(self, job: Job) -> None:
        super().check(job)
        if job.precision not in _CAPABILITY:
            return
        try:
            capabilities = set(self.sdk().Core().get_property(job.device, "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # a device plugin without the property: let compile decide
            return
        if _CAPABILITY[job.precision] not in capabilities:
            offered = ["fp32"] + [p for p, c in _CAPABILITY.items() if c in capabilities]
            raise ProfilerError(
                f"openvino on {job.device} here supports precision {', '.join(offered)}, not {job.precision}"
            )

    def build(self, model: ModelFile, job: Job, out_dir: Path) -> None:
        ov = self.sdk()
        try:
            converted = ov.convert_model(str(model.path))
        except Exception as error:
            raise ProfilerError(f"openvino cannot convert {model.path}: {first_line(error)}") from None
        # Keep f32 weights in the IR: the default compresses them to f16.
        ov.save_model(converted, str(out_dir / self.artifact_name), compress_to_fp16=False)

    def compile_config(self, job: Job) -> dict[str, Any]:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[job.precision],
        }
        if job.device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = job.resolved_threads
        return config

    def open(self, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray) -> Session:
        return OpenVinoSession(self, artifact, job, feed)


class OpenVinoSession(Session):
    def __init__(self, backend: OpenVinoBackend, artifact: Path, job: Job, feed: np.ndarray) -> None:
        self.backend, self.artifact, self.job, self.feed = backend, artifact, job, feed
        self.compiled: Any = None
        self.request: Any = None

    def activate(self) -> None:
        ov = self.backend.sdk()
        try:
            self.compiled = ov.Core().compile_model(
                str(self.artifact), self.job.device, self.backend.compile_config(self.job)
            )
        except Exception as error:
            raise ProfilerError(
                f"openvino cannot compile {self.artifact} for {self.job.device}: {first_line(error)}"
            ) from None
        self.request = self.compiled.create_infer_request()
        self.request.set_input_tensor(ov.Tensor(self.feed))

    def infer(self) -> None:
        self.request.infer()

    def run(self, x: np.ndarray) -> np.ndarray:
        # Not thread-safe (one infer request): the ladder runtime serialises calls per session.
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()

    def release(self) -> None:
        self.request = None
        self.compiled = None
