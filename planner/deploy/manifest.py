"""Per-device deployment manifests: what to ship, why it was chosen, and the ladder to step down on.

A manifest is JSON validated by a versioned JSON Schema (profilers/schemas/manifest.schema.json, shipped
device-side so the ladder runtime checks the same file). It names
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
from planner.plan.select import Selection, label
from planner.widths import WidthConfig
from profilers.documents import check, load_schema, read_json
from profilers.files import replacing
from profilers.jobs import file_digest

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# How a device-side reader knows the network: what rebuilds it, in this order.
MODEL_KEYS = ("name", "widths", "universal", "num_classes", "in_channels", "input_size")
_STATISTICS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "ci_low_ms", "ci_high_ms",
               "first_ms", "throughput_ips")  # fmt: skip
_MEMORY = ("peak_rss_bytes", "weight_bytes", "artifact_bytes", "device_mem_bytes")
_ENVIRONMENT = ("cpu", "cores", "threads", "governor", "host", "runtime", "runtime_version", "nvpmodel",
                "jetson_clocks")  # fmt: skip


def schema() -> dict[str, Any]:
    """The manifest JSON Schema: one file, shipped with the profiler so a device checks the same schema."""
    return load_schema("profilers", "manifest")


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
    chosen = next(rung for rung in rungs if rung["config_id"] == choice["config_id"])
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
            "precision": target.precision,
            "batch": target.batch,
            "threads": target.threads,
        },
        "precision": target.precision,
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
    if config.id not in exports:
        raise PlannerError(f"no exported ONNX for {label(row)} ({config.id})")
    return {
        "config_id": config.id,
        "label": label(row),
        "width": config.width,
        "channels": config.channels,
        "accuracy": {
            "top1": _finite(row["accuracy"]),
            "dataset": str(row.get("accuracy_dataset") or ""),
            "split": str(row.get("accuracy_split") or ""),
            "source": str(row.get("accuracy_source") or ""),
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
        "artifact": build_artifact(exports[config.id], target, out_dir / f"{label(row)}-{config.id}"),
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
        if target.precision in ("fp16", "int8"):
            command.insert(3, f"--{target.precision}")
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
    """A manifest checked against the schema, with every artifact present and matching its sha256."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    manifest = read_json(path, "manifest", error=PlannerError)
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise PlannerError(
            f"manifest {path} has schema_version {version!r}; this planner reads version {SCHEMA_VERSION}"
        )
    check(manifest, schema(), f"manifest {path}", PlannerError)
    base = path.parent.resolve()
    for rung in [manifest["configuration"], *manifest["ladder"]]:
        for entry in rung["artifact"]["files"]:
            file = (base / entry["path"]).resolve()
            if not file.is_relative_to(base):
                raise PlannerError(
                    f"manifest {path}: artifact path {entry['path']!r} leaves the manifest's directory"
                )
            if not file.is_file():
                raise PlannerError(f"manifest {path}: artifact {entry['path']} is missing")
            if file_digest(file) != entry["sha256"]:
                raise PlannerError(
                    f"manifest {path}: artifact {entry['path']} does not match its sha256 "
                    "(changed or corrupt); rebuild it with planner manifest"
                )
    return manifest
