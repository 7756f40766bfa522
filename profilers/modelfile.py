"""What the profiler needs to know about an ONNX file: that it is one, its input, its weight bytes.

Checked in the parent before any worker starts, so a missing or corrupt file is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from profilers.errors import ProfilerError


@dataclass(frozen=True)
class ModelFile:
    """A validated ONNX file with a single static-shape f32 input (batch may be symbolic)."""

    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    weight_bytes: int
    quantized: bool = False  # holds QuantizeLinear/DequantizeLinear (or QLinear*) nodes: an int8 model

    @classmethod
    def inspect(cls, path: Path, batch: int = 1) -> ModelFile:
        path = Path(path)
        if not path.is_file():
            raise ProfilerError(f"ONNX file {path} does not exist: export it first (planner export)")
        try:
            model = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(model)
        except Exception as error:  # onnx raises DecodeError, ValidationError, ... for a bad file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ProfilerError(f"{path} is not a valid ONNX model ({reason}): re-export it") from None
        graph = model.graph
        initializers = {init.name for init in graph.initializer}
        inputs = [value for value in graph.input if value.name not in initializers]
        if len(inputs) != 1:
            raise ProfilerError(
                f"{path} has {len(inputs)} inputs; the profiler feeds models with exactly one"
            )
        value = inputs[0]
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ProfilerError(f"{path}: input {value.name!r} is not float32; export with an f32 input")
        shape = []
        for index, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif index == 0:
                shape.append(batch)
            else:
                raise ProfilerError(f"{path}: input dimension {index} is dynamic; export with a static shape")
        if shape and shape[0] != batch:
            raise ProfilerError(
                f"{path} has a static batch of {shape[0]}, the job asks for batch {batch}: "
                "export at that batch size"
            )
        return cls(
            path=path,
            input_name=value.name,
            input_shape=tuple(shape),
            weight_bytes=initializer_bytes(model),
            quantized=is_quantized(model),
        )

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.input_shape)

    def random_input(self, seed: int = 0) -> np.ndarray:
        """The fixed input every inference sees: f32 noise in [0, 1), same for every backend and run."""
        return np.random.default_rng(seed).random(self.input_shape, dtype=np.float32)


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph carries int8 quantization (QDQ pairs or QLinear operators)."""
    return any(
        node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type.startswith("QLinear")
        for node in model.graph.node
    )


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all weights (initializers), whether stored inline or as external data."""
    total = 0
    for tensor in model.graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total
