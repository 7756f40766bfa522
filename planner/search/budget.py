"""LeGR end to end, as `planner legr learn` and `planner legr config` run it (and the benchmark too).

`learn_ranking` learns the per-layer coefficients on a checkpoint and data; `config_for_budget` turns
them into the configuration for one budget. A latency budget is planned with the target's latency table
and then fitted by measurement (`legr.plan_measured`), so the table's error neither wastes nor breaks
the budget. With a fitness (validation loss on the user's data) the widest uniform width that fits is
the rival, and the plan is kept only if its loss is lower (`legr.prefer_uniform`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.search.legr import (
    Fitness,
    LearnedRanking,
    MeasuredPlan,
    SearchSettings,
    WidthPlanner,
    evolve,
    macs_cost,
    plan_measured,
    prefer_uniform,
)
from planner.search.lut import LatencyTable, table_path
from planner.widths import WidthConfig
from profilers.jobs import file_digest

if TYPE_CHECKING:
    from planner.models.base import SlimmableNetwork

Log = Callable[[str], None]


def fitness_on(
    model: SlimmableNetwork,
    data: str,
    calibration_batches: int = 5,
    batch_size: int = 64,
    finetune_steps: int = 0,
    seed: int = 0,
) -> Fitness:
    """LeGR's fitness on a dataset: validation loss after BN calibration (and an optional fine-tune)."""
    from planner.accuracy.data import load_dataset

    dataset = load_dataset(data, image_size=model.input_size)
    if dataset.in_channels != model.in_channels:
        raise PlannerError(
            f"{data} has {dataset.in_channels}-channel images, {model.name} takes {model.in_channels}"
        )
    return Fitness(
        model,
        dataset.batches("calibration", batch_size),
        dataset.batches("val", batch_size),
        calibration_batches,
        finetune_steps,
        dataset.batches("train", batch_size, shuffle=True, seed=seed) if finetune_steps else (),
    )


def latency_table_for(
    model: SlimmableNetwork, target: Target, results_dir: Path, lut: Path | None = None
) -> LatencyTable:
    """The target's latency table of `model` (RESULTS/lut/<target>-<model>.json unless `lut`), checked."""
    path = lut or table_path(results_dir, target.name, model.name)
    if lut is None and not path.is_file():
        raise PlannerError(
            f"no latency table at {path}: build it with "
            f"planner lut build --target {target.name} --model {model.name}"
        )
    return LatencyTable.load(path).check(model, target)


@dataclass(frozen=True)
class Learned:
    """A learned ranking and what the search cost."""

    ranking: LearnedRanking
    loss: float
    evaluations: int
    distinct: int
    wall_s: float


def learn_ranking(
    model: SlimmableNetwork,
    checkpoint: Path,
    data: str,
    fitness: Fitness,
    *,
    share: float = 0.5,
    latency: tuple[Target, LatencyTable] | None = None,
    settings: SearchSettings | None = None,
    granularity: int | None = None,
    min_fraction: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> Learned:
    """LeGR's coefficients learned by regularized evolution at `share` of the full cost (MACs, or the
    target's predicted latency with `latency`); the ranking records how it was learned."""
    if not 0 < share <= 1:
        raise PlannerError(f"--budget is a share of the full model's cost in (0, 1], got {share}")
    settings = settings or SearchSettings()
    cost, cost_info = macs_cost(model), {"kind": "macs"}
    if latency is not None:
        target, table = latency
        cost, cost_info = (
            table.predict_ms,
            {"kind": "latency_ms", "target": target.name, "lut": table.fingerprint},
        )
    widths = WidthPlanner(model, cost, granularity, min_fraction)
    target_cost = share * widths.full_cost()
    if target_cost < widths.smallest_cost():
        raise PlannerError(
            f"--budget {share:g} ({target_cost:g}) is below {model.name}'s smallest configuration "
            f"({widths.smallest_cost():g}): raise it"
        )
    started = time.perf_counter()
    result = evolve(widths, target_cost, fitness, np.random.default_rng(seed), settings, progress)
    wall_s = time.perf_counter() - started
    info = {
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": file_digest(checkpoint)},
        "data": data,
        "cost": cost_info,
        "budget": {"share": share, "value": target_cost},
        "search": {
            **dataclasses.asdict(settings),
            "seed": seed,
            "finetune_steps": fitness.finetune_steps,
            "calibration_batches": fitness.calibration_batches,
        },
        "validation_loss": result.loss,
        "config": result.config.to_dict(),
        "evaluations": result.evaluations,
        "distinct_configurations": len(fitness.cache),
        "wall_s": round(wall_s, 2),
        "history": result.history,
    }
    ranking = LearnedRanking(model.name, result.coefficients, widths.granularity, min_fraction, info)
    return Learned(ranking, result.loss, result.evaluations, len(fitness.cache), wall_s)


@dataclass(frozen=True)
class BudgetFit:
    """The configuration chosen for a budget, and how: the plan, its rival, and their losses."""

    config: WidthConfig
    plan: WidthConfig
    uniform: WidthConfig | None = None  # the rival uniform width (only with a fitness)
    losses: dict[str, float] = field(default_factory=dict)  # "plan", "uniform": validation loss
    measured: dict[str, dict[str, float]] = field(default_factory=dict)  # config id -> p50_ms, p90_ms
    note: str = ""
    measurement: MeasuredPlan | None = None  # how the plan was fitted by measurement, if it was

    @property
    def fits(self) -> bool:
        """False only when every measured plan missed the budget."""
        return self.measurement is None or self.measurement.fits


def fit_to_budget(
    plan_for: Callable[[float], WidthConfig],
    budget: float,
    *,
    measure: Callable[[WidthConfig], float] | None = None,
    max_plans: int = 6,
    uniform: Callable[[], WidthConfig | None] | None = None,
    fitness: Callable[[WidthConfig], float] | None = None,
) -> BudgetFit:
    """The plan for `budget` (fitted by `measure` when given, else as predicted), and with a `fitness`
    the rival `uniform()` width kept instead unless the plan's loss is lower.

    When no measured plan fits, the last one measured is returned with `fits` False and no rival.
    """
    measurement = None
    if measure is not None:
        measurement = plan_measured(plan_for, budget, measure, max_plans)
        config = measurement.config
        if not measurement.fits:
            return BudgetFit(config, config, measurement=measurement)
    else:
        config = plan_for(budget)
    if fitness is None or uniform is None:
        return BudgetFit(config, config, measurement=measurement)
    rival = uniform()
    if rival is None:
        note = "no uniform width measured under the budget: keeping the plan"
        return BudgetFit(config, config, note=note, measurement=measurement)
    if rival == config:
        note = f"the plan is the uniform width {rival.label}"
        return BudgetFit(config, config, rival, note=note, measurement=measurement)
    chosen = prefer_uniform(config, rival, fitness)
    losses = {"plan": fitness(config), "uniform": fitness(rival)}
    kept = "the plan" if chosen == config else rival.label
    note = (
        f"validation loss: plan {losses['plan']:.4f}, uniform {rival.label} {losses['uniform']:.4f}; "
        f"keeping {kept}"
    )
    return BudgetFit(chosen, config, rival, losses, note=note, measurement=measurement)


def config_for_budget(
    model: SlimmableNetwork,
    ranking: LearnedRanking,
    results_dir: Path,
    *,
    max_latency_ms: float | None = None,
    max_macs: float | None = None,
    target: Target | None = None,
    table: LatencyTable | None = None,
    verify: bool = True,
    max_plans: int = 6,
    fitness: Fitness | None = None,
) -> BudgetFit:
    """`planner legr config`: the learned ranking's configuration for a MACs or a latency budget.

    A latency budget needs the target and its table; with `verify` every plan is measured on the target
    (rows land in RESULTS like any profile) and the measured p90 decides.
    """

    _check_budget(max_latency_ms, max_macs, has_target=target is not None and table is not None)
    if max_macs is not None:
        if not max_macs > 0:
            raise PlannerError(f"--max-macs must be positive, got {max_macs:g}")
        widths = ranking.planner_for(model, macs_cost(model))
        plan_for = partial(widths.config_for, ranking.coefficients)
        return fit_to_budget(
            plan_for, max_macs, uniform=lambda: widths.uniform_for(max_macs), fitness=fitness
        )
    widths = ranking.planner_for(model, table.predict_ms)
    plan_for = partial(widths.config_for, ranking.coefficients)
    if not verify:
        return fit_to_budget(
            plan_for, max_latency_ms, uniform=lambda: widths.uniform_for(max_latency_ms), fitness=fitness
        )
    measured: dict[str, dict[str, float]] = {}

    def measured_p90(config: WidthConfig) -> float:
        if config.id not in measured:
            measured[config.id] = _latency_ms(model, config, target, results_dir)
        return measured[config.id]["p90_ms"]

    def fitted_uniform() -> WidthConfig | None:
        uniform = plan_measured(widths.uniform_for, max_latency_ms, measured_p90, max_plans)
        return uniform.config if uniform.fits else None

    fit = fit_to_budget(
        plan_for,
        max_latency_ms,
        measure=measured_p90,
        max_plans=max_plans,
        uniform=fitted_uniform,
        fitness=fitness,
    )
    if not fit.fits:
        raise PlannerError(
            f"no configuration verified under {max_latency_ms:g} ms on {target.name}: the last one measured "
            f"p90 {fit.measurement.measured:.3f} ms (predicted {table.predict_ms(fit.plan):.3f} ms); "
            "raise the budget"
        )
    return dataclasses.replace(fit, measured=measured)


def _check_budget(max_latency_ms: float | None, max_macs: float | None, has_target: bool) -> None:
    """Exactly one budget, and a latency budget only with a device to measure it on."""
    if (max_latency_ms is None) == (max_macs is None):
        raise PlannerError("give exactly one budget: --max-latency (with --target) or --max-macs")
    if max_latency_ms is not None and not has_target:
        raise PlannerError("--max-latency needs --target: latency is a property of a device")


def _latency_ms(
    model: SlimmableNetwork, config: WidthConfig, target: Target, results_dir: Path
) -> dict[str, float]:
    from planner.measure.profile import profile_configs

    rows = profile_configs(model, [config], [target], results_dir)
    rows = rows[(rows["config_id"] == config.id) & (rows["status"] == "ok")]
    if rows.empty:
        raise PlannerError(
            f"measuring {config.label} on {target.name} failed; see {results_dir}/latency.parquet"
        )
    row = rows.iloc[-1]
    return {"p50_ms": float(row["p50_ms"]), "p90_ms": float(row["p90_ms"])}


@dataclass
class CoefficientsPlan:
    """What `planner legr config` prints: the network it planned for, the fit, and the table it used."""

    model: SlimmableNetwork
    fit: BudgetFit
    table: LatencyTable | None


def config_from_coefficients(
    coefficients: Path,
    results_dir: Path,
    *,
    model_name: str | None = None,
    checkpoint: Path | None = None,
    max_latency_ms: float | None = None,
    max_macs: float | None = None,
    target: Target | None = None,
    lut: Path | None = None,
    verify: bool = True,
    max_plans: int = 6,
    data: str | None = None,
    log: Log = print,
) -> CoefficientsPlan:
    """`planner legr config` from its files: the coefficients, the weights they were learned on (or the
    ones given), the target's table; with `data`, the loss the coefficients were learned with decides
    between the plan and the widest uniform width that fits."""
    from planner.measure.artifacts import model_for_target
    from planner.nn.build import build_model

    _check_budget(max_latency_ms, max_macs, has_target=target is not None)
    ranking = LearnedRanking.load(coefficients)
    checkpoint = checkpoint or recorded_checkpoint(ranking, coefficients)
    if checkpoint is not None and not checkpoint.is_file():
        raise PlannerError(f"checkpoint {checkpoint} does not exist")
    recorded = (ranking.info.get("checkpoint") or {}).get("sha256")
    if checkpoint is not None and recorded and file_digest(checkpoint) != recorded:
        log(f"note: {checkpoint} is not the checkpoint the coefficients were learned on")
    model = build_model(model_name, checkpoint)
    table = None
    if max_latency_ms is not None:
        model = model_for_target(model, target)
        table = latency_table_for(model, target, results_dir, lut)
    fitness = None
    if data is not None:
        learned = ranking.info.get("search") or {}
        fitness = fitness_on(model, data, int(learned.get("calibration_batches", 5)))
    fit = config_for_budget(
        model,
        ranking,
        results_dir,
        max_latency_ms=max_latency_ms,
        max_macs=max_macs,
        target=target if max_latency_ms is not None else None,
        table=table,
        verify=verify,
        max_plans=max_plans,
        fitness=fitness,
    )
    return CoefficientsPlan(model, fit, table)


def recorded_checkpoint(ranking: LearnedRanking, coefficients: Path) -> Path | None:
    """The checkpoint the coefficients were learned on, as they record it (None if they do not)."""
    recorded = (ranking.info.get("checkpoint") or {}).get("path")
    if not recorded:
        return None
    if not Path(recorded).is_file():
        raise PlannerError(
            f"the checkpoint {coefficients} was learned on ({recorded}) is gone: give --checkpoint"
        )
    return Path(recorded)
