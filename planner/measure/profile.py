"""The planner side of profiling: configurations -> ONNX artifacts -> profiler jobs -> result rows.

Plain functions, so the CLI, the demo and the search code call the same stage:

    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    rows = profile_configs(model, [model.config(w) for w in model.widths], [load_target("cpu")], out)

Exports are cached under OUT/artifacts/ (by configuration id, input shape and weights), so a re-run or a
second target reuses them. Measured rows land in OUT/latency.parquet as they come, through the device-side
profiler (locally, over SSH, or on a Ray fleet); a re-run skips what OUT already holds unless `force`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.widths import WidthConfig
from profilers.jobs import Job, Settings, file_digest
from profilers.results import LatencyStore, load_latency, row_key
from profilers.scheduler import ProgressEvent, run_jobs

if TYPE_CHECKING:
    from planner.models.base import SlimmableNetwork

ARTIFACTS_DIR = "artifacts"
# Called with (target name, finished jobs, total jobs) whenever a job finishes; drives the progress bar.
Progress = Callable[[str, int, int], None]


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


def build_model(
    name: str | None = None,
    checkpoint: Path | str | None = None,
    **options: Any,
) -> SlimmableNetwork:
    """The slimmable model to profile.

    A planner checkpoint records its build options (name, widths, classes, input size, channels), so the
    file alone rebuilds the model; explicit `options` override them. A reference checkpoint (plain state
    dict) needs `name` and the options it was trained with. `name` may be a source
    (`torchvision:resnet18`, `net.py:build`, planner.models.sources): its plain state dict is the
    original network's weights, converted on load; its planner checkpoint is the converted network's.
    """
    import planner
    from planner.models.sources import build_source, is_source
    from planner.nn.calibrate import stored_calibrations
    from planner.nn.checkpoint import check_state_dict, read_checkpoint

    state, recorded = None, {}
    if checkpoint is not None:
        loaded = read_checkpoint(checkpoint)
        state, recorded = loaded["model"], dict(loaded["planner"])
    recorded_name = recorded.pop("name", None)
    if name and recorded_name and name != recorded_name:
        raise PlannerError(f"checkpoint {checkpoint} holds a {recorded_name}, not a {name}; drop --model")
    name = name or recorded_name
    if not name:
        raise PlannerError("which model? give --model NAME (or a checkpoint saved by planner)")
    universal = bool(options.pop("universal", None) or recorded.get("universal", False))
    known = {"widths", "num_classes", "input_size", "in_channels"}
    build = {key: value for key, value in recorded.items() if key in known}
    build.update({key: value for key, value in options.items() if value is not None})
    if is_source(name):
        # a plain state dict is the original network's weights: loaded, reordered and converted
        original = state if state is not None and not recorded else None
        reorder = state is None or original is not None  # planner's weights are reordered already
        model = build_source(name, universal=universal, reorder=reorder, state=original, **build)
        state = None if original is not None else state
    elif universal:
        raise PlannerError(f"--universal is for converted networks; {name} is built universal or not")
    else:
        model = planner.create_model(name, **build)
    if state is not None:
        check_state_dict(model, state)
        model.load_state_dict(state, strict=True)
        model.calibrations = stored_calibrations(model, recorded)
    return model.eval()


def weights_key(checkpoint: Path | str | None) -> str:
    """Short content hash of the checkpoint (exports of different weights never share a cache entry)."""
    return file_digest(Path(checkpoint))[:8] if checkpoint is not None else "init"


def configurations(
    model: SlimmableNetwork, widths: list[float] | None = None, config_files: list[Path] | None = None
) -> list[WidthConfig]:
    """The configurations to profile: the given widths, the given JSON files, or every trained width."""
    configs = [model.config(width) for width in widths or []]
    for path in config_files or []:
        config = WidthConfig.load(path)
        if config.model != model.name:
            raise PlannerError(f"{path} is a configuration of {config.model}, not of {model.name}")
        configs.append(model.validate(config))
    if not configs:
        configs = [model.config(width) for width in model.widths]
    unique = {config.id: config for config in configs}
    return list(unique.values())


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
    import planner

    resized = planner.create_model(
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
    from planner.models.sources import file_name
    from planner.nn.counting import count
    from planner.nn.export import export_onnx, export_program

    directory = Path(out_dir) / ARTIFACTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    shape = (1, model.in_channels, model.input_size, model.input_size)
    shape_text = "x".join(map(str, shape))
    artifacts = []
    for config in configs:
        onnx = directory / f"{file_name(model.name)}-{config.id}-{shape_text}-{weights}.onnx"
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


def pending_jobs(jobs: list[Job], out_dir: Path | str, force: bool = False) -> list[Job]:
    """The jobs OUT has no measured `ok` row for (estimates do not count as measured)."""
    if force:
        return list(jobs)
    measured = {row_key(row) for _, row in measured_rows(load_latency(Path(out_dir))).iterrows()}
    return [job for job in jobs if row_key(job.identity()) not in measured]


def measured_rows(table: pd.DataFrame) -> pd.DataFrame:
    estimated = table["estimated"].fillna(False).astype(bool)
    return table[(table["status"] == "ok") & ~estimated]


def store_rows(out_dir: Path | str, rows: pd.DataFrame) -> None:
    """Merge rows measured elsewhere (a device, a Ray node) into OUT, one atomic write per row."""
    store = LatencyStore(Path(out_dir))
    for _, row in rows.iterrows():
        store.add({column: value for column, value in row.items() if not _missing(value)})


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are values
        return False


def profile_configs(
    model: SlimmableNetwork,
    configs: list[WidthConfig],
    targets: list[Target],
    out_dir: Path | str,
    *,
    settings: Settings | None = None,
    force: bool = False,
    ray_address: str | None = None,
    weights: str = "init",
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Measure every configuration on every target; return their measured rows (old and new) from OUT.

    Local targets run one after another on this machine (never two measurements at once); SSH targets
    run on their host; with `ray_address` every target runs on its fleet node, all in parallel.
    """
    from planner.measure.fleet import run_fleet
    from planner.measure.remote import require_host, run_remote

    out_dir = Path(out_dir)
    settings = settings or Settings()
    report = progress or (lambda target, done, total: None)
    say = log or (lambda line: None)
    if not ray_address:
        for target in targets:
            require_host(target)
    jobs_by_target = {}
    for target in targets:
        target_model = model_for_target(model, target)
        artifacts = export_artifacts(target_model, configs, out_dir, target, weights)
        jobs_by_target[target.name] = make_jobs(artifacts, target)
    todo = {name: pending_jobs(jobs, out_dir, force) for name, jobs in jobs_by_target.items()}
    for name, jobs in jobs_by_target.items():
        report(name, len(jobs) - len(todo[name]), len(jobs))

    if ray_address:

        def arrived(name: str, rows: pd.DataFrame) -> None:
            store_rows(out_dir, rows)
            report(name, len(jobs_by_target[name]), len(jobs_by_target[name]))

        run_fleet({name: jobs for name, jobs in todo.items() if jobs}, settings, ray_address, arrived)
    else:
        for target in targets:
            jobs, total = todo[target.name], len(jobs_by_target[target.name])
            if not jobs:
                continue
            counter = _Counter(target.name, total - len(jobs), total, report)
            if target.is_remote:

                def device_line(line: str, counter: _Counter = counter) -> None:
                    if _DEVICE_EVENT.match(line):
                        counter.advance()
                    say(line)

                store_rows(out_dir, run_remote(jobs, target, settings, device_line))
            else:
                run_jobs(jobs, out_dir, settings, force=True, progress=counter.on_event)
    wanted = {row_key(job.identity()) for jobs in jobs_by_target.values() for job in jobs}
    table = load_latency(out_dir)
    table = table[~table["estimated"].fillna(False).astype(bool)]
    return table[[row_key(row) in wanted for _, row in table.iterrows()]].reset_index(drop=True)


# A device-side progress line for a finished or skipped job: "[3/8] name backend/device: ..."
_DEVICE_EVENT = re.compile(r"^\[\d+/\d+\] ")


class _Counter:
    """Turns profiler events (local) or device lines (SSH) into done/total progress for one target."""

    def __init__(self, target: str, done: int, total: int, report: Progress) -> None:
        self.target, self.done, self.total, self.report = target, done, total, report

    def advance(self) -> None:
        self.done = min(self.total, self.done + 1)
        self.report(self.target, self.done, self.total)

    def on_event(self, event: ProgressEvent) -> None:
        if event.kind in ("finished", "skipped"):
            self.advance()


def estimate_configs(
    model: SlimmableNetwork, configs: list[WidthConfig], targets: list[Target], out_dir: Path | str
) -> tuple[pd.DataFrame, list[str]]:
    """Roofline rows for every configuration on every target, stored in OUT with `estimated=True`.

    Returns the rows and the keys skipped because OUT holds a measurement with the same key: an
    estimate never replaces a measurement.
    """
    from planner.measure.estimate import estimate_rows

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = {row_key(row) for _, row in measured_rows(load_latency(out_dir)).iterrows()}
    store = LatencyStore(out_dir)
    kept, skipped = [], []
    for target in targets:
        target_model = model_for_target(model, target)
        for row in estimate_rows(target_model, configs, target):
            if row_key(row) in measured:
                skipped.append(f"{row['target']}/{row['config_id']}")
                continue
            store.add(row)
            kept.append(row)
    return pd.DataFrame(kept), skipped
