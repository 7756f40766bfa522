"""Issue 15 benchmarks on the demo's data: accuracy per width and precision through the runtime (with
95% intervals), and the mixed (width x precision) front against the width-only front at three budgets.

Reads a `planner demo --out DIR` run (digits-distorted, s_cnn_small, cpu-int8 and openvino-cpu-int8:
every width in FP32 and INT8, each artifact scored through its runtime on the 1080 validation images).
Budgets per target: the p90 of the FP32 0.5x and 0.75x widths, and a tight one halfway between 0.25x and
0.5x. At each, the plain argmax (no significance rule, so both fronts are compared on point estimates)
over FP32 widths only, and over widths x {fp32, int8}.

    planner demo --out /tmp/demo1
    python benchmarks/precision_front.py --results /tmp/demo1/results --out results
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from planner.plan.pareto import candidates, read_tables
from planner.plan.select import Budget, label, select


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    latency, accuracy = read_tables(args.results)
    top1 = accuracy[accuracy["metric"] == "top1"].copy()
    top1["scored by"] = top1["runtime"]
    table = top1[["target", "width", "precision", "scored by", "value", "ci_low", "ci_high", "n"]]
    table = table.sort_values(["target", "width", "precision"]).reset_index(drop=True)
    lines = [
        "# Width x precision on the demo's data (issue 15)",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}` on the output of "
        "`planner demo` (s_cnn_small, digits-distorted, 6 epochs, seed 0).",
        "",
        "## Top-1 per width and precision, through the runtime (95% Wilson interval)",
        "",
        "| target | width | precision | scored by | top-1 % | 95% interval | images |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.target or '-'} | {row.width:g}x | {row.precision} | {row[3]} | {row.value:.2f} | "
            f"{row.ci_low:.1f}-{row.ci_high:.1f} | {row.n} |"
        )
    lines += [
        "",
        "## Mixed front vs width-only front (plain argmax at each budget)",
        "",
        "| target | budget p90 | width-only pick | top-1 % | mixed pick | top-1 % | gained (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    records = []
    for target in sorted(latency["target"].unique()):
        mixed = candidates(latency, accuracy, target, metric="p90")
        fp32 = mixed[mixed["precision"] == "fp32"].reset_index(drop=True)
        bound = fp32.set_index("width")["bound_ms"]
        budgets = {
            "tight (0.25x..0.5x)": (bound[0.25] + bound[0.5]) / 2,
            "0.5x fp32": bound[0.5],
            "0.75x fp32": bound[0.75],
        }
        for name, ms in budgets.items():
            budget = Budget(float(ms), "p90")
            only, both = select(fp32, budget, False).choice, select(mixed, budget, False).choice
            gained = both["accuracy"] - only["accuracy"]
            records.append({"target": target, "budget": name, "ms": ms, "gained": gained})
            lines.append(
                f"| {target} | {name}: {ms * 1000:.1f} us | {label(only)} | {only['accuracy']:.2f} | "
                f"{label(both)} | {both['accuracy']:.2f} | {gained:+.2f} |"
            )
    frame = pd.DataFrame(records)
    lines += [
        "",
        f"The mixed front is never worse (min gain {frame['gained'].min():+.2f} points: it contains the "
        "width-only candidates) and gains where an int8 width fits a budget its fp32 twin misses. The "
        "differences are small beside the intervals above (about +-1.6 points on 1080 images): "
        "`planner select` (with significance) reports most of them as within noise.",
        "",
        "Latency was measured by the demo on this shared 2-core machine under a load average of 11-14 "
        "(other sessions); the picks depend on those measurements.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision_front.md").write_text("\n".join(lines))
    table.to_csv(args.out / "precision_accuracy.csv", index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
