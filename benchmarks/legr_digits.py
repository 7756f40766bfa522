"""Issue 7 benchmarks (b) and (c) on the digits model: LeGR per-layer widths vs uniform widths, and the
wall time of the evolution with LUT-predicted latency.

1. Train us_cnn_small (digits upscaled to 16x16, any width in 0.25-1.0) with planner.accuracy.train
   and per-layer random sandwich members, so the per-layer mixes LeGR picks are in the training distribution
   (`--model s_cnn_small` trains the S-Net at its 4 widths instead, the earlier setting).
2. Build its latency table on the `cpu` target (onnxruntime CPU, one thread by default) and measure the
   uniform widths: every 0.125 step for the US model (each step changes the 8-channel rounding of some
   layer), the trained widths for the S-Net. Latency depends on the structure only: this is done once.
3. Per training seed: learn LeGR coefficients once, at 50% of the full model's predicted latency as
   `planner legr learn` does (`--learn-at`; regularized evolution, LUT latency as the cost, fitness =
   validation loss on the first half of the val split after BN calibration), timed: (c).
4. For three latency budgets (the measured p50 of 0.5x and 0.75x, and a tight one halfway between 0.25x
   and 0.5x), plan a configuration with the coefficients, measuring the plans (the table guides, the
   measurement decides). Every compared configuration, uniform or LeGR, has its BN statistics calibrated
   on the same calibration batches; its top-1 and cross-entropy on the *second* half of val are compared
   with the widest uniform width whose measured p50 fits: (b). The held-out half is small (180 images
   of digits), so the result is given per seed and as the mean over seeds. Trained weights are kept in
   --work, so a re-run only re-plans and re-scores.
5. What the product answers, scored on the report half against the same uniform width: `planner legr
   config --data` (the plan only if its fitness beats that width's) and `planner select` over the
   uniform widths and that configuration, each with its measured p50 and its top-1 on the search half.

Plain digits saturates (every width within ~1 point of 98%), so `--data digits-distorted`
(planner.accuracy.data: three rotated, scaled, shifted and noisy copies of each image, ~94% at 0.25x vs
~96% at 1x) gives the widths something to win; its report half holds 540 images per seed instead of 180.

    python benchmarks/legr_digits.py --work /tmp/legr_plain1 --out results
    python benchmarks/legr_digits.py --data digits-distorted --seeds 0,1,2,3,4 --work /tmp/legr_distorted1 \
        --out results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import planner
from planner.accuracy.data import Dataset, load_dataset
from planner.accuracy.train import train
from planner.errors import PlannerError
from planner.measure.targets import Target, load_target
from planner.nn.build import load_checkpoint
from planner.nn.calibrate import calibrate
from planner.nn.checkpoint import save_checkpoint
from planner.plan.select import Budget, select
from planner.search.budget import fit_to_budget
from planner.search.legr import (
    Coefficients,
    Fitness,
    LearnedRanking,
    SearchSettings,
    WidthPlanner,
    accuracy,
    evolve,
    validation_loss,
)
from planner.search.lut import LatencyTable, table_path
from planner.search.lut_runs import build_table, measure_configs
from planner.widths import WidthConfig


def learn_at(value: str) -> str | float:
    """`--learn-at`: 'middle' or a share of the full model's predicted latency in (0, 1]."""
    if value == "middle":
        return value
    try:
        share = float(value)
    except ValueError:
        share = 0.0
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"takes 'middle' or a share in (0, 1], got {value!r}")
    return share


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["us_cnn_small", "s_cnn_small"], default="us_cnn_small")
    parser.add_argument("--data", choices=["digits", "digits-distorted"], default="digits")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="0,1,2", help="training (and search) seeds, comma-separated")
    parser.add_argument("--uniform-step", type=float, default=0.125, help="uniform grid of a US model")
    parser.add_argument(
        "--granularity",
        type=int,
        default=8,
        help="channel step of the per-layer training and of LeGR's plans (8: the uniform widths' rounding; "
        "onnxruntime CPU runs other counts slower than the table interpolates)",
    )
    parser.add_argument("--plans", type=int, default=6, help="measured plans per budget at most")
    parser.add_argument("--image-size", type=int, default=16, help="digits upscaled from 8x8")
    parser.add_argument(
        "--learn-at",
        type=learn_at,
        default=0.5,
        help="budget the coefficients are learned at: a share of the full model's predicted latency (0.5: "
        "legr learn's default) or 'middle', the middle of the three compared budgets (0.5x's latency; "
        "LeGR's own scripts learn inside the range they evaluate)",
    )
    parser.add_argument("--generations", type=int, default=400)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--sample", type=int, default=16)
    parser.add_argument("--target", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="the target's inference threads (1: on a 2-core VM a two-thread p50 depends on whether the "
        "other core is free at that moment)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/legr_digits"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    return parser.parse_args()


@dataclass
class Bench:
    """What every seed shares: data, target, latency table, uniform widths and their latency, budgets."""

    args: argparse.Namespace
    dataset: Dataset
    target: Target
    table: LatencyTable
    uniform_widths: list[float]
    uniform_ms: dict[float, float]
    budgets: dict[str, float]

    def __post_init__(self) -> None:
        images, labels = self.dataset.splits["val"]
        half = len(labels) // 2
        self.search_val = [(images[:half], labels[:half])]
        self.report_val = [(images[half:], labels[half:])]
        self.calibration = self.dataset.batches("calibration", 64)

    def learn_budget(self, full_cost: float) -> float:
        """The latency the coefficients are learned at (they are then reused for every budget)."""
        if self.args.learn_at == "middle":
            return self.budgets["0.5x's latency"]
        return self.args.learn_at * full_cost


@dataclass
class Scores:
    """A calibrated configuration on the two halves of the val split."""

    hits: torch.Tensor  # report half: which images are right
    loss: float  # report half: cross-entropy
    search_top1: float
    search_loss: float

    @property
    def top1(self) -> float:
        return 100.0 * float(self.hits.float().mean())


@dataclass
class SeedRun:
    rows: list[dict]
    uniform_top1: dict[float, float]
    uniform_loss: dict[float, float]
    train_s: float
    evolve_s: float
    evaluations: int
    distinct: int
    best_loss: float
    identity_loss: float
    ranking: LearnedRanking


def pick_versus(uniform_hits: torch.Tensor, name: str, picked: Scores) -> dict:
    """A picked configuration's report-half top-1 and the images only it or only the uniform width gets."""
    return {
        f"{name}_top1": picked.top1,
        f"{name}_only": int((picked.hits & ~uniform_hits).sum()),
        f"uniform_only_vs_{name}": int((uniform_hits & ~picked.hits).sum()),
    }


def versus_uniform(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per budget, over seeds: what was picked how often, and the pick against the uniform width."""
    table = frame.groupby("budget", sort=False).agg(
        budget_ms=("budget_ms", "first"),
        picks=(f"{name}_pick", lambda picks: ", ".join(f"{k} {n}" for k, n in picks.value_counts().items())),
        top1=(f"{name}_top1", "mean"),
        uniform_top1=("uniform_top1", "mean"),
        only=(f"{name}_only", "sum"),
        uniform_only=(f"uniform_only_vs_{name}", "sum"),
    )
    table.insert(3, "top1_diff", table["top1"] - table["uniform_top1"])
    return table.rename(columns={"top1": f"{name}_top1", "only": f"{name}_only"})


def run_seed(bench: Bench, seed: int) -> SeedRun:
    """Train, learn the ranking, plan each budget and score every compared configuration, for one seed."""
    args = bench.args
    torch.manual_seed(seed)
    model = planner.create_model(args.model, input_size=args.image_size)
    per_layer = model.universal  # per-layer random training needs US batch norm
    granularity = args.granularity if per_layer else None
    trained = args.work / f"{args.model}-{args.data}-{args.epochs}e-g{granularity}-seed{seed}.pt"
    started = time.perf_counter()
    if trained.is_file():  # training is deterministic per seed: a re-run reuses the weights
        load_checkpoint(model, trained)
    else:
        train(
            model, bench.dataset, epochs=args.epochs, seed=seed, per_layer=per_layer, granularity=granularity
        )
        save_checkpoint(model, trained)
    train_s = time.perf_counter() - started

    def scored(config: WidthConfig) -> Scores:
        """After BN calibration on the same batches (the same treatment for every configuration): which
        report-half images are right, and cross-entropy (finer than top-1) and top-1 on both halves."""
        calibrate(model, config, bench.calibration, num_batches=len(bench.calibration))
        with torch.no_grad():
            hits = torch.cat([model(images).argmax(dim=1) == labels for images, labels in bench.report_val])
        return Scores(
            hits,
            validation_loss(model, bench.report_val),
            accuracy(model, bench.search_val),
            validation_loss(model, bench.search_val),
        )

    uniform = {w: scored(model.config(w)) for w in bench.uniform_widths}
    uniform_top1 = {w: score.top1 for w, score in uniform.items()}
    uniform_loss = {w: score.loss for w, score in uniform.items()}
    print(f"seed {seed}: uniform top1 {uniform_top1}")

    widths = WidthPlanner(model, bench.table.predict_ms, args.granularity)
    fitness = Fitness(model, bench.calibration, bench.search_val)
    settings = SearchSettings(args.population, args.sample, args.generations)
    learn_budget = bench.learn_budget(widths.full_cost())
    started = time.perf_counter()
    result = evolve(widths, learn_budget, fitness, np.random.default_rng(seed), settings)
    evolve_s = time.perf_counter() - started
    distinct = len(fitness.cache)
    identity_loss = fitness(widths.config_for(Coefficients.identity(widths.layers), learn_budget))
    ranking = LearnedRanking(
        model.name,
        result.coefficients,
        widths.granularity,
        info={
            "cost": {"kind": "latency_ms", "target": bench.target.name},
            "budget": {"share": learn_budget / widths.full_cost()},
        },
    )

    def measure(config: WidthConfig) -> float:
        return measure_configs(model, [config], bench.target, args.work)[config.id]

    rows = []
    for name, budget in bench.budgets.items():
        # every budget is at least 0.25x's latency, so some uniform width fits
        best_uniform = max(w for w in bench.uniform_widths if bench.uniform_ms[w] <= budget)
        versus = uniform[best_uniform].hits
        row = {
            "seed": seed,
            "budget": name,
            "budget_ms": budget,
            "uniform_width": best_uniform,
            "uniform_measured_ms": bench.uniform_ms[best_uniform],
            "uniform_top1": uniform_top1[best_uniform],
            "uniform_loss": uniform_loss[best_uniform],
            "uniform_search_loss": uniform[best_uniform].search_loss,
        }
        # what planner legr config --data does: the plan fitted by measurement, kept only if its fitness
        # beats the uniform width's (here the widest uniform width measured under the budget)
        try:
            fit = fit_to_budget(
                partial(widths.config_for, result.coefficients),
                budget,
                measure=measure,
                max_plans=args.plans,
                uniform=lambda best=best_uniform: model.config(best),
                fitness=fitness,
            )
        except PlannerError as error:
            print(f"seed {seed}, {name}: {error}")
            rows.append(row)
            continue
        plan = fit.measurement
        config, measured_ms = plan.config, plan.measured
        legr = scored(config)
        row.update(
            legr_config=config.label,
            legr_channels=json.dumps(config.channels),
            legr_plans=plan.plans,
            legr_predicted_ms=bench.table.predict_ms(config),
            legr_measured_ms=measured_ms,
            legr_fits=plan.fits,
            legr_top1=legr.top1,
            legr_loss=legr.loss,
            legr_search_loss=legr.search_loss,
            legr_only=int((legr.hits & ~versus).sum()),
            uniform_only=int((versus & ~legr.hits).sum()),
        )
        kept = fit.config
        row.update(pick_versus(versus, "check", legr if kept == config else uniform[best_uniform]))
        row["check_pick"] = "LeGR" if kept == config else f"{best_uniform:g}x"
        # then planner select over the uniform widths and that configuration, by the search half's top-1
        # (the user's validation accuracy); the budget is checked against the measured p50
        offered = {model.config(w).id: (uniform[w], bench.uniform_ms[w], w) for w in bench.uniform_widths}
        offered.setdefault(kept.id, (legr, measured_ms, kept.width))
        candidates = pd.DataFrame(
            {
                "config_id": config_id,
                "width": width,
                "accuracy": score.search_top1,
                "latency_ms": measured,
                "bound_ms": measured,
                "memory_bytes": float("nan"),
            }
            for config_id, (score, measured, width) in offered.items()
        )
        choice = select(candidates, Budget(budget, metric="p50")).choice  # best_uniform fits
        row.update(pick_versus(versus, "select", offered[choice["config_id"]][0]))
        row["select_pick"] = "LeGR" if choice["config_id"] == config.id else f"{choice['width']:g}x"
        rows.append(row)
    return SeedRun(
        rows,
        uniform_top1,
        uniform_loss,
        train_s,
        evolve_s,
        result.evaluations,
        distinct,
        result.loss,
        identity_loss,
        ranking,
    )


def main() -> None:
    args = parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    learned_at = (
        "the middle budget (0.5x's measured latency)"
        if args.learn_at == "middle"
        else f"{args.learn_at:.0%} of the full model's predicted latency"
    )
    torch.set_num_threads(1)  # small batches on a shared 2-core machine
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    dataset = load_dataset(args.data, image_size=args.image_size)
    stem = "legr_" + args.data.replace("-", "_")
    model = planner.create_model(args.model, input_size=args.image_size)  # structure: table, latency
    target = dataclasses.replace(load_target(args.target), threads=args.threads)
    path = table_path(args.work, target.name, model.name)
    started = time.perf_counter()
    if path.is_file():  # the table depends on the structure only, not on the weights
        table = LatencyTable.load(path).check(model, target)
    else:
        table = build_table(model, target, args.work, log=print)
        table.save(path)
    lut_s = time.perf_counter() - started
    low, high = model.width_range
    if model.universal:  # every step of the grid changes the 8-channel rounding of some layer
        steps = round((high - low) / args.uniform_step)
        uniform_widths = [round(low + i * args.uniform_step, 4) for i in range(steps + 1)]
    else:
        uniform_widths = model.widths
    if not {0.25, 0.5, 0.75} <= set(uniform_widths):
        raise SystemExit(f"uniform widths {uniform_widths} must hold 0.25, 0.5 and 0.75 (the budgets)")
    uniform = {w: model.config(w) for w in uniform_widths}
    measured = measure_configs(model, list(uniform.values()), target, args.work)
    uniform_ms = {w: measured[c.id] for w, c in uniform.items()}
    budgets = {
        "tight (between 0.25x and 0.5x)": (uniform_ms[0.25] + uniform_ms[0.5]) / 2,
        "0.5x's latency": uniform_ms[0.5],
        "0.75x's latency": uniform_ms[0.75],
    }
    bench = Bench(args, dataset, target, table, uniform_widths, uniform_ms, budgets)
    runs = [run_seed(bench, seed) for seed in seeds]
    runs[0].ranking.save(args.out / f"{stem}_coefficients.json")

    frame = pd.DataFrame([row for run in runs for row in run.rows])
    frame.to_csv(args.out / f"{stem}.csv", index=False)
    summary = frame.groupby("budget", sort=False).agg(
        budget_ms=("budget_ms", "first"),
        legr_measured_ms=("legr_measured_ms", "mean"),
        legr_top1=("legr_top1", "mean"),
        legr_loss=("legr_loss", "mean"),
        uniform_width=("uniform_width", "first"),
        uniform_measured_ms=("uniform_measured_ms", "first"),
        uniform_top1=("uniform_top1", "mean"),
        uniform_loss=("uniform_loss", "mean"),
        legr_only=("legr_only", "sum"),
        uniform_only=("uniform_only", "sum"),
    )
    summary.insert(4, "top1_diff", summary["legr_top1"] - summary["uniform_top1"])
    per_seed = frame[
        [
            "seed",
            "budget",
            "legr_channels",
            "legr_plans",
            "legr_predicted_ms",
            "legr_measured_ms",
            "legr_top1",
            "legr_loss",
            "legr_search_loss",
            "uniform_width",
            "uniform_top1",
            "uniform_loss",
            "uniform_search_loss",
            "legr_only",
            "uniform_only",
            "check_pick",
            "select_pick",
        ]
    ]
    report_images = len(bench.report_val[0][1])
    load = os.getloadavg()
    trained_at = f"any width in [{low:g}, {high:g}]" if model.universal else f"widths {model.widths}"
    per_layer = ", per-layer random sandwich members" if model.universal else ""
    settings = SearchSettings(args.population, args.sample, args.generations)
    lines = [
        f"# LeGR per-layer vs uniform widths on the digits model ({args.data}; issue 7, benchmarks b, c)",
        "",
        f"Command: `{command}`",
        "",
        f"{model.name} ({args.image_size}x{args.image_size} {args.data}, {trained_at}) trained {args.epochs} "
        f"epochs with planner.accuracy.train{per_layer}, once per seed ({', '.join(map(str, seeds))}; "
        f"{', '.join(f'{run.train_s:.0f}' for run in runs)} s; under 1 s: weights reused from --work). "
        f"Latency: target `{target.name}` ({target.backend} {target.device}, {target.threads or 'all'} "
        f"thread(s)), p50 of the profilers; the table took {lut_s:.0f} s to build "
        f"(0: reused) (scale {table.calibration.scale:.3f}, offset {table.calibration.offset_ms:.3f} ms). "
        f"Top-1 and cross-entropy on the second half of the val split ({report_images} images, one image = "
        f"{100 / report_images:.2f} points); the search only saw the first half. Every compared "
        "configuration, uniform and LeGR alike, has its BN statistics calibrated on the same "
        f"{len(bench.calibration)} calibration-split batches ({dataset.size('calibration')} images) before "
        "scoring.",
        "",
        "Uniform widths (p50; top-1 and cross-entropy, mean over seeds): "
        + ", ".join(
            f"{w:g}x {uniform_ms[w]:.4f} ms {np.mean([r.uniform_top1[w] for r in runs]):.1f}% "
            f"{np.mean([r.uniform_loss[w] for r in runs]):.3f}"
            for w in uniform_widths
        ),
        "",
        "## (b) accuracy at the same measured latency",
        "",
        f"Mean over {len(seeds)} seeds (`legr_only` / `uniform_only`: report-half images only that "
        "configuration gets right, summed over seeds; the uniform width is the widest whose measured p50 "
        "fits the budget):",
        "",
        summary.reset_index().to_markdown(index=False, floatfmt=".4f"),
        "",
        "Per seed (`*_search_loss`: cross-entropy on the search half, the one the evolution saw):",
        "",
        per_seed.to_markdown(index=False, floatfmt=".4f"),
        "",
        "What `planner legr config --data` writes: the plan only where its fitness (the search half's "
        "cross-entropy after BN calibration, as in the evolution) is lower than the widest fitting uniform "
        "width's, else that width (`check_pick` per seed above); top-1 on the report half:",
        "",
        versus_uniform(frame, "check").reset_index().to_markdown(index=False, floatfmt=".4f"),
        "",
        "Then what `planner select` answers when that configuration is offered beside the uniform widths, "
        "each with its measured p50 and its top-1 on the search half (the validation accuracy a user has "
        "from `planner evaluate`; `select_pick` above); top-1 on the report half, against the same widest "
        "fitting uniform width:",
        "",
        versus_uniform(frame, "select").reset_index().to_markdown(index=False, floatfmt=".4f"),
        "",
        f"LeGR plans in steps of {args.granularity} channels. `legr_plans` is how many plans were measured "
        f"(at most {args.plans}): the aim moves by budget / measured p50, then bisects, and the fitting plan "
        "of the largest aim is kept, so the table's error neither breaks nor wastes the budget. A missing "
        "LeGR entry means the budget is below the smallest configuration. Coefficients of seed "
        f"{seeds[0]} in {stem}_coefficients.json; everything in {stem}.csv.",
        "",
        "## (c) evolution wall time with LUT-predicted latency",
        "",
        f"- population {settings.population}, sample {settings.sample}, {settings.generations} generations, "
        f"mutate {settings.mutate:.0%} of the layers, learned at {learned_at}",
    ]
    for seed, run in zip(seeds, runs, strict=True):
        lines.append(
            f"- seed {seed}: **{run.evolve_s:.1f} s** for {run.evaluations} candidates ({run.distinct} "
            "distinct configurations evaluated: BN calibration + validation loss each; 1 torch thread); "
            f"best validation loss {run.best_loss:.4f} (identity transform: {run.identity_loss:.4f})"
        )
    lines.append(
        f"- machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "at the end"
    )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
