"""TensorRT through its Python API (8.6, 10, 11): an engine built from the ONNX file, timed with CUDA events.

The engine is cached by the ONNX hash, the TensorRT version and the GPU name (an engine is only valid for
the TensorRT version and GPU that built it). The API moved between versions, and each difference is
handled where it appears:
- network creation: EXPLICIT_BATCH flag before 10 (it is the only mode, and deprecated, from 10 on);
- I/O: the named-tensor API (num_io_tensors, set_tensor_address, execute_async_v3) since 8.5, the binding
  API (num_bindings, execute_async_v2) before;
- activation memory: device_memory_size_v2 from 10, device_memory_size before.
CUDA calls go through cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` in older releases).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from profilers.backends import Backend, Session
from profilers.errors import ProfilerError, missing_sdk
from profilers.jobs import Job
from profilers.modelfile import ModelFile

WORKSPACE_BYTES = 1 << 30


def cudart() -> Any:
    """The CUDA runtime bindings of cuda-python, whichever module layout is installed."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise missing_sdk("cuda-python", "pip install cuda-python")


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise ProfilerError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def engine_settings(
    trt_version: str, gpu_name: str, precision: str, workspace_bytes: int = WORKSPACE_BYTES
) -> dict[str, Any]:
    """What an engine depends on besides the ONNX bytes: it is only valid for that TensorRT and GPU."""
    return {
        "backend": "tensorrt",
        "version": trt_version,
        "gpu": gpu_name,
        "precision": precision,
        "workspace": workspace_bytes,
    }


def builder_flags(precision: str) -> list[str]:
    """TensorRT BuilderFlag names for a precision.

    int8 is explicit quantization: the ONNX carries symmetric QuantizeLinear/DequantizeLinear pairs (planner
    writes them with the calibration data), so no calibrator or cache is needed; INT8 lets TensorRT run
    the quantized layers in int8 and FP16 lets it run the layers between them in half precision.
    """
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


class TensorRtBackend(Backend):
    name = "tensorrt"
    sdk_module = "tensorrt"
    install_hint = "pip install tensorrt cuda-python (on a Jetson, TensorRT comes with JetPack)"
    artifact_name = "model.engine"
    precisions = ("fp32", "fp16", "int8")

    def devices(self) -> list[str]:
        self.sdk()
        rt = cudart()
        try:
            count = _check(rt.cudaGetDeviceCount())
        except ProfilerError:
            count = 0
        return ["GPU"] + [f"GPU.{i}" for i in range(count)] if count else []

    def device_name(self) -> str:
        properties = _check(cudart().cudaGetDeviceProperties(0))
        name = properties.name
        return (name.decode() if isinstance(name, bytes) else str(name)).strip("\x00 ")

    def artifact_settings(self, job: Job) -> dict[str, Any]:
        return engine_settings(self.version(), self.device_name(), job.precision)

    def build(self, model: ModelFile, job: Job, out_dir: Path) -> None:
        trt = self.sdk()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0 if trt_major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model.path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ProfilerError(f"TensorRT cannot parse {model.path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        for flag in builder_flags(job.precision):
            config.set_flag(getattr(trt.BuilderFlag, flag))
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ProfilerError(f"TensorRT could not build an engine for {model.path} (see the worker log)")
        (out_dir / self.artifact_name).write_bytes(bytes(serialized))

    def open(self, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray) -> Session:
        return TensorRtSession(self, artifact, feed)


class TensorRtSession(Session):
    """Input uploaded once; an inference is one enqueue on a stream, timed between two CUDA events."""

    def __init__(self, backend: TensorRtBackend, artifact: Path, feed: np.ndarray) -> None:
        self.backend, self.artifact, self.feed = backend, artifact, feed
        self.buffers: list[int] = []
        self.inputs: list[tuple[int, tuple, np.dtype, int]] = []
        self.outputs: list[tuple[int, tuple, np.dtype, int]] = []

    def activate(self) -> None:
        trt = self.backend.sdk()
        self.rt = rt = cudart()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if self.engine is None:
            raise ProfilerError(f"TensorRT cannot load {self.artifact}: rebuild it (delete the cache entry)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(rt.cudaStreamCreate())
        self.start, self.end = _check(rt.cudaEventCreate()), _check(rt.cudaEventCreate())
        memory = getattr(self.engine, "device_memory_size_v2", None)
        self.device_mem_bytes = int(memory if memory is not None else self.engine.device_memory_size)
        if hasattr(self.engine, "num_io_tensors"):
            self._bind_named(trt)
        else:
            self._bind_indexed(trt)

    def _allocate(self, shape: Any, dtype: Any, is_input: bool) -> int:
        size = int(np.prod(tuple(shape))) * np.dtype(dtype).itemsize
        pointer = int(_check(self.rt.cudaMalloc(size)))
        self.buffers.append(pointer)
        (self.inputs if is_input else self.outputs).append((pointer, tuple(shape), np.dtype(dtype), size))
        if is_input:
            data = np.ascontiguousarray(self.feed.astype(dtype))
            _check(
                self.rt.cudaMemcpy(
                    pointer, data.ctypes.data, size, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
                )
            )
        return pointer

    def _bind_named(self, trt: Any) -> None:
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            pointer = self._allocate(
                self.engine.get_tensor_shape(name), trt.nptype(self.engine.get_tensor_dtype(name)), is_input
            )
            self.context.set_tensor_address(name, pointer)
        self._enqueue = lambda: self.context.execute_async_v3(self.stream)

    def _bind_indexed(self, trt: Any) -> None:  # TensorRT < 8.5
        bindings = [
            self._allocate(
                self.engine.get_binding_shape(i),
                trt.nptype(self.engine.get_binding_dtype(i)),
                self.engine.binding_is_input(i),
            )
            for i in range(self.engine.num_bindings)
        ]
        self._enqueue = lambda: self.context.execute_async_v2(bindings, self.stream)

    def infer(self) -> None:
        self._enqueue()
        _check(self.rt.cudaStreamSynchronize(self.stream))

    def run(self, x: np.ndarray) -> np.ndarray:
        """Copy the input in, enqueue, copy the first output back (not thread-safe: one context)."""
        pointer, _, dtype, size = self.inputs[0]
        data = np.ascontiguousarray(x, dtype=dtype)
        if data.nbytes != size:
            raise ProfilerError(f"input of {data.nbytes} bytes, the engine takes {size}")
        host_to_device = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.rt.cudaMemcpy(pointer, data.ctypes.data, size, host_to_device))
        self.infer()
        pointer, shape, dtype, size = self.outputs[0]
        output = np.empty(shape, dtype=dtype)
        device_to_host = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.rt.cudaMemcpy(output.ctypes.data, pointer, size, device_to_host))
        return output

    def burst(self, count: int, max_seconds: float, warmup: int = 0) -> list[int]:
        for _ in range(warmup):
            self.infer()
        durations: list[int] = []
        budget_ns = max_seconds * 1e9
        for _ in range(count):
            _check(self.rt.cudaEventRecord(self.start, self.stream))
            self._enqueue()
            _check(self.rt.cudaEventRecord(self.end, self.stream))
            _check(self.rt.cudaEventSynchronize(self.end))
            milliseconds = _check(self.rt.cudaEventElapsedTime(self.start, self.end))
            durations.append(int(milliseconds * 1e6))
            budget_ns -= durations[-1]
            if budget_ns <= 0:
                break
        return durations

    def release(self) -> None:
        for pointer in self.buffers:
            self.rt.cudaFree(pointer)
        self.buffers, self.inputs, self.outputs = [], [], []
        for event in (getattr(self, "start", None), getattr(self, "end", None)):
            if event is not None:
                self.rt.cudaEventDestroy(event)
        if getattr(self, "stream", None) is not None:
            self.rt.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.runtime = None
