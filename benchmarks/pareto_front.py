"""Issue 6 benchmark: how long the Pareto front and the selection take for many candidates.

    python benchmarks/pareto_front.py [--sizes 1000 10000 100000] [--repeats 5] [--out results]

Three kinds of candidate sets, each over (accuracy max, p90 latency min, memory min):
- independent: the three objectives uniform and unrelated (small front);
- trade-off: accuracy grows with latency and memory plus noise, as widths do (front of hundreds);
- worst case: accuracy = latency + memory exactly, so every point is Pareto-optimal.
Also `candidates()` + `select()` end to end on a results table of that many configurations. Writes
OUT/pareto_front.csv and OUT/pareto_front.md (median and min of the repeats, the command, the load).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from planner.plan.pareto import candidates, pareto_mask
from planner.plan.select import Budget, select


def point_sets(n: int, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    latency, memory = rng.random(n), rng.random(n)
    return {
        "independent": (rng.random(n), latency, memory),
        "trade-off": (latency + memory + rng.normal(0, 0.05, n), latency, memory),
        "worst case": (latency + memory, latency, memory),
    }


def results_tables(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A latency and an accuracy table of n per-layer configurations with the documented columns."""
    ids = np.char.mod("%010x", np.arange(n))
    p50 = rng.uniform(1, 40, n)
    latency = pd.DataFrame(
        {
            "model": "s_mobilenet_v2",
            "config_id": ids,
            "width": np.nan,
            "config": "{}",
            "target": "cpu",
            "status": "ok",
            "estimated": False,
            "timestamp": "2026-11-23T00:00:00+00:00",
            "p50_ms": p50,
            "p90_ms": p50 * 1.1,
            "p99_ms": p50 * 1.3,
            "ci_low_ms": p50 * 0.98,
            "ci_high_ms": p50 * 1.02,
            "peak_rss_bytes": rng.integers(10**6, 10**8, n),
            "device_mem_bytes": np.nan,
        }
    )
    accuracy = pd.DataFrame(
        {
            "model": "s_mobilenet_v2",
            "config_id": ids,
            "metric": "top1",
            "value": 60 + 12 * np.log(p50) / np.log(40) + rng.normal(0, 1, n),
            "dataset": "imagenet",
            "split": "val",
            "checkpoint": "",
            "source": "measured",
            "timestamp": "2026-11-23T00:00:00+00:00",
        }
    )
    return latency, accuracy


def timed(function, repeats: int) -> tuple[float, float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    load = os.getloadavg()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        for kind, (accuracy, latency, memory) in point_sets(n, rng).items():
            median, best, mask = timed(
                lambda a=accuracy, t=latency, m=memory: pareto_mask(a, t, m), args.repeats
            )
            rows.append({"what": f"pareto_mask, {kind}", "n": n, "front": int(mask.sum()),
                         "median_s": median, "min_s": best})  # fmt: skip
        latency_table, accuracy_table = results_tables(n, rng)

        def choose(lt=latency_table, at=accuracy_table):
            return select(candidates(lt, at, "cpu"), Budget(20.0, "p90"))

        median, best, selection = timed(choose, args.repeats)
        rows.append({"what": "candidates + select (results tables)", "n": n, "front": len(selection.ladder),
                     "median_s": median, "min_s": best})  # fmt: skip
        print(f"n={n}: done", file=sys.stderr)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "pareto_front.csv", index=False)
    command = "python benchmarks/pareto_front.py " + " ".join(sys.argv[1:])
    lines = [
        "# Pareto front and selection: time per call",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Conditions: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, pandas "
        f"{pd.__version__}; load average before the run {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} "
        "(other developers' test suites share this machine). Median and minimum of "
        f"{args.repeats} repeats. `front` is the number of Pareto-optimal points (for select: ladder rungs).",
        "",
        "| what | n | front | median (s) | min (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.what} | {r.n:,} | {r.front:,} | {r.median_s:.3f} | {r.min_s:.3f} |" for r in table.itertuples()
    ]
    (args.out / "pareto_front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
