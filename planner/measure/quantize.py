"""INT8 post-training quantization: an exported FP32 ONNX + calibration images -> a quantized (QDQ) ONNX.

The quantized file is what the profiler measures at precision int8 and what the manifest ships, so it is
written once per (configuration's ONNX, calibration images, scheme) beside the FP32 export and reused:

- onnxruntime: `quant_pre_process` then `quantize_static` (QDQ, per-channel weights, u8 activations /
  s8 weights, MinMax), ONNX Runtime's recommended CPU format.
- openvino: `nncf.quantize` on the ONNX (NNCF's OpenVINO-oriented scheme: per-channel symmetric weights,
  FakeQuantize-friendly QDQ placement); OpenVINO converts the pairs into int8 layers. NNCF is the extra
  `planner[quantize]`, imported only here.
- tensorrt / trtexec: `quantize_static` with symmetric s8 activations and weights (TensorRT's explicit
  quantization accepts only zero-point 0), built with the INT8 and FP16 flags.

Calibration images come from the user's data (the calibration split of a `--data` source), never from
random tensors: the scales are only as good as the images they saw.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.errors import PlannerError
from profilers.errors import first_line
from profilers.files import replacing
from profilers.jobs import file_digest

DEFAULT_CALIBRATION_SIZE = 128
# backend -> quantization scheme (the file name carries it, so targets sharing a scheme share the file)
SCHEMES = {"onnxruntime": "ort", "openvino": "nncf", "tensorrt": "trt", "trtexec": "trt"}


@dataclass(frozen=True)
class Calibration:
    """Calibration images (N, C, H, W float32), where they came from and a digest of their bytes."""

    inputs: np.ndarray
    source: str

    @property
    def digest(self) -> str:
        digest = hashlib.sha256(str(self.inputs.shape).encode())
        digest.update(np.ascontiguousarray(self.inputs, dtype=np.float32).tobytes())
        return digest.hexdigest()


def calibration_inputs(
    source: str | Path, input_shape: tuple[int, ...], count: int = DEFAULT_CALIBRATION_SIZE
) -> Calibration:
    """The first `count` images of a data source's calibration split (its train split when it has none).

    Raises PlannerError when the source has no images or they do not match the model's (C, H, W).
    """
    from planner.accuracy.data import load_dataset

    if count < 1:
        raise PlannerError(f"calibration size must be at least 1, got {count}")
    return calibration_from(load_dataset(source), input_shape, count)


def calibration_from(
    dataset, input_shape: tuple[int, ...], count: int = DEFAULT_CALIBRATION_SIZE
) -> Calibration:
    """The same images as `calibration_inputs`, from a loaded `planner.accuracy.data.Dataset`."""
    split = "calibration" if dataset.size("calibration") else "train"
    images = dataset.splits[split][0][:count].numpy().astype(np.float32)
    if not len(images):
        raise PlannerError(f"calibration data {dataset.name} has no images in its calibration or train split")
    return checked_calibration(Calibration(images, f"{dataset.name}:{split}[:{len(images)}]"), input_shape)


def checked_calibration(calibration: Calibration, input_shape: tuple[int, ...]) -> Calibration:
    """`calibration`, or an error when its images are not the model's (C, H, W)."""
    expected = tuple(input_shape[1:])
    got = tuple(calibration.inputs.shape[1:])
    if calibration.inputs.ndim != 4 or got != expected:
        raise PlannerError(
            f"calibration data {calibration.source} has images of shape {'x'.join(map(str, got))}, "
            f"the model takes {'x'.join(map(str, expected))}: give data of the model's input size"
        )
    return calibration


def quantized_path(onnx: Path, calibration: Calibration, backend: str) -> Path:
    return onnx.with_name(f"{onnx.stem}-int8-{scheme(backend)}-{calibration.digest[:8]}.onnx")


def scheme(backend: str) -> str:
    if backend not in SCHEMES:
        raise PlannerError(
            f"backend {backend} has no int8 quantization; int8 is offered on {', '.join(SCHEMES)}"
        )
    return SCHEMES[backend]


def quantize_onnx(onnx: Path, calibration: Calibration, backend: str) -> Path:
    """The int8 QDQ ONNX of `onnx` for `backend`, written beside it (atomically) unless already there.

    A sidecar `<file>.json` records the FP32 file's sha256, the scheme and the calibration digest: the
    manifest copies them. A quantizer that fails is a PlannerError naming the file and its first error line.
    """
    onnx = Path(onnx)
    out = quantized_path(onnx, calibration, backend)
    if out.is_file() and out.with_suffix(".json").is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        staged = Path(scratch) / "model.onnx"
        try:
            if scheme(backend) == "nncf":
                _nncf(onnx, calibration, staged)
            else:
                _onnxruntime(onnx, calibration, staged, symmetric=scheme(backend) == "trt", scratch=scratch)
        except PlannerError:
            raise
        except Exception as error:  # quantizers raise anything from KeyError to their own types
            raise PlannerError(
                f"quantizing {onnx.name} to int8 for {backend} failed: {_failure(error)}"
            ) from None
        with replacing(out) as tmp:
            shutil.copyfile(staged, tmp)
    record = {
        "fp32_onnx": onnx.name,
        "fp32_sha256": file_digest(onnx),
        "scheme": scheme(backend),
        "calibration": calibration.source,
        "calibration_sha256": calibration.digest,
        "calibration_images": int(len(calibration.inputs)),
    }
    with replacing(out.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2))
    return out


def quantization_record(quantized: Path) -> dict:
    """The sidecar of a quantized file (see quantize_onnx); empty when missing or unreadable."""
    try:
        return json.loads(Path(quantized).with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _failure(error: Exception) -> str:
    """The quantizer's message, with the node it stopped at when the traceback names one."""
    text = first_line(error) or type(error).__name__
    trace = error.__traceback__
    while trace is not None:
        node = trace.tb_frame.f_locals.get("node")
        if node is not None and hasattr(node, "op_type"):
            return f"op {node.op_type} (node {node.name!r}): {text}"
        trace = trace.tb_next
    return text


def _input(onnx: Path) -> tuple[str, int]:
    """The model's input name and static batch size."""
    import onnx as onnx_lib

    model = onnx_lib.load(str(onnx), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    value = next(value for value in model.graph.input if value.name not in initializers)
    first = value.type.tensor_type.shape.dim[0]
    return value.name, int(first.dim_value) if first.HasField("dim_value") and first.dim_value > 0 else 1


def _batches(calibration: Calibration, batch: int) -> list[np.ndarray]:
    """The images cut into the export's static batch (an incomplete last batch is left out)."""
    images = np.ascontiguousarray(calibration.inputs, dtype=np.float32)
    if len(images) < batch:
        raise PlannerError(
            f"calibration data {calibration.source} has {len(images)} images, fewer than one batch of {batch}"
        )
    return [images[start : start + batch] for start in range(0, len(images) - batch + 1, batch)]


def _onnxruntime(onnx: Path, calibration: Calibration, out: Path, symmetric: bool, scratch: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name, size = _input(onnx)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: batch} for batch in _batches(calibration, size)])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    prepared = Path(scratch) / "prepared.onnx"
    quant_pre_process(str(onnx), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    )


def _nncf(onnx: Path, calibration: Calibration, out: Path) -> None:
    import onnx as onnx_lib

    try:
        import nncf
    except ImportError:
        raise PlannerError(
            "int8 for openvino quantizes with NNCF: pip install 'planner[quantize]' (nncf)"
        ) from None
    name, size = _input(onnx)
    model = onnx_lib.load(str(onnx))
    batches = _batches(calibration, size)
    dataset = nncf.Dataset(batches, lambda batch: {name: batch})
    quantized = nncf.quantize(model, dataset, subset_size=len(batches))
    onnx_lib.save(quantized, str(out))
