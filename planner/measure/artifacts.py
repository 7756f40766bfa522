"""Artifacts for a target: each configuration exported once (ONNX, a torch program for the torch backend),
and the profiler jobs that measure them.

Exports are cached under RESULTS/artifacts/ by configuration id, input shape and weights, so a re-run, a
second target and the manifest (which ships the very file that was measured) reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.widths import WidthConfig
from profilers.jobs import Job, file_digest

if TYPE_CHECKING:
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
    """`model` itself, or a copy built at the target's input shape when the target overrides it."""
    if target.batch != 1:
        raise PlannerError(
            f"target {target.name} asks for batch {target.batch}; exports are batch 1 for now: set batch = 1"
        )
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
    from planner.models import create_model

    resized = create_model(
        model.name,
        widths=list(model.widths),
        num_classes=model.num_classes,
        input_size=height,
        in_channels=channels,
    )
    resized.load_state_dict(model.state_dict(), strict=True)
    return resized.eval()


def export_artifacts(
    model: SlimmableNetwork,
    configs: list[WidthConfig],
    out_dir: Path | str,
    target: Target,
    weights: str = "init",
) -> list[Artifact]:
    """Export each configuration once to OUT/artifacts/ (a torch program beside it for the torch backend)."""
    from planner.nn.counting import count
    from planner.nn.export import export_onnx, export_program

    directory = Path(out_dir) / ARTIFACTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    shape = (1, model.in_channels, model.input_size, model.input_size)
    shape_text = "x".join(map(str, shape))
    artifacts = []
    for config in configs:
        onnx = directory / f"{model.name}-{config.id}-{shape_text}-{weights}.onnx"
        if not onnx.is_file():
            export_onnx(model, config, onnx)
        program = onnx.with_suffix(".pt2")
        if target.backend == "torch" and not program.is_file():
            export_program(model, config, program)
        cost = count(model, config)
        artifacts.append(Artifact(config, onnx, shape, cost.macs, cost.params))
    return artifacts


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
            },
        )
        for artifact in artifacts
    ]


@dataclass(frozen=True)
class LadderExports:
    """What a manifest ships for one target: how to rebuild the network, and each rung's profiled ONNX."""

    model: dict[str, Any]
    onnx: dict[str, Path]


def export_ladder(
    model_name: str, configs: list[str], target: Target, checkpoint: Path, results_dir: Path
) -> LadderExports:
    """Every rung (configuration JSON) exported with the checkpoint's weights through RESULTS/artifacts."""
    from planner.nn.build import build_model
    from planner.nn.checkpoint import build_options

    model = model_for_target(build_model(model_name, checkpoint), target)
    validated = [model.validate(WidthConfig.from_json(text)) for text in configs]
    artifacts = export_artifacts(model, validated, results_dir, target, weights_key(checkpoint))
    described = {**build_options(model), "universal": bool(model.universal)}
    return LadderExports(described, {artifact.config.id: artifact.onnx for artifact in artifacts})
