"""A fleet node's half of a Ray task (planner.measure.fleet): files arrive as bytes from Ray's object
store, are written to a node-local work directory, and the device-side code runs there.

    work = work_dir("jetson-3f2a9c")                    # $TMPDIR/planner-fleet/jetson-3f2a9c
    write_files(work / "artifacts", {"a.onnx": b"..."})
    outputs = predict_on_node("jetson-predict-...", jobs, split_npz(images), {"a.onnx": b"..."})

Imports no planner and no torch: evaluating on a node needs `profilers`, numpy, the runtime and Ray.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from profilers.jobs import Job
from profilers.predict import predict, read_images


def work_dir(name: str) -> Path:
    """The node-local directory of one task: a retried task with the same name finds what was written."""
    return Path(tempfile.gettempdir()) / "planner-fleet" / name


def write_files(directory: Path, *files: dict[str, bytes]) -> None:
    """Write each file unless a complete copy is there (by size; names carry content keys), atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for batch in files:
        for name, payload in batch.items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != len(payload):
                partial = path.with_name(name + ".part")
                partial.write_bytes(payload)
                partial.replace(path)


def predict_on_node(
    name: str, jobs: list[dict], split: bytes, *artifacts: dict[str, bytes]
) -> list[np.ndarray]:
    """Run each job's artifact (paths relative to the artifacts sent) on the split's images (.npz bytes,
    `profilers.predict.split_npz`); the outputs in job order. The work directory is removed afterwards.

    `artifacts` are passed as top-level object refs, which Ray resolves to bytes on the node.
    """
    work = work_dir(name)
    try:
        write_files(work / "artifacts", *artifacts)
        images = read_images(split)
        return [predict(Job.from_dict(job, base_dir=work / "artifacts"), images) for job in jobs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
