"""Issue 7 benchmarks (b) and (c) on the digits model: LeGR per-layer widths vs uniform widths, and the
wall time of the evolution with LUT-predicted latency.

1. Train s_cnn_small (digits upscaled to 16x16, widths 0.25-1.0) with planner.train.
2. Build its latency table on the `cpu` target (onnxruntime CPU) and measure every uniform width.
3. Learn LeGR coefficients once (regularized evolution, LUT latency as the cost, fitness = validation loss
   on the first half of the val split after BN calibration), timed: benchmark (c).
4. For three latency budgets (the measured p50 of 0.5x and 0.75x, and a tight one halfway between 0.25x
   and 0.5x), plan a configuration with the same coefficients, measure it, calibrate its BN, and compare
   its top-1 on the *second* half of val with the widest uniform width whose measured p50 fits: (b).

    python benchmarks/legr_digits.py --work /tmp/legr_digits16 --out results
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import planner
from planner.calibrate import calibrate
from planner.data import load_dataset
from planner.errors import PlannerError
from planner.legr import Coefficients, Fitness, LearnedRanking, SearchSettings, WidthPlanner, accuracy, evolve
from planner.lut import LatencyTable, build_table, measure_configs, table_path
from planner.targets import load_target
from planner.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=16, help="digits upscaled from 8x8")
    parser.add_argument("--generations", type=int, default=400)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--sample", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/legr_digits"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    torch.set_num_threads(1)  # small batches on a shared 2-core machine
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    dataset = load_dataset("digits", image_size=args.image_size)
    model = planner.create_model("s_cnn_small", input_size=args.image_size)
    started = time.perf_counter()
    train(model, dataset, epochs=args.epochs, seed=args.seed)
    train_s = time.perf_counter() - started
    val_images, val_labels = dataset.splits["val"]
    half = len(val_labels) // 2
    search_val = [(val_images[:half], val_labels[:half])]
    report_val = [(val_images[half:], val_labels[half:])]
    calibration = dataset.batches("calibration", 64)

    target = load_target(args.target)
    path = table_path(args.work, target.name, model.name)
    started = time.perf_counter()
    if path.is_file():  # the table depends on the structure only, not on the weights
        table = LatencyTable.load(path).check(model, target)
    else:
        table = build_table(model, target, args.work, log=print)
        table.save(path)
    lut_s = time.perf_counter() - started
    uniform = {w: model.config(w) for w in model.widths}
    measured = measure_configs(model, list(uniform.values()), target, args.work)
    uniform_ms = {w: measured[c.id] for w, c in uniform.items()}
    uniform_acc = {}
    for w, config in uniform.items():
        model.set_config(config)
        uniform_acc[w] = accuracy(model, report_val)
    print("uniform p50 ms", uniform_ms, "top1", uniform_acc)

    widths = WidthPlanner(model, table.predict_ms)
    fitness = Fitness(model, calibration, search_val)
    settings = SearchSettings(args.population, args.sample, args.generations)
    learn_budget = 0.5 * widths.full_cost()
    started = time.perf_counter()
    result = evolve(widths, learn_budget, fitness, np.random.default_rng(args.seed), settings)
    evolve_s = time.perf_counter() - started
    ranking = LearnedRanking(
        model.name,
        result.coefficients,
        widths.granularity,
        info={"cost": {"kind": "latency_ms", "target": target.name}, "budget": {"share": 0.5}},
    )
    ranking.save(args.out / "legr_digits_coefficients.json")

    budgets = {
        "tight (between 0.25x and 0.5x)": (uniform_ms[0.25] + uniform_ms[0.5]) / 2,
        "0.5x's latency": uniform_ms[0.5],
        "0.75x's latency": uniform_ms[0.75],
    }
    planned = {}
    for name, ms in budgets.items():
        try:
            planned[name] = widths.config_for(result.coefficients, ms)
        except PlannerError as error:
            print(f"{name}: {error}")
    legr_ms = measure_configs(model, list(planned.values()), target, args.work)
    rows = []
    for name, budget in budgets.items():
        fitting = [w for w in model.widths if uniform_ms[w] <= budget]
        best_uniform = max(fitting) if fitting else None
        row = {
            "budget": name,
            "budget_ms": budget,
            "uniform_width": best_uniform,
            "uniform_measured_ms": uniform_ms[best_uniform] if fitting else float("nan"),
            "uniform_top1": uniform_acc[best_uniform] if fitting else float("nan"),
        }
        config = planned.get(name)
        if config is not None:
            if model.needs_calibration(config):
                calibrate(model, config, calibration, num_batches=len(calibration))
            else:
                model.set_config(config)
            row.update(
                legr_config=config.label,
                legr_channels=json.dumps(config.channels),
                legr_predicted_ms=table.predict_ms(config),
                legr_measured_ms=legr_ms.get(config.id, float("nan")),
                legr_top1=accuracy(model, report_val),
            )
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "legr_digits.csv", index=False)
    load = os.getloadavg()
    lines = [
        "# LeGR per-layer widths vs uniform widths on the digits model (issue 7, benchmarks b and c)",
        "",
        f"Command: `{command}`",
        "",
        f"s_cnn_small ({args.image_size}x{args.image_size} digits, widths {model.widths}) trained "
        f"{args.epochs} epochs with planner.train "
        f"({train_s:.0f} s). Latency: target `{target.name}` ({target.backend} {target.device}), p50 of the "
        f"profilers; the table took {lut_s:.0f} s to build (0: reused) "
        f"(scale {table.calibration.scale:.3f}, offset {table.calibration.offset_ms:.3f} ms). "
        "Top-1 on the second half of the val split "
        f"({len(val_labels) - half} images); the search only saw the first half. LeGR configurations have "
        "their BN statistics calibrated on the calibration split; uniform widths use their trained ones.",
        "",
        "Uniform widths: "
        + ", ".join(f"{w:g}x {uniform_ms[w]:.4f} ms {uniform_acc[w]:.1f}%" for w in model.widths),
        "",
        "## (b) accuracy at the same measured latency",
        "",
        frame[
            [
                "budget",
                "budget_ms",
                "legr_config",
                "legr_predicted_ms",
                "legr_measured_ms",
                "legr_top1",
                "uniform_width",
                "uniform_measured_ms",
                "uniform_top1",
            ]
        ].to_markdown(index=False, floatfmt=".4f"),
        "",
        "A missing LeGR entry means the budget is below the smallest configuration the table predicts.",
        "",
        "LeGR channels per budget are in legr_digits.csv; coefficients in legr_digits_coefficients.json.",
        "",
        "## (c) evolution wall time with LUT-predicted latency",
        "",
        f"- population {settings.population}, sample {settings.sample}, {settings.generations} generations, "
        f"mutate {settings.mutate:.0%} of the layers, learned at 50% of the full model's predicted latency",
        f"- **{evolve_s:.1f} s** for {result.evaluations} candidates ({len(fitness.cache)} distinct "
        f"configurations evaluated: BN calibration + validation loss each; 1 torch thread); best "
        f"validation loss {result.loss:.4f} (identity transform: "
        f"{fitness(widths.config_for(Coefficients.identity(widths.layers), learn_budget)):.4f})",
        f"- machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "at the end (other developers' tests ran at the same time)",
    ]
    (args.out / "legr_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
