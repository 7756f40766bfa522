"""Does stopping at the run-to-run spread cost fidelity? The profiler against benchmark_app, with and
without a run history.

Once the run history holds two quiet runs, a job's median stops as soon as its interval lies inside the
host's run-to-run one (profilers.scheduler): on a noisy host that is the minimum 6 rounds, about 1 s. A
first run measures on to +-2%. Each cycle runs, per width: benchmark_app for --seconds, the profiler
with this benchmark's shared run history (primed with two runs of each width), and the profiler from an
empty cache (no history). The table gives each profiler's paired difference from benchmark_app.

    python benchmarks/fidelity_history.py --cycles 5 --widths 1.0,0.35
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import pandas as pd
from machine import machine_state
from profiler_common import RESULTS, benchmark_app, command_line, conditions, export_widths

from profilers import Settings, run_jobs

VARIANTS = ("with history", "no history")


def measure(cycles: int, widths: list[float], seconds: float, threads: int, work: Path) -> pd.DataFrame:
    exports = export_widths(work / "exports")
    jobs = {
        width: dataclasses.replace(exports[width], backend="openvino", threads=threads) for width in widths
    }
    for width, job in jobs.items():  # two runs in the shared history, so its spread is known from cycle 0
        for run in range(2):
            run_jobs([job], work / "runs" / f"prime-{run}-{width:g}", Settings(cache_dir=work / "cache"))
    rows = []
    for cycle in range(cycles):
        for width, job in jobs.items():
            reference_ms, _, _ = benchmark_app(job.onnx, seconds)
            for variant in VARIANTS:
                cache = work / "cache" if variant == "with history" else work / "fresh" / f"{cycle}-{width:g}"
                out = work / "runs" / f"{variant.replace(' ', '-')}-{cycle}-{width:g}"
                row = run_jobs([job], out, Settings(cache_dir=cache), force=True).iloc[0]
                rows.append(
                    {
                        "cycle": cycle,
                        "width": width,
                        "variant": variant,
                        "benchmark_app_ms": reference_ms,
                        "p50_ms": row["p50_ms"],
                        "ci_low_ms": row["ci_low_ms"],
                        "ci_high_ms": row["ci_high_ms"],
                        "n": row["n"],
                        "wall_s": row["wall_s"],
                        "difference": row["p50_ms"] / reference_ms - 1,
                    }
                )
                print(
                    f"cycle {cycle} {width:g}x {variant}: {row['p50_ms']:.3f} ms, benchmark_app "
                    f"{reference_ms:.3f} ms, {row['wall_s']:.1f} s",
                    flush=True,
                )
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, command: str, state: str) -> str:
    lines = [
        "# Fidelity with and without a run history",
        "",
        f"Command: `{command}`",
        "",
        f"Conditions: {state}",
        "",
        "| width | variant | paired differences from benchmark_app | within ±5% | median measuring time |",
        "|---|---|---|---|---|",
    ]
    for (width, variant), part in table.groupby(["width", "variant"], sort=False):
        differences = ", ".join(f"{d:+.1%}" for d in part["difference"])
        within = int((part["difference"].abs() <= 0.05).sum())
        lines.append(
            f"| {width:g} | {variant} | {differences} | {within} of {len(part)} | "
            f"{statistics.median(part['wall_s']):.1f} s |"
        )
    references = table.drop_duplicates(["cycle", "width"]).groupby("width", sort=False)["benchmark_app_ms"]
    lines += ["", "benchmark_app's medians, cycle by cycle:", ""]
    lines += [f"- {width:g}x: {', '.join(f'{v:.3f}' for v in values)} ms" for width, values in references]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--widths", default="1.0,0.35")
    parser.add_argument("--seconds", type=float, default=10.0, help="benchmark_app -t per width and cycle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner-fidelity-history"))
    parser.add_argument("--name", default="fidelity_history")
    args = parser.parse_args()
    command = command_line()
    state = f"{conditions()} {machine_state()}."
    widths = [float(w) for w in args.widths.split(",")]
    table = measure(args.cycles, widths, args.seconds, args.threads, args.work)
    table.round(5).to_csv(RESULTS / f"{args.name}.csv", index=False)
    text = report(table, command, state)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
