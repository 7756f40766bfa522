"""Repeatability: 5 independent profiler runs; latency(w)/latency(1.0) must agree and never reorder widths.

Each run is a fresh `run_jobs` call (new worker processes, new results directory, artifacts cached).
Goal (issue 3): for every width and backend the ratio of its median to the 1.0x median spreads by <= 3%
across runs ((max - min) / mean), and the order of the widths never flips. Two estimates of the ratio are
reported: the profiler's paired one (`ratio_to_ref`, the median of per-round ratios to the 1.0x job of
the same backend) and the quotient of the two p50s.

    python benchmarks/profiler_repeatability.py [--runs 5] [--threads 2] [--backends onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
from profiler_common import (
    RESULTS,
    ROW_COLUMNS,
    WIDTHS,
    busy_processes,
    command_line,
    conditions,
    export_widths,
    report_name,
)

from profilers import Settings, run_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner-profiler-bench"))
    parser.add_argument("--busy", type=int, default=0, help="CPU-spinning processes running alongside")
    arguments = parser.parse_args()
    before = conditions()
    backends = arguments.backends.split(",")
    jobs = export_widths(arguments.work / "exports")
    all_jobs = [
        dataclasses.replace(j, backend=b, threads=arguments.threads) for b in backends for j in jobs.values()
    ]
    settings = Settings(cache_dir=arguments.work / "cache")
    tables = []
    with busy_processes(arguments.busy):
        for run in range(arguments.runs):
            started = time.perf_counter()
            out = arguments.work / "repeatability" / f"run{run}"
            table = run_jobs(all_jobs, out, dataclasses.replace(settings, seed=run), force=True)
            print(f"run {run}: {time.perf_counter() - started:.0f} s", flush=True)
            tables.append(table.assign(run=run))
    raw = pd.concat(tables, ignore_index=True)
    full = raw[raw["width"] == 1.0].set_index(["run", "backend"])["p50_ms"]
    raw["p50_ratio"] = [r.p50_ms / full[(r.run, r.backend)] for r in raw.itertuples()]
    RESULTS.mkdir(exist_ok=True)
    raw[
        [
            *ROW_COLUMNS,
            "n",
            "converged",
            "rounds",
            "ratio_to_ref",
            "ratio_ci_low",
            "ratio_ci_high",
            "p50_ratio",
            "status",
        ]
    ].to_csv(RESULTS / f"{report_name('profiler_repeatability', arguments.busy)}.csv", index=False)

    lines, worst = [], {"ratio_to_ref": 0.0, "p50_ratio": 0.0}
    flips: dict[str, list[str]] = {"ratio_to_ref": [], "p50_ratio": []}
    for backend in backends:
        part = raw[raw["backend"] == backend]
        for run, one in part.groupby("run"):
            for column in flips:
                ordered = list(one.sort_values(column)["width"])
                if ordered != sorted(ordered):
                    flips[column].append(f"{backend} run {run}: {ordered}")
        for width in WIDTHS[:-1]:
            rows = part[part["width"] == width].sort_values("run")
            cells = []
            for column in ("ratio_to_ref", "p50_ratio"):
                ratios = rows[column]
                spread = (ratios.max() - ratios.min()) / ratios.mean() * 100
                worst[column] = max(worst[column], spread)
                cells.append(f"{', '.join(f'{r:.3f}' for r in ratios)} | {spread:.1f}%")
            medians = rows["p50_ms"]
            median_spread = (medians.max() - medians.min()) / medians.mean() * 100
            lines.append(
                f"| {backend} | {width:g} | {' | '.join(cells)} "
                f"| {', '.join(f'{m:.2f}' for m in medians)} | {median_spread:.0f}% |"
            )

    def verdict(column: str) -> str:
        met = worst[column] <= 3 and not flips[column]
        outcome = "met" if met else "missed"
        return f"{outcome} (largest spread {worst[column]:.1f}%, flips: {len(flips[column])})"

    flip_text = "; ".join(f"{c}: {f}" for c in flips for f in flips[c]) or "none"
    report = f"""# Profiler repeatability

Command: `{command_line()}`

Conditions: {before} CPU-spinning processes alongside: {arguments.busy}.

S-MobileNetV2 at 224x224, 4 widths x {len(backends)} backend(s) ({", ".join(backends)}),
threads={arguments.threads}, default settings (+-2% CI of the median, >= 64 queries, <= 30 s per job),
{arguments.runs} independent runs (fresh workers each; round order seeded with the run number).

| backend | width | paired ratio, per run | spread | p50 ratio, per run | spread | p50 per run (ms) | spread |
|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Width order flips: {flip_text}.

Goal: ratio spread ((max - min) / mean over runs) <= 3% and no flips.
Result with the profiler's paired ratio (`ratio_to_ref`): {verdict("ratio_to_ref")}.
Result with the quotient of the two p50s: {verdict("p50_ratio")}.
"""
    (RESULTS / f"{report_name('profiler_repeatability', arguments.busy)}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
