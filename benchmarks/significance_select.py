"""Issue 15 benchmark: significance-aware select vs plain argmax, judged on held-out images, over seeds.

Per seed: train s_cnn_small on digits-distorted (6 epochs, that seed), export its 4 widths, quantize
each to int8 (onnxruntime scheme, the data's calibration split) and score all 8 artifacts through ONNX
Runtime on the 1080 validation images. The first half of the validation split is what `select` sees
(accuracy, interval, per-image hits); the second half is held out and judges the pick. Latency comes from
one measured table (a `planner demo` run's cpu-int8 rows: latency depends on the structure, not the
weights). Budgets: the tight one between 0.25x and 0.5x, and the p90 of 0.5x and 0.75x fp32.

For every (seed, budget): the pick with significance (the fastest fitting candidate McNemar cannot tell
from the most accurate on the search half) and without (plain argmax), with each pick's held-out
accuracy, its loss against the best held-out fitting candidate (regret) and its latency.

    planner demo --out /tmp/demo1
    python benchmarks/significance_select.py --latency /tmp/demo1/results --seeds 10 --out results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from machine import machine_state

import planner
from planner.accuracy.data import load_dataset
from planner.accuracy.runtime import evaluate_target
from planner.accuracy.train import train
from planner.measure.targets import load_target
from planner.plan.pareto import latency_bound, memory_bytes
from planner.plan.select import Budget, label, select
from planner.stats import encode_hits
from profilers.results import load_latency

TARGET = "cpu-int8"


def candidates_for_seed(scored: dict, latency: pd.DataFrame, half: int) -> tuple[pd.DataFrame, dict]:
    """A candidates table scored on the search half, and the held-out hits per (config_id, precision)."""
    rows, held_out = [], {}
    for precision, results in scored.items():
        for result in results:
            search = result.hits[:half]
            held_out[(result.config.id, precision)] = result.hits[half:]
            measured = latency[
                (latency["config_id"] == result.config.id) & (latency["precision"] == precision)
            ]
            row = measured.iloc[0].to_dict()
            row.update(
                accuracy=100.0 * search.mean(),
                accuracy_n=len(search),
                accuracy_hits=encode_hits(search),
                accuracy_dataset="digits-distorted",
                accuracy_split="val[:half]",
            )
            rows.append(row)
    table = pd.DataFrame(rows)
    table["latency_ms"] = table["p90_ms"]
    table["bound_ms"] = latency_bound(table, "p90")
    table["memory_bytes"] = memory_bytes(table)
    return table, held_out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=Path, required=True, help="results dir with cpu-int8 latency rows")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = machine_state()
    latency = load_latency(args.latency)
    latency = latency[(latency["target"] == TARGET) & (latency["status"] == "ok")]
    fp32 = latency[latency["precision"] == "fp32"].set_index("width")["p90_ms"]
    budgets = {
        "tight": (fp32[0.25] + fp32[0.5]) / 2,
        "0.5x": fp32[0.5],
        "0.75x": fp32[0.75],
    }
    dataset = load_dataset("digits-distorted")
    half = dataset.size("val") // 2
    target = load_target(TARGET)
    records = []
    for seed in range(args.seeds):
        work = Path(tempfile.mkdtemp(prefix=f"significance-{seed}-"))
        model = planner.create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
        torch.manual_seed(seed)
        train(model, dataset, epochs=args.epochs, seed=seed)
        model.eval()
        configs = [model.config(width) for width in model.widths]
        scored = evaluate_target(model, configs, target, dataset, "val", work, weights=f"seed{seed}")
        table, held_out = candidates_for_seed(scored, latency, half)
        for name, ms in budgets.items():
            budget = Budget(float(ms), "p90")
            fitting = select(table, budget, False).fitting
            best_held_out = max(
                100.0 * held_out[(r.config_id, r.precision)].mean() for r in fitting.itertuples()
            )
            for rule, significance in (("significance", True), ("argmax", False)):
                choice = select(table, budget, significance).choice
                accuracy = 100.0 * held_out[(choice["config_id"], choice["precision"])].mean()
                records.append(
                    {
                        "seed": seed,
                        "budget": name,
                        "rule": rule,
                        "pick": label(choice),
                        "search_top1": choice["accuracy"],
                        "held_out_top1": accuracy,
                        "regret": best_held_out - accuracy,
                        "p90_us": choice["p90_ms"] * 1000,
                    }
                )
        print(f"seed {seed} done", flush=True)
    frame = pd.DataFrame(records)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "significance_select.csv", index=False)
    wide = frame.pivot_table(index=["seed", "budget"], columns="rule", values="held_out_top1")
    lines = [
        "# Significance-aware select vs argmax, judged on held-out images (issue 15)",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
        "",
        f"{args.seeds} seeds x 3 budgets; s_cnn_small on digits-distorted, {args.epochs} epochs; "
        f"8 candidates (4 widths x fp32/int8, onnxruntime, scored through the runtime); select sees "
        f"{half} validation images, {dataset.size('val') - half} are held out. Latency: the cpu-int8 "
        f"rows of {args.latency} (one measurement, shared by all seeds). Table: significance_select.csv.",
        "",
        "| budget | rule | mean held-out top-1 % | mean regret (points) | picks with regret > 0 "
        "| mean p90 us |",
        "|---|---|---|---|---|---|",
    ]
    for (budget, rule), group in frame.groupby(["budget", "rule"], sort=False):
        lines.append(
            f"| {budget} | {rule} | {group['held_out_top1'].mean():.2f} | {group['regret'].mean():.2f} | "
            f"{int((group['regret'] > 1e-9).sum())}/{len(group)} | {group['p90_us'].mean():.1f} |"
        )
    difference = wide["significance"] - wide["argmax"]
    lines += [
        "",
        f"Held-out, significance pick minus argmax pick: worse in {int((difference < -1e-9).sum())}, "
        f"equal in {int((difference.abs() <= 1e-9).sum())}, better in {int((difference > 1e-9).sum())} of "
        f"{len(difference)} (seed, budget) pairs; mean {difference.mean():+.2f} points.",
        "",
        f"Machine: shared with other sessions, load before `{before}`, after `{machine_state()}`.",
        "",
    ]
    (args.out / "significance_select.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
