"""The artifact cache: one directory per (ONNX bytes, build settings), written whole or not at all.

A build runs in its own short-lived process (`python -m profilers.cache`), so what a build allocates
(graph conversion, engine tactics) never counts towards the measuring worker's peak memory, and a build
that crashes leaves no half-written artifact: the directory is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from profilers.backends import Backend, get_backend
from profilers.errors import ProfilerError
from profilers.jobs import Job, file_digest
from profilers.modelfile import ModelFile


@lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def onnx_digest(path: Path) -> str:
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def artifact_key(onnx_sha256: str, settings: dict[str, Any]) -> str:
    """A stable key: the model's bytes plus every setting the artifact depends on."""
    text = json.dumps({"onnx": onnx_sha256, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def artifact_dir(cache_root: Path, backend: Backend, model: ModelFile, job: Job) -> Path:
    key = artifact_key(onnx_digest(model.path), backend.artifact_settings(job))
    return Path(cache_root) / backend.name / f"{model.path.stem}-{key}"


def build_into_cache(backend: Backend, model: ModelFile, job: Job, cache_root: Path) -> Path:
    """Build in this process and move the finished directory into place (the child side of ensure)."""
    target = artifact_dir(cache_root, backend, model, job)
    if (target / backend.artifact_name).exists():
        return target / backend.artifact_name
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        backend.build(model, job, scratch)
        if not (scratch / backend.artifact_name).exists():
            raise ProfilerError(f"{backend.name} build of {model.path} wrote no {backend.artifact_name}")
        try:
            os.replace(scratch, target)
        except OSError:  # another process finished the same build first
            if not (target / backend.artifact_name).exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / backend.artifact_name


def ensure_artifact(backend: Backend, model: ModelFile, job: Job, cache_root: Path, timeout_s: float) -> Path:
    """The artifact for this job, built in a separate process when it is not cached yet."""
    preset = backend.artifact_for(model, job)
    if preset is not None:
        return preset
    path = artifact_dir(cache_root, backend, model, job) / backend.artifact_name
    if path.exists():
        return path
    request = json.dumps({"job": job.to_dict(), "cache": str(cache_root)})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "profilers.cache", request],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProfilerError(
            f"building the {backend.name} artifact for {model.path.name} took over {timeout_s:g} s"
        ) from None
    if done.returncode != 0 or not path.exists():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ProfilerError(
            lines[-1].removeprefix("error: ")
            if lines
            else f"building the {backend.name} artifact failed (exit {done.returncode})"
        )
    return path


def artifact_bytes(path: Path) -> int:
    """Size on disk of an artifact and its companions (an OpenVINO .xml has its .bin beside it)."""
    files = [path] if path.suffix != ".xml" else [path, path.with_suffix(".bin")]
    return sum(f.stat().st_size for f in files if f.exists())


def _main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    job = Job.from_dict(request["job"])
    try:
        backend = get_backend(job.backend)
        build_into_cache(backend, ModelFile.inspect(job.onnx, job.batch), job, Path(request["cache"]))
    except ProfilerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
