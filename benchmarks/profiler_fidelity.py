"""Fidelity: the profiler's median vs OpenVINO's own benchmark_app on the same ONNX file and threads.

The two tools alternate per width (benchmark_app on width w, then the profiler on w, then the next
width; the width order rotates every repetition), so drift on this shared machine hits both alike.
Goal (issue 3): the profiler's median within +-5% of benchmark_app's for each of the 4 widths.

    python benchmarks/profiler_fidelity.py [--reps 3] [--seconds 10] [--threads 2] [--work DIR] [--name NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import pandas as pd
from profiler_common import RESULTS, WIDTHS, benchmark_app, command_line, conditions, export_widths

from profilers import Settings, run_jobs

HEADER = "\n".join(
    [
        "| width | benchmark_app median (ms) | profiler median (ms) | difference | paired difference "
        "| within +-5% "
        "| benchmark_app per rep | profiler per rep |",
        "|---|---|---|---|---|---|---|---|",
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="benchmark_app -t per width and rep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner-profiler-bench"))
    parser.add_argument("--name", default="profiler_fidelity", help="results/NAME.md and NAME.csv")
    arguments = parser.parse_args()
    before = conditions()
    jobs = export_widths(arguments.work / "exports")
    settings = Settings(cache_dir=arguments.work / "cache")
    rows = []
    for rep in range(arguments.reps):
        order = WIDTHS[rep % len(WIDTHS) :] + WIDTHS[: rep % len(WIDTHS)]
        for width in order:
            job = dataclasses.replace(jobs[width], backend="openvino", threads=arguments.threads)
            tool_ms, tool_command, tool_threads = benchmark_app(job.onnx, arguments.seconds)
            out = arguments.work / "fidelity" / f"rep{rep}-w{width:g}"
            row = run_jobs([job], out, settings, force=True).iloc[0]
            rows.append(
                {
                    "rep": rep,
                    "width": width,
                    "benchmark_app_ms": tool_ms,
                    "benchmark_app_threads": tool_threads,
                    "profiler_p50_ms": row["p50_ms"],
                    "profiler_ci_low_ms": row["ci_low_ms"],
                    "profiler_ci_high_ms": row["ci_high_ms"],
                    "profiler_n": row["n"],
                    "profiler_converged": row["converged"],
                    "profiler_wall_s": row["wall_s"],
                    "status": row["status"],
                }
            )
            print(
                f"rep {rep} width {width}: benchmark_app {tool_ms:.2f} ms, profiler {row['p50_ms']:.2f} ms",
                flush=True,
            )
    raw = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    raw.to_csv(RESULTS / f"{arguments.name}.csv", index=False)

    lines = []
    for width in WIDTHS:
        part = raw[raw["width"] == width]
        tool = statistics.median(part["benchmark_app_ms"])
        ours = statistics.median(part["profiler_p50_ms"])
        paired = statistics.median(part["profiler_p50_ms"] / part["benchmark_app_ms"] - 1) * 100
        verdict = "yes" if abs(paired) <= 5 else "no"  # each pair ran back to back: same conditions
        lines.append(
            f"| {width:g} | {tool:.2f} | {ours:.2f} | {(ours / tool - 1) * 100:+.1f}% | {paired:+.1f}% | "
            f"{verdict} | {', '.join(f'{v:.2f}' for v in part['benchmark_app_ms'])} | "
            f"{', '.join(f'{v:.2f}' for v in part['profiler_p50_ms'])} |"
        )
    within = sum(line.split("|")[6].strip() == "yes" for line in lines)
    threads = sorted(set(raw["benchmark_app_threads"]))
    report = f"""# Profiler fidelity vs OpenVINO benchmark_app

Command: `{command_line()}`

Conditions: {before}

S-MobileNetV2 exports at 1x3x224x224 (`planner.nn.export.export_onnx`), OpenVINO CPU, f32, latency hint.
benchmark_app: `{tool_command.replace(str(job.onnx), "X.onnx")}` per width and repetition (it refuses
`-nthreads` together with `-hint latency`, so threads were left to the hint; it chose
INFERENCE_NUM_THREADS = {threads}); profiler: backend openvino, threads={arguments.threads}, default
settings (95% CI of the median within +-2%, >= 64 queries, <= 30 s). The tools alternate per width,
{arguments.reps} repetitions; the table gives the median over repetitions, and the median of the paired
per-repetition differences (each pair ran back to back, so it is compared under the same
conditions; the verdict uses the paired difference).

{HEADER}
{chr(10).join(lines)}

Goal: each width within +-5%. Result: {within} of {len(WIDTHS)} widths within +-5%.
Raw numbers: results/{arguments.name}.csv.
"""
    (RESULTS / f"{arguments.name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
