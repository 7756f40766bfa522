"""Run images through the exact artifact the profiler measures: accuracy of what ships, not of torch.

    outputs = predict(job, images)          # (N, ...) first model output per image
    payload = split_npz(images)             # the evaluation split as it travels (SSH, Ray): an .npz
    images = read_images(payload)

The artifact comes from the same cache as the measurement (same ONNX bytes, backend, version, device and
precision, so the same key), built if missing; a static batch-B export is fed B images at a time, the
last chunk padded with zeros and the padded rows' outputs dropped, so every image is scored by the very
batch-B file that ships. Device-side like the rest of `profilers`: no planner, no torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from profilers.backends import get_backend
from profilers.cache import ensure_artifact
from profilers.errors import ProfilerError
from profilers.jobs import Job, Settings
from profilers.modelfile import ModelFile


def predict(job: Job, images: np.ndarray, settings: Settings | None = None) -> np.ndarray:
    """The first output of `job`'s artifact for each image (float32 N x C x H x W)."""
    settings = settings or Settings()
    model = ModelFile.inspect(job.onnx, job.batch)
    backend = get_backend(job.backend)
    backend.check(job)
    if job.precision == "int8" and not model.quantized:
        raise ProfilerError(f"{job.onnx} is not quantized: int8 evaluates a QDQ ONNX")
    images = np.ascontiguousarray(images, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if images.ndim != len(model.input_shape) or tuple(images.shape[1:]) != expected:
        got = "x".join(map(str, images.shape[1:]))
        raise ProfilerError(
            f"evaluation images are {got}, {Path(job.onnx).name} takes {'x'.join(map(str, expected))}"
        )
    if not len(images):
        raise ProfilerError("no images to evaluate: the split is empty")
    artifact = ensure_artifact(backend, model, job, settings.resolved_cache_dir, settings.build_timeout_s)
    batch = model.input_shape[0]
    outputs = []
    with backend.open(
        artifact, model, job, images[:batch] if len(images) >= batch else _pad(images, batch)
    ) as run:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            outputs.append(np.asarray(run.run(_pad(chunk, batch)))[: len(chunk)])
    return np.concatenate(outputs)


def _pad(chunk: np.ndarray, batch: int) -> np.ndarray:
    if len(chunk) == batch:
        return chunk
    padding = np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
    return np.concatenate([chunk, padding])


def split_npz(images: np.ndarray) -> bytes:
    """An evaluation split's images as .npz bytes (`x`, float32 N x C x H x W; labels stay behind)."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ascontiguousarray(images, dtype=np.float32))
    return buffer.getvalue()


def read_images(source: Path | bytes) -> np.ndarray:
    """The `x` array of a split .npz (a file, or its bytes as they arrived)."""
    name = str(source) if isinstance(source, Path) else "(the split sent)"
    try:
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False) as data:
            return data["x"]
    except (OSError, ValueError, KeyError) as error:
        raise ProfilerError(f"cannot read images {name}: {str(error).splitlines()[0]}") from None
