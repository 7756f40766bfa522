"""Per-device deployment manifests: what to ship, why it was chosen, and the ladder to step down on.

A manifest is JSON validated by a versioned JSON Schema (profilers/schemas/manifest.schema.json, shipped
device-side so that the ladder runtime checks the same file; version 1 manifests still load against
manifest-v1.schema.json). Each rung is a configuration at a precision and static batch size (every rung
at the choice's batch, which `target.batch` records: the runtime feeds one shape); an int8 rung ships the
very QDQ file that was profiled and evaluated, with its quantization record. It names
the chosen configuration with its per-layer channel counts and the artifact built for the device's
backend (path relative to the manifest, sha256), the measured statistics with their interval, the
accuracy, the budget, the environment the numbers were measured in, and the ladder: the Pareto-optimal
configurations that fit, fastest to most accurate, each with its own artifact, so a runtime can step
down to a cheaper width when the device is loaded without re-planning.

`load_manifest()` refuses a manifest that does not match the schema or whose artifacts changed.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.plan.select import Selection, label, rung_key
from planner.widths import WidthConfig
from profilers.files import replacing
from profilers.jobs import file_digest
from profilers.manifests import MANIFEST_NAME, SCHEMA_VERSION, read_manifest
from profilers.manifests import schema as manifest_schema

# How a device-side reader knows the network: what rebuilds it, in this order.
MODEL_KEYS = ("name", "widths", "universal", "num_classes", "in_channels", "input_size")
_STATISTICS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "ci_low_ms", "ci_high_ms",
               "first_ms", "throughput_ips")  # fmt: skip
_MEMORY = ("peak_rss_bytes", "weight_bytes", "artifact_bytes", "device_mem_bytes")
_ENVIRONMENT = ("cpu", "cores", "threads", "governor", "host", "runtime", "runtime_version", "nvpmodel",
                "jetson_clocks")  # fmt: skip


def schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The manifest JSON Schema of a version (shipped with the profiler, which reads manifests too)."""
    return manifest_schema(version)


def write_manifest(
    selection: Selection,
    target: Target,
    model: Mapping[str, Any],
    checkpoint: Path,
    exports: Mapping[str, Path],
    out_dir: Path,
) -> Path:
    """Build the artifacts of every ladder rung for `target` and write `out_dir/manifest.json`.

    `model` says how to rebuild the network (name, widths, universal, classes, input); `exports` maps each
    configuration id to its exported ONNX (planner.measure.artifacts.export_ladder), the very file that
    was profiled, so what ships is what was measured.
    """
    if not selection.fits:
        raise PlannerError(f"nothing fits the budget on {target.name}; no manifest written")
    checkpoint_sha = file_digest(checkpoint)
    _check_accuracy_checkpoint(selection.ladder, checkpoint, checkpoint_sha)
    out_dir.mkdir(parents=True, exist_ok=True)
    rungs = [
        _rung(row, selection.budget.metric, target, exports, out_dir)
        for _, row in selection.ladder.iterrows()
    ]
    choice = selection.choice
    chosen = next(rung for rung in rungs if rung["key"] == rung_key(choice))
    for rung in rungs:
        del rung["key"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            **{key: model[key] for key in MODEL_KEYS},
            "checkpoint": {"file": checkpoint.name, "sha256": checkpoint_sha},
        },
        "target": {
            "name": target.name,
            "backend": target.backend,
            "device": target.device,
            "precision": chosen["precision"],
            "batch": chosen["batch"],
            "threads": target.threads,
        },
        "precision": chosen["precision"],
        "budget": selection.budget.to_dict(),
        "configuration": chosen,
        "ladder": rungs,
        "environment": _environment(choice),
    }
    path = out_dir / MANIFEST_NAME
    _write_atomically(path, json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return path


def _check_accuracy_checkpoint(ladder: pd.DataFrame, checkpoint: Path, sha: str) -> None:
    """The accuracy a manifest promises must have been measured with the weights it ships."""
    for _, row in ladder.iterrows():
        measured_with = str(row.get("accuracy_checkpoint") or "")
        if measured_with and not sha.startswith(measured_with.lower()):
            raise PlannerError(
                f"the accuracy of {label(row)} was measured with checkpoint {measured_with}, but "
                f"{checkpoint} is {sha[:12]}; pass the checkpoint that was evaluated, or re-evaluate with it"
            )


def _rung(
    row: pd.Series, metric: str, target: Target, exports: Mapping[str, Path], out_dir: Path
) -> dict[str, Any]:
    config = WidthConfig.from_json(row["config"])
    if config.id != row["config_id"]:
        raise PlannerError(f"results row {row['config_id']} holds a configuration whose id is {config.id}")
    key = rung_key(row)
    if key not in exports:
        raise PlannerError(f"no exported ONNX for {label(row)} ({config.id})")
    precision = str(row.get("precision") or "fp32")
    onnx = exports[key]
    return {
        "key": key,
        "config_id": config.id,
        "label": label(row),
        "width": config.width,
        "channels": config.channels,
        "precision": precision,
        "batch": _integer(row.get("batch")) or target.batch,
        "quantization": _quantization(onnx) if precision == "int8" else None,
        "accuracy": {
            "top1": _finite(row["accuracy"]),
            "dataset": str(row.get("accuracy_dataset") or ""),
            "split": str(row.get("accuracy_split") or ""),
            "source": str(row.get("accuracy_source") or ""),
            "runtime": str(row.get("accuracy_runtime") or "torch"),
            "batch": _integer(row.get("accuracy_batch")),
            "n": _integer(row.get("accuracy_n")),
            "ci95": [_finite(row.get("accuracy_ci_low")), _finite(row.get("accuracy_ci_high"))],
        },
        "latency": {
            "metric": metric,
            "bound_ms": _finite(row["bound_ms"]),
            "confidence": 0.95,
            **{key: _finite(row.get(key)) for key in _STATISTICS},
            "n": _integer(row.get("n")),
            "estimated": bool(row.get("estimated", False)),
            "run_id": str(row.get("run_id") or ""),
            "measured_at": str(row.get("timestamp") or ""),
        },
        "memory": {key: _integer(row.get(key)) for key in _MEMORY},
        "cost": {"macs": _integer(row.get("macs")), "params": _integer(row.get("params"))},
        "artifact": build_artifact(
            onnx,
            target.at_precision(precision).at_batch(_integer(row.get("batch")) or target.batch),
            out_dir / f"{label(row).replace(' ', '-')}-{config.id}",
        ),
    }


def _quantization(quantized: Path) -> dict[str, Any]:
    """The sidecar planner.measure.quantize wrote beside the int8 file (read here without importing it)."""
    sidecar = quantized.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        record = {key: record[key] for key in ("scheme", "calibration_sha256", "fp32_sha256")} | record
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise PlannerError(
            f"{quantized}: its quantization record {sidecar.name} is missing or corrupt"
        ) from None
    return {
        "scheme": record["scheme"],
        "calibration_sha256": record["calibration_sha256"],
        "calibration": str(record.get("calibration", "")),
        "fp32_sha256": record["fp32_sha256"],
    }


def build_artifact(onnx: Path, target: Target, directory: Path) -> dict[str, Any]:
    """The file(s) the target's runtime loads, made from the exported (and profiled) ONNX, with hashes.

    onnxruntime: the ONNX. openvino: an IR made by the profiler's own build step (f32 weights).
    tensorrt: an engine must be built on the device itself, so the ONNX plus the trtexec argument list
    that builds it there. torch: the `torch.export` program exported beside the ONNX.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if target.backend == "openvino":
        _build_openvino_ir(onnx, target, directory)
        return _artifact(
            "openvino-ir",
            directory,
            [("model", directory / "model.xml"), ("weights", directory / "model.bin")],
        )
    if target.backend == "torch":
        program = onnx.with_suffix(".pt2")
        if not program.is_file():
            raise PlannerError(
                f"no torch program beside {onnx}; export it with planner profile --target {target.name}"
            )
        return _artifact("torch-export", directory, [("model", _copy(program, directory / "model.pt2"))])
    local = _copy(onnx, directory / "model.onnx")
    artifact = _artifact("onnx", directory, [("model", local)])
    if target.backend == "tensorrt":
        engine = "model.engine"
        command = ["trtexec", f"--onnx={local.name}", f"--saveEngine={engine}", "--skipInference"]
        if target.precision in ("fp16", "int8"):  # int8: explicit Q/DQ, FP16 for the layers between
            command[3:3] = ["--fp16", "--int8"] if target.precision == "int8" else ["--fp16"]
        artifact["build"] = {
            "command": command,
            "cwd": directory.name,
            "output": f"{directory.name}/{engine}",
            "note": "build the TensorRT engine on the device itself (engines are not portable)",
        }
    return artifact


def _copy(source: Path, destination: Path) -> Path:
    with replacing(destination) as tmp:
        shutil.copyfile(source, tmp)
    return destination


def _build_openvino_ir(onnx_path: Path, target: Target, directory: Path) -> None:
    from profilers.backends import get_backend
    from profilers.jobs import Job
    from profilers.modelfile import ModelFile

    job = Job(
        onnx_path, backend="openvino", device=target.device, precision=target.precision, batch=target.batch
    )
    get_backend("openvino").build(ModelFile.inspect(onnx_path, batch=target.batch), job, directory)


def _artifact(kind: str, directory: Path, files: list[tuple[str, Path]]) -> dict[str, Any]:
    base = directory.parent
    entries = [
        {
            "role": role,
            "path": path.relative_to(base).as_posix(),
            "sha256": file_digest(path),
            "bytes": path.stat().st_size,
        }
        for role, path in files
    ]
    return {"format": kind, "files": entries}


def _environment(row: pd.Series) -> dict[str, Any]:
    environment: dict[str, Any] = {key: _plain(row.get(f"env_{key}")) for key in _ENVIRONMENT}
    for key in ("cores", "threads"):
        environment[key] = _integer(row.get(f"env_{key}"))
    libs = row.get("env_libs")
    try:
        environment["libs"] = json.loads(libs) if isinstance(libs, str) and libs else {}
    except json.JSONDecodeError:
        environment["libs"] = {"raw": libs}
    return environment


def _plain(value: Any) -> str | int | float | bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    number = _finite(value)
    return None if number is None else int(number)


def _write_atomically(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest checked against its version's schema, every artifact present and matching its sha256."""
    return read_manifest(path, PlannerError)[0]
