"""Artifacts for a target: each configuration exported once (ONNX, a torch program for the torch backend),
and the profiler jobs that measure them.

Exports are cached under RESULTS/artifacts/ by configuration id, input shape and weights, so a re-run, a
second target and the manifest (which ships the very file that was measured) reuse them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.plan.select import label, rung_key
from planner.widths import WidthConfig
from profilers.jobs import Job, file_digest

if TYPE_CHECKING:
    from planner.measure.quantize import Calibration
    from planner.models.base import SlimmableNetwork

ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class Artifact:
    """A configuration exported for profiling, with the cost figures that go into its rows."""

    config: WidthConfig
    onnx: Path
    input_shape: tuple[int, ...]
    macs: int
    params: int

    @property
    def shape_text(self) -> str:
        return "x".join(str(size) for size in self.input_shape)


def weights_key(checkpoint: Path | str | None) -> str:
    """Short content hash of the checkpoint (exports of different weights never share a cache entry)."""
    return file_digest(Path(checkpoint))[:8] if checkpoint is not None else "init"


def model_for_target(model: SlimmableNetwork, target: Target) -> SlimmableNetwork:
    """`model` itself, or a copy built at the target's input shape when the target overrides it.

    A converted network is rebuilt from its source (`torchvision:`, `timm:`, a user's file) at the new
    size and takes the same (already reordered) weights; one whose weights or channel groups depend on
    the input size (a linear layer over a flattened map, a ViT's position embedding) cannot be resized.
    """
    if target.input_shape is None:
        return model
    _, channels, height, width = target.input_shape
    if height != width:
        raise PlannerError(f"target {target.name}: input_shape must be square for {model.name}")
    if (channels, height) == (model.in_channels, model.input_size):
        return model
    if channels != model.in_channels:
        raise PlannerError(
            f"target {target.name} feeds {channels} input channels but {model.name} takes {model.in_channels}"
        )
    resized = _rebuilt(model, height, f"target {target.name} ({height}x{width})")
    resized.load_state_dict(model.state_dict(), strict=True)
    resized.calibrations = model.calibrations
    if hasattr(model, "permutation"):
        resized.permutation = model.permutation
    return resized.eval()


def _rebuilt(model: SlimmableNetwork, size: int, why: str) -> SlimmableNetwork:
    """The same network built at input size `size`, with fresh weights of the same shapes."""
    source = getattr(model, "source", None)
    if source is None and getattr(model, "conversion_report", None) is not None:
        raise PlannerError(
            f"{why}: {model.name} was converted in Python (planner.slimmable) and records no source to "
            f"rebuild it at {size}x{size}; convert it with an example input of that size"
        )
    if source is None:
        from planner.models import create_model

        return create_model(
            model.name,
            widths=list(model.widths),
            num_classes=model.num_classes,
            input_size=size,
            in_channels=model.in_channels,
        )
    from planner.models.sources import build_source

    try:
        resized = build_source(
            source["source"],
            widths=list(model.widths),
            num_classes=source.get("num_classes"),
            input_size=size,
            in_channels=model.in_channels,
            universal=model.universal,
            reorder=False,  # the weights it takes are reordered already
            channel_multiple=model.channel_multiple,
        )
    except PlannerError as error:
        raise PlannerError(f"{why}: cannot rebuild {model.name} at {size}x{size}: {error}") from None
    if set(resized.groups) != set(model.groups):
        changed = sorted(set(resized.groups) ^ set(model.groups))[0]
        raise PlannerError(
            f"{why}: {model.name} cannot be resized from {model.input_size} to {size}: its channel group "
            f"{changed!r} is slimmable at one size only"
        )
    theirs = resized.state_dict()
    for key, value in model.state_dict().items():
        if key not in theirs or theirs[key].shape != value.shape:
            shape = list(theirs[key].shape) if key in theirs else "absent"
            raise PlannerError(
                f"{why}: {model.name} cannot be resized from {model.input_size} to {size}: {key} is "
                f"{list(value.shape)} at {model.input_size}, {shape} at {size}"
            )
    return resized


def export_artifacts(
    model: SlimmableNetwork,
    configs: list[WidthConfig],
    out_dir: Path | str,
    target: Target,
    weights: str = "init",
    batch: int = 1,
) -> list[Artifact]:
    """Export each configuration once to OUT/artifacts/ (a torch program beside it for the torch backend),
    with a static batch dimension of `batch` (the file name carries the shape)."""
    from planner.models.sources import file_name
    from planner.nn.counting import count
    from planner.nn.export import export_onnx, export_program

    directory = Path(out_dir) / ARTIFACTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    shape = (batch, model.in_channels, model.input_size, model.input_size)
    shape_text = "x".join(map(str, shape))
    artifacts = []
    for config in configs:
        onnx = directory / f"{file_name(model.name)}-{config.id}-{shape_text}-{weights}.onnx"
        if not onnx.is_file():
            if batch == 1:
                export_onnx(model, config, onnx)
            else:
                _export_batched(model, config, onnx, shape)
        program = onnx.with_suffix(".pt2")
        if target.backend == "torch" and not program.is_file():
            export_program(model, config, program)
        cost = count(model, config)
        artifacts.append(Artifact(config, onnx, shape, cost.macs, cost.params))
    return artifacts


def quantize_artifacts(
    artifacts: list[Artifact], target: Target, calibration: Calibration | None
) -> tuple[list[Artifact], list[str]]:
    """The int8 (QDQ) version of each artifact for the target's backend, and why any could not be made.

    A configuration whose quantization fails is left out (its FP32 rows are still measured); the
    messages name the file and the op the quantizer stopped at.
    """
    from planner.measure.quantize import checked_calibration, quantize_onnx

    if calibration is None:
        raise PlannerError(
            f"target {target.name} lists int8: give --calibration-data (a --data source: digits, "
            "digits-distorted, an image folder or an .npz) to calibrate the quantization"
        )
    quantized, failures = [], []
    for artifact in artifacts:
        checked_calibration(calibration, artifact.input_shape)
        try:
            onnx = quantize_onnx(artifact.onnx, calibration, target.backend)
        except PlannerError as error:
            failures.append(str(error))
            continue
        quantized.append(dataclasses.replace(artifact, onnx=onnx))
    return quantized, failures


def _export_batched(model: SlimmableNetwork, config: WidthConfig, onnx: Path, shape: tuple[int, ...]) -> None:
    import torch

    from planner.nn.export import export_module
    from planner.nn.materialize import materialize

    export_module(materialize(model, config), torch.zeros(shape), onnx)


def make_jobs(artifacts: list[Artifact], target: Target) -> list[Job]:
    """One profiler job per artifact, carrying the identity and cost columns of its result row."""
    return [
        Job(
            onnx=artifact.onnx,
            backend=target.backend,
            device=target.device,
            precision=target.precision,
            threads=target.threads,
            batch=target.batch,
            metadata={
                "model": artifact.config.model,
                "config_id": artifact.config.id,
                "width": artifact.config.width,
                "config": artifact.config.to_json(indent=None),
                "target": target.name,
                "input_shape": artifact.shape_text,
                "macs": artifact.macs,
                "params": artifact.params,
                **_quantization_columns(artifact),
            },
        )
        for artifact in artifacts
    ]


def _quantization_columns(artifact: Artifact) -> dict[str, Any]:
    """For a quantized artifact: its file, scheme and calibration digest (the manifest copies them)."""
    from planner.measure.quantize import quantization_record

    record = quantization_record(artifact.onnx)
    if not record:
        return {}
    return {
        "artifact": artifact.onnx.name,
        "quantization": record.get("scheme"),
        "calibration_sha256": record.get("calibration_sha256"),
    }


@dataclass(frozen=True)
class LadderExports:
    """What a manifest ships for one target: how to rebuild the network, and each rung's profiled ONNX."""

    model: dict[str, Any]
    onnx: dict[str, Path]


def export_ladder(ladder: pd.DataFrame, target: Target, checkpoint: Path, results_dir: Path) -> LadderExports:
    """Every rung of a selection's ladder exported with the checkpoint's weights, through the export cache
    (RESULTS/artifacts), keyed by `rung_key`. An int8 rung is the quantized file its latency row names
    (what was measured and evaluated)."""
    from planner.nn.build import build_model
    from planner.nn.checkpoint import build_options

    model = model_for_target(build_model(str(ladder["model"].iloc[0]), checkpoint), target)
    configs = [model.validate(WidthConfig.from_json(text)) for text in ladder["config"]]
    fp32 = {}
    for batch in sorted({_batch(b) for b in ladder.get("batch", [1])}):
        artifacts = export_artifacts(model, configs, results_dir, target, weights_key(checkpoint), batch)
        fp32.update({(artifact.config.id, batch): artifact.onnx for artifact in artifacts})
    onnx = {}
    for _, row in ladder.iterrows():
        path = fp32[(row["config_id"], _batch(row.get("batch")))]
        if row.get("precision") == "int8":
            named = row.get("artifact")
            path = path.parent / str(named) if isinstance(named, str) and named else None
            if path is None or not path.is_file():
                raise PlannerError(
                    f"the int8 file of {label(row)} that was profiled is not in {results_dir}/artifacts; "
                    f"re-run planner profile --target {target.name} with the same --calibration-data"
                )
        onnx[rung_key(row)] = path
    described = {**build_options(model), "universal": bool(model.universal)}
    return LadderExports(described, onnx)


def _batch(value: Any) -> int:
    return 1 if value is None or pd.isna(value) else int(value)
