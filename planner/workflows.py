"""Steps that cross stages, one function per command that needs several: the CLI calls these.

Selection (planner.plan) and manifests (planner.deploy) read only tables and files; what needs the
network itself (measuring a proposed width, exporting a ladder) is torch-side (planner.measure), and
this module is where the two meet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.plan.budgets import select_for_target
from planner.plan.pareto import latency_bound, read_tables
from planner.plan.select import Budget, Proposal, Selection, propose_width


@dataclass(frozen=True)
class Chosen:
    """A selection on one target, and for a universally slimmable model the width proposed beyond it."""

    target: Target
    selection: Selection
    proposal: Proposal | None = None


def select_on_target(
    target: Target,
    budget: Budget,
    results_dir: Path,
    *,
    model: str | None = None,
    allow_estimates: bool = False,
    measure: bool = True,
    checkpoint: Path | None = None,
    max_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Chosen:
    """`planner select`: the best measured configuration; for a US model also the interpolated widest
    width that should fit, measured on the target (when `measure`) and then selected like any other."""
    if not measure and (checkpoint is not None or max_seconds is not None):
        flag = "--checkpoint" if checkpoint is not None else "--max-seconds"
        raise PlannerError(f"{flag} is only used to measure a proposed width; drop it or --no-measure")
    if max_seconds is not None and not max_seconds > 0:
        raise PlannerError(f"--max-seconds must be positive, got {max_seconds:g}")
    selection = select_for_target(target, budget, results_dir, model, allow_estimates)
    proposal = universal_proposal(selection)
    if proposal is not None and measure:
        if log is not None:
            log(f"measuring the proposed width {proposal.width:g} on {target.name} ...")
        proposal = measure_proposal(proposal, selection, target, results_dir, checkpoint, max_seconds)
        selection = select_for_target(target, budget, results_dir, model, allow_estimates)
    return Chosen(target, selection, proposal)


def universal_proposal(selection: Selection) -> Proposal | None:
    """For a universally slimmable model, the interpolated widest width that should fit."""
    from planner.models import create_model, list_models

    name = selection.candidates["model"].iloc[0]
    if name not in list_models():
        return None
    model = create_model(name)
    if not model.universal:
        return None
    return propose_width(selection.candidates, selection.budget, model.width_range)


def measure_proposal(
    proposal: Proposal,
    selection: Selection,
    target: Target,
    results_dir: Path,
    checkpoint: Path | None,
    max_seconds: float | None = None,
) -> Proposal:
    """Profile the proposed width on the target (rows land in the results table like any other)."""
    from planner.measure.artifacts import weights_key
    from planner.measure.profile import profile_configs
    from planner.nn.build import build_model
    from profilers.jobs import Settings

    settings = Settings() if max_seconds is None else Settings(max_seconds=max_seconds)
    first = selection.candidates.iloc[0]
    shape = {}
    if checkpoint is None:  # rebuild at the measured input shape, e.g. 1x3x224x224
        parts = str(first["input_shape"]).split("x")
        if len(parts) != 4 or not all(part.isdigit() for part in parts):
            raise PlannerError(
                f"the results do not record the input shape of {first['model']}; pass --checkpoint "
                "to measure the proposed width, or --no-measure"
            )
        shape = {"in_channels": int(parts[1]), "input_size": int(parts[2])}
    network = build_model(first["model"], checkpoint, **shape)
    config = network.config(proposal.width)
    rows = profile_configs(
        network, [config], [target], results_dir, settings=settings, weights=weights_key(checkpoint)
    )
    rows = rows[(rows["config_id"] == config.id) & (rows["status"] == "ok")]
    if rows.empty:
        raise PlannerError(f"measuring width {proposal.width:g} on {target.name} failed; see {results_dir}")
    bound = float(latency_bound(rows, selection.budget.metric).iloc[-1])
    return dataclasses.replace(proposal, config_id=config.id, measured_bound_ms=bound)


@dataclass(frozen=True)
class Deployed:
    """One target of `planner manifest`: its selection, and the manifest written (None if nothing fit)."""

    target: Target
    selection: Selection
    manifest: Path | None


def write_manifests(
    targets: list[Target],
    budgets: list[Budget],
    checkpoint: Path,
    results_dir: Path,
    deploy_dir: Path,
    *,
    model: str | None = None,
    allow_estimates: bool = False,
) -> list[Deployed]:
    """`planner manifest`: per target, select under its budget, export the ladder with the checkpoint's
    weights (the files that were profiled) and write DEPLOY/<target>/manifest.json."""
    from planner.deploy.manifest import write_manifest
    from planner.measure.artifacts import export_ladder

    names = [target.name for target in targets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PlannerError(
            f"target {repeated[0]!r} is given more than once (aliases count as the same target)"
        )
    if deploy_dir.exists() and not deploy_dir.is_dir():
        raise PlannerError(f"--output {deploy_dir} is a file; give a directory")
    tables = read_tables(results_dir)
    selections = [
        select_for_target(target, budget, results_dir, model, allow_estimates, tables)
        for target, budget in zip(targets, budgets, strict=True)
    ]
    deployed = []
    for target, selection in zip(targets, selections, strict=True):
        path = None
        if selection.fits:
            name = selection.candidates["model"].iloc[0]
            exports = export_ladder(name, list(selection.ladder["config"]), target, checkpoint, results_dir)
            path = write_manifest(
                selection, target, exports.model, checkpoint, exports.onnx, deploy_dir / target.name
            )
        deployed.append(Deployed(target, selection, path))
    return deployed
