"""Repeatability: 5 independent profiler runs; latency(w)/latency(1.0) must agree and never reorder widths.

Each run is a fresh `run_jobs` call (new worker processes, new results directory, artifacts cached).
Goal (issue 3): for every width and backend the ratio of its median to the 1.0x median spreads by <= 3%
across runs ((max - min) / mean), and the order of the widths never flips.

    python benchmarks/profiler_repeatability.py [--runs 5] [--threads 2] [--backends onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
from profiler_common import RESULTS, WIDTHS, command_line, conditions, export_widths

from profilers import Settings, run_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner-profiler-bench"))
    arguments = parser.parse_args()
    before = conditions()
    backends = arguments.backends.split(",")
    jobs = export_widths(arguments.work / "exports")
    all_jobs = [
        dataclasses.replace(j, backend=b, threads=arguments.threads) for b in backends for j in jobs.values()
    ]
    settings = Settings(cache_dir=arguments.work / "cache")
    tables = []
    for run in range(arguments.runs):
        started = time.perf_counter()
        out = arguments.work / "repeatability" / f"run{run}"
        table = run_jobs(all_jobs, out, dataclasses.replace(settings, seed=run), force=True)
        print(f"run {run}: {time.perf_counter() - started:.0f} s", flush=True)
        tables.append(table.assign(run=run))
    raw = pd.concat(tables, ignore_index=True)
    full = raw[raw["width"] == 1.0].set_index(["run", "backend"])["p50_ms"]
    raw["ratio_to_full"] = [r.p50_ms / full[(r.run, r.backend)] for r in raw.itertuples()]
    RESULTS.mkdir(exist_ok=True)
    raw[
        [
            "run",
            "backend",
            "width",
            "p50_ms",
            "ci_low_ms",
            "ci_high_ms",
            "n",
            "converged",
            "ratio_to_full",
            "status",
        ]
    ].to_csv(RESULTS / "profiler_repeatability.csv", index=False)

    lines, worst_spread, flips = [], 0.0, []
    for backend in backends:
        part = raw[raw["backend"] == backend]
        for run, one in part.groupby("run"):
            ordered = list(one.sort_values("p50_ms")["width"])
            if ordered != sorted(ordered):
                flips.append(f"{backend} run {run}: {ordered}")
        for width in WIDTHS[:-1]:
            ratios = part[part["width"] == width].sort_values("run")["ratio_to_full"]
            spread = (ratios.max() - ratios.min()) / ratios.mean() * 100
            worst_spread = max(worst_spread, spread)
            medians = part[part["width"] == width].sort_values("run")["p50_ms"]
            median_spread = (medians.max() - medians.min()) / medians.mean() * 100
            lines.append(
                f"| {backend} | {width:g} | {', '.join(f'{r:.3f}' for r in ratios)} | {spread:.1f}% "
                f"| {', '.join(f'{m:.2f}' for m in medians)} | {median_spread:.0f}% |"
            )
    verdict = "met" if worst_spread <= 3 and not flips else "missed"
    report = f"""# Profiler repeatability

Command: `{command_line()}`

Conditions: {before}

S-MobileNetV2 at 224x224, 4 widths x {len(backends)} backend(s) ({", ".join(backends)}),
threads={arguments.threads}, default settings (+-2% CI of the median, >= 64 queries, <= 30 s per job),
{arguments.runs} independent runs (fresh workers each; round order seeded with the run number).

| backend | width | latency(w)/latency(1.0) per run | spread | median per run (ms) | raw spread |
|---|---|---|---|---|---|
{chr(10).join(lines)}

Width order flips: {"; ".join(flips) if flips else "none"}.

Goal: ratio spread ((max - min) / mean over runs) <= 3% and no flips.
Result: {verdict} (largest ratio spread {worst_spread:.1f}%).
"""
    (RESULTS / "profiler_repeatability.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
