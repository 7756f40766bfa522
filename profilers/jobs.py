"""What to measure (`Job`) and how hard to try (`Settings`): the values the planner side hands over.

Both are plain dataclasses that round-trip through JSON, because the same jobs travel to remote devices as
a jobs file (`python -m profilers run --jobs jobs.json`) whose paths are relative to the file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profilers.documents import check, load_schema, read_json
from profilers.errors import ProfilerError

# int8 runs a quantized ONNX (QuantizeLinear/DequantizeLinear pairs), written by `planner profile`.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The columns that identify a measurement; a re-run skips a job whose key already has an `ok` row.
# Waiting longer than a day for a quiet machine is a typo, not a plan.
MAX_WAIT_QUIET_S = 86_400.0
KEY_COLUMNS = ("model", "config_id", "target", "backend", "device", "precision", "batch")


@dataclass(frozen=True)
class Job:
    """One (configuration, backend) to measure.

    Args:
        onnx: static-shape ONNX file; the torch backend reads the `torch.export` program beside it (`.pt2`).
        backend: onnxruntime, openvino, torch, tensorrt or trtexec (`profilers.backends.BACKENDS`).
        device: the backend's device name (CPU, GPU, NPU, CUDA, ...).
        precision: fp32, fp16, bf16 (what the backend offers), or int8 for a quantized (QDQ) ONNX.
        threads: intra-op threads; 0 means every core this process may use.
        batch: batch size; must match a static batch dimension of the ONNX input.
        metadata: copied into the result row (model, config_id, width, config, target, macs, params, ...).
    """

    onnx: Path
    backend: str = "onnxruntime"
    device: str = "CPU"
    precision: str = "fp32"
    threads: int = 0
    batch: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx", Path(self.onnx))
        object.__setattr__(self, "metadata", dict(self.metadata or {}))
        if self.precision not in PRECISIONS:
            raise ProfilerError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ProfilerError(f"threads must be an integer >= 0 (0 = all cores), got {self.threads!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ProfilerError(f"batch must be an integer >= 1, got {self.batch!r}")

    @property
    def resolved_threads(self) -> int:
        """The thread count actually used: `threads`, or every core this process may run on."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    def key(self) -> tuple:
        """The identity of this job's row in the results table (see KEY_COLUMNS)."""
        row = self.identity()
        return tuple(row[column] for column in KEY_COLUMNS)

    def identity(self) -> dict[str, Any]:
        """The key columns, falling back to the file when the caller gave no model or config id."""
        meta = self.metadata
        return {
            "model": str(meta.get("model") or self.onnx.stem),
            "config_id": str(meta.get("config_id") or file_digest(self.onnx)[:10]),
            "target": str(meta.get("target") or "local"),
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "batch": int(self.batch),
        }

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        path = self.onnx.resolve()
        data["onnx"] = os.path.relpath(path, relative_to.resolve()) if relative_to else str(path)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> Job:
        check(data, _part("job"), "job")
        onnx = Path(data["onnx"])
        if base_dir is not None and not onnx.is_absolute():
            onnx = base_dir / onnx
        try:
            return cls(**{**data, "onnx": onnx})
        except TypeError as error:
            raise ProfilerError(f"malformed job {data!r}: {error}") from None


@dataclass(frozen=True)
class Settings:
    """How a measurement is run and when it stops.

    Args:
        ci_rel: stop when the interval a re-run's median should fall in lies within median * (1 +- ci_rel).
        confidence: confidence level of that interval.
        min_queries: measured inferences before a job may stop (64: enough for a p90, as MLPerf asks).
        max_seconds: measuring time per job after which it stops unconverged.
        warmup_s: warm-up time after the first inference (time, not a count: fast and slow models alike).
        burst_size: inferences per turn of a worker in a round; a turn also ends after burst_seconds.
        burst_seconds: upper bound on one turn, so slow models still interleave finely.
        burst_min_seconds: a turn runs more than burst_size inferences if they take less than this, so a
            microsecond model's burst median is not 16 samples of timer and scheduling jitter.
        burst_warmup: untimed inferences at the start of each turn (caches go cold while others run).
        timeout_s: a worker that does not answer a request within this is killed (row status `timeout`).
        build_timeout_s: the same for building the artifact and opening the session.
        max_workers: how many job workers are alive (and interleaved) at once.
        seed: seeds the per-round shuffle of the job order (and the input tensor).
        cache_dir: where built artifacts are kept; default $PROFILERS_CACHE_DIR or ~/.cache/planner/profilers.
        contention_cores: a row is flagged `contended` when other processes kept more than this many cores
            busy on average during its rounds (profilers.load).
        wait_quiet_s: before measuring, wait up to this long for the machine to be quiet (0: do not wait).
        keep_cpus_awake: keep idle CPUs out of their idle states while measuring, where the kernel lets
            this process (profilers.load.cpus_kept_awake); each row's `cpus_awake` says whether they were.
    """

    ci_rel: float = 0.02
    confidence: float = 0.95
    min_queries: int = 64
    max_seconds: float = 30.0
    warmup_s: float = 1.0
    burst_size: int = 16
    burst_seconds: float = 0.25
    burst_min_seconds: float = 0.005
    burst_warmup: int = 1
    timeout_s: float = 60.0
    build_timeout_s: float = 900.0
    max_workers: int = 8
    seed: int = 0
    cache_dir: Path | None = None
    contention_cores: float = 0.25
    wait_quiet_s: float = 0.0
    keep_cpus_awake: bool = False

    def __post_init__(self) -> None:
        checks = {
            "ci_rel": 0 < self.ci_rel < 1,
            "confidence": 0.5 < self.confidence < 1,
            "min_queries": self.min_queries >= 1,
            "max_seconds": self.max_seconds > 0,
            "warmup_s": self.warmup_s >= 0,
            "burst_size": self.burst_size >= 1,
            "burst_seconds": self.burst_seconds > 0,
            "burst_min_seconds": 0 <= self.burst_min_seconds <= self.burst_seconds,
            "burst_warmup": self.burst_warmup >= 0,
            "timeout_s": self.timeout_s > 0,
            "build_timeout_s": self.build_timeout_s > 0,
            "max_workers": self.max_workers >= 1,
            "contention_cores": self.contention_cores > 0,
            "wait_quiet_s": 0 <= self.wait_quiet_s <= MAX_WAIT_QUIET_S,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ProfilerError(
                f"invalid profiler setting(s): {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}"
            )
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        env = os.environ.get("PROFILERS_CACHE_DIR")
        return Path(env) if env else Path.home() / ".cache" / "planner" / "profilers"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cache_dir"] = str(self.cache_dir) if self.cache_dir is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        check(data, _part("settings"), "settings")
        try:
            return cls(**data)
        except TypeError as error:
            raise ProfilerError(f"malformed settings: {error}") from None


def _part(name: str) -> dict[str, Any]:
    """The jobs file schema's definition of one part (a job, the settings)."""
    schema = load_schema("profilers", "jobs")
    return {"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}


def load_jobs_file(path: Path) -> tuple[list[Job], Settings | None]:
    """Read a jobs file: a JSON list of jobs, or {"jobs": [...], "settings": {...}}; paths relative to it."""
    path = Path(path)
    data = read_json(path, "jobs file", load_schema("profilers", "jobs"))
    settings = None
    if isinstance(data, dict):
        settings = Settings.from_dict(data.get("settings") or {})
        data = data["jobs"]
    return [Job.from_dict(item, base_dir=path.parent) for item in data], settings


def write_jobs_file(path: Path, jobs: list[Job], settings: Settings | None = None) -> Path:
    """Write jobs (paths relative to the file) for `python -m profilers run --jobs`."""
    path = Path(path)
    items = [job.to_dict(relative_to=path.parent) for job in jobs]
    data: Any = {"jobs": items, "settings": settings.to_dict()} if settings else items
    path.write_text(json.dumps(data, indent=2))
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (cache keys and default config ids)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
