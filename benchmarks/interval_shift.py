"""Is a run's shift the machine's state over time, or the worker processes it happened to start?

Every run measures S-MobileNetV2 at 4 widths twice: copy a and copy b of each job, eight worker processes
alive at once, their bursts interleaved in the same shuffled rounds. If a run's common shift came from its
processes (memory layout, thread placement), the copies would differ as much as the runs do; if it is the
machine's state over time, the copies agree and the runs do not. This decides where an honest interval's
width can come from (profilers/history.py, issue 14).

    python benchmarks/interval_shift.py [--runs 4] [--max-seconds 3]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from profiler_common import RESULTS, command_line, conditions, export_widths, runs_parser

from profilers import Job, Settings, run_jobs


def measure(runs: int, threads: int, max_seconds: float, work) -> pd.DataFrame:
    widths = export_widths(work / "exports")
    jobs = []
    for copy in "ab":
        for job in widths.values():
            metadata = {**job.metadata, "config_id": f"{job.metadata['config_id']}-{copy}", "copy": copy}
            jobs.append(Job(job.onnx, threads=threads, metadata=metadata))
    settings = Settings(cache_dir=work / "shift-cache", max_seconds=max_seconds, max_workers=len(jobs))
    tables = []
    for run in range(runs):
        out = work / "shift" / f"run{run}"
        table = run_jobs(jobs, out, dataclasses.replace(settings, seed=run), force=True)
        print(f"run {run}: other cores up to {table['other_cores'].max():.2f}", flush=True)
        tables.append(table.assign(run=run))
    columns = ["run", "copy", "width", "p50_ms", "contended", "other_cores"]
    return pd.concat(tables, ignore_index=True)[columns]


def report(raw: pd.DataFrame, command: str, conditions_text: str) -> str:
    p50 = raw.pivot_table(index=["run", "copy"], columns="width", values="p50_ms")
    logs = np.log(p50)
    deviation = 100 * (logs - logs.mean())
    copies = 100 * (logs.xs("b", level="copy") - logs.xs("a", level="copy"))
    run_means = logs.groupby(level="run").mean()
    common = 100 * (run_means.mean(axis=1) - run_means.mean(axis=1).mean())
    lines = [
        "# A run's shift: the machine over time, or the processes? (issue 14)",
        "",
        f"Command: `{command}`",
        "",
        f"Conditions: {conditions_text}",
        "",
        "Each run measures every width twice (copies a and b: separate worker processes, alive together, "
        "bursts interleaved in the same rounds).",
        "",
        "## Each row's p50, % from that width's mean over all runs and copies",
        "",
        "| run | copy | " + " | ".join(f"{w:g}x" for w in p50.columns) + " | contended rows |",
        "|---|---|" + "---|" * len(p50.columns) + "---|",
    ]
    flags = raw.groupby(["run", "copy"])["contended"].sum()
    for (run, copy), row in deviation.iterrows():
        cells = " | ".join(f"{value:+.1f}" for value in row)
        lines.append(f"| {run} | {copy} | {cells} | {int(flags[(run, copy)])} of {len(row)} |")
    lines += [
        "",
        "## Between the copies of one run, and between runs",
        "",
        f"- copy b against copy a of the same job in the same run: median |difference| "
        f"{np.median(np.abs(copies.values)):.1f}%, largest {np.abs(copies.values).max():.1f}%",
        "- a run's common shift (the mean over its 8 jobs, from the mean over runs): "
        + ", ".join(f"{value:+.1f}%" for value in common)
        + f"; spread (max - min) {common.max() - common.min():.1f}%",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = runs_parser(__doc__.splitlines()[0], runs=4, max_seconds=3.0)
    arguments = parser.parse_args()
    conditions_text = conditions()
    raw = measure(arguments.runs, arguments.threads, arguments.max_seconds, arguments.work)
    RESULTS.mkdir(exist_ok=True)
    raw.to_csv(RESULTS / "interval_shift.csv", index=False)
    (RESULTS / "interval_shift.md").write_text(report(raw, command_line(), conditions_text))
    print((RESULTS / "interval_shift.md").read_text())


if __name__ == "__main__":
    main()
