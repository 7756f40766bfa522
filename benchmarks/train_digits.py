"""Issue 5 benchmark: slimmable training vs separately trained networks on scikit-learn's digits.

    python -m benchmarks.train_digits [--epochs 15] [--seeds 0 1 2] [--threads 2] [--out results]

For each seed: one s_cnn_small trained at widths [0.25, 0.5, 0.75, 1.0] at once, and four networks of
the same architecture (create_model("s_cnn_small", widths=[w])) each trained alone. Same budget means the
same epochs, batch size, learning-rate schedule, seed and therefore the same number of optimizer steps per
network; the slimmable network runs its four widths in each step (about the compute of the four separate
networks together). Writes OUT/train_digits.csv (one row per seed, training mode and width) and
OUT/train_digits.md (the table, wall times and this command).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from planner.accuracy.data import load_dataset
from planner.accuracy.evaluate import evaluate
from planner.accuracy.train import train
from planner.models import create_model

WIDTHS = [0.25, 0.5, 0.75, 1.0]
BATCH_SIZE, LR = 128, 0.2


def run(widths: list[float], dataset, epochs: int, seed: int) -> tuple[list, float, int]:
    torch.manual_seed(seed)
    model = create_model("s_cnn_small", widths=widths, in_channels=1, num_classes=10, input_size=8)
    result = train(model, dataset, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed)
    scores = evaluate(model, [model.config(w) for w in widths], dataset.batches("val", 512))
    return scores, result.wall_s, result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("digits")
    rows = []
    for seed in args.seeds:
        runs = [("slimmable", WIDTHS)] + [("separate", [w]) for w in WIDTHS]
        for mode, widths in runs:
            scores, wall_s, steps = run(widths, dataset, args.epochs, seed)
            for score in scores:
                rows.append(
                    {
                        "mode": mode,
                        "seed": seed,
                        "width": score.config.width,
                        "config_id": score.config.id,
                        "top1": score.top1,
                        "top5": score.top5,
                        "epochs": args.epochs,
                        "steps": steps,
                        "train_wall_s": wall_s,
                    }
                )
            print(f"seed {seed} {mode} {widths}: {[round(s.top1, 2) for s in scores]} in {wall_s:.1f} s")
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "train_digits.csv"
    table.to_csv(csv.with_suffix(".csv.tmp"), index=False)
    os.replace(csv.with_suffix(".csv.tmp"), csv)
    report = args.out / "train_digits.md"
    report.with_suffix(".md.tmp").write_text(_markdown(table, dataset, args))
    os.replace(report.with_suffix(".md.tmp"), report)
    print(f"wrote {csv} and {report}")


def _markdown(table: pd.DataFrame, dataset, args) -> str:
    summary = table.groupby(["width", "mode"])["top1"].agg(["mean", "std", "min", "max"]).unstack("mode")
    lines = [
        "# Slimmable vs separately trained s_cnn_small on digits (issue 5)",
        "",
        f"Data: scikit-learn digits, deterministic stratified split: train {dataset.size('train')}, "
        f"val {dataset.size('val')} (scored), calibration {dataset.size('calibration')} (unused here).",
        f"Budget per network: {args.epochs} epochs x {int(table['steps'].iloc[0] / args.epochs)} steps "
        f"= {int(table['steps'].iloc[0])} SGD steps, batch {BATCH_SIZE}, lr {LR} cosine, "
        "weight decay 5e-4, same seed. The slimmable network trains all four widths in every step "
        "(one optimizer step on the summed gradients); each separate network trains its one width.",
        f"Seeds: {', '.join(str(s) for s in args.seeds)}. Val top-1 in percent (mean ± std over seeds; "
        "one image is 0.28%).",
        "",
        "| width | slimmable top-1 | separate top-1 | slimmable − separate |",
        "|---|---|---|---|",
    ]
    for width, row in summary.iterrows():
        slim, sep = row[("mean", "slimmable")], row[("mean", "separate")]
        lines.append(
            f"| {width:g} | {slim:.2f} ± {row[('std', 'slimmable')]:.2f} "
            f"| {sep:.2f} ± {row[('std', 'separate')]:.2f} | {slim - sep:+.2f} |"
        )
    slim_wall = table[table["mode"] == "slimmable"].groupby("seed")["train_wall_s"].first()
    separate_wall = table[table["mode"] == "separate"].groupby("seed")["train_wall_s"].sum()
    lines += [
        "",
        f"Training wall time, {args.threads} torch threads on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end): slimmable (4 widths) "
        f"{slim_wall.mean():.1f} s per seed (max {slim_wall.max():.1f} s); the four separate networks "
        f"{separate_wall.mean():.1f} s together.",
        "",
        "Command:",
        "",
        "    python -m benchmarks.train_digits "
        + " ".join(
            [
                f"--epochs {args.epochs}",
                "--seeds " + " ".join(map(str, args.seeds)),
                f"--threads {args.threads}",
            ]
        ),
        "",
        "Per-seed rows: train_digits.csv.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
