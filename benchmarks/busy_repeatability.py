"""Repeatability on a quiet and on a busy machine: contention flags, ranking statistics, interval coverage.

N runs as the machine is, then N runs beside one CPU-spinning process this script starts and stops
itself. Every run is a fresh `run_jobs` (new workers, force) of S-MobileNetV2 at 4 widths; before each run
the load average and the busiest processes (`top`) are recorded, because other people's work shares this
machine and "quiet" only means "no spinner of ours". Reported (issue 14):
- flags: every busy row should be `contended`, no quiet row;
- ranking statistics: for each width, the spread over runs ((max - min) / mean) of each candidate ratio
  to the 1.0x job, quiet and busy, and how far the busy median moved from the quiet one;
- interval coverage: the share of rows whose 95% interval in run k contains the p50 of run k+1 (same
  state), for each candidate interval, all computed from the same runs (the rows keep their round medians).

    python benchmarks/busy_repeatability.py [--runs 5] [--threads 1] [--max-seconds 5]
    python benchmarks/busy_repeatability.py --analyse results/busy_repeatability.csv   # report only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import machine_state
from profiler_common import RESULTS, busy_processes, command_line, conditions, export_widths, runs_parser

from profilers import Settings, run_jobs
from profilers.stats import median_ci

CONFIDENCE = 0.95
COLUMNS = [
    "state", "run", "run_s", "machine", "backend", "width", "p50_ms", "p90_ms", "min_ms", "ci_low_ms",
    "ci_high_ms", "run_spread", "spread_runs", "n", "rounds", "converged", "ratio_to_ref", "ratio_ci_low",
    "ratio_ci_high", "contended", "contention", "other_cores", "load_avg", "steal_pct", "wait_pct", "cpu_mhz",
    "speed_before_ms", "speed_after_ms", "speed_probes_ms", "round_ms", "status",
]  # fmt: skip


def measure(arguments: argparse.Namespace) -> pd.DataFrame:
    jobs = export_widths(arguments.work / "exports")
    all_jobs = [dataclasses.replace(j, threads=arguments.threads) for j in jobs.values()]
    settings = Settings(
        cache_dir=arguments.work / "cache",
        max_seconds=arguments.max_seconds,
        keep_cpus_awake=arguments.keep_cpus_awake,
    )
    shutil.rmtree(settings.cache_dir / "history", ignore_errors=True)  # the first run knows no other
    tables = []
    for state, spinners in (("quiet", 0), ("busy", 1)):
        with busy_processes(spinners):
            for run in range(arguments.runs):
                before = machine_state()
                started = time.perf_counter()
                out = arguments.work / "busy" / f"{state}{run}"
                table = run_jobs(all_jobs, out, dataclasses.replace(settings, seed=run), force=True)
                seconds = time.perf_counter() - started
                print(f"{state} run {run}: {seconds:.0f} s; {before}", flush=True)
                tables.append(table.assign(state=state, run=run, run_s=seconds, machine=before))
    return pd.concat(tables, ignore_index=True)


def rounds_of(row: pd.Series) -> tuple[dict[int, float], dict[int, float]]:
    """A row's burst median and minimum of each round, by round (its `round_ms` column)."""
    data = json.loads(row["round_ms"])
    return dict(zip(data["round"], data["median"], strict=True)), dict(
        zip(data["round"], data["min"], strict=True)
    )


def ranking_statistics(raw: pd.DataFrame) -> pd.DataFrame:
    """Each row's candidate ratios to the 1.0x row of the same run."""
    out = []
    for (state, run), table in raw.groupby(["state", "run"]):
        ref = table[table["width"] == 1.0].iloc[0]
        ref_medians, ref_minima = rounds_of(ref)
        for _, row in table[table["width"] != 1.0].iterrows():
            medians, minima = rounds_of(row)
            shared = sorted(set(medians) & set(ref_medians))
            paired = np.array([medians[r] / ref_medians[r] for r in shared])
            paired_min = np.array([minima[r] / ref_minima[r] for r in shared])
            trimmed = np.sort(paired)[int(0.2 * len(paired)) : len(paired) - int(0.2 * len(paired))]
            low = np.quantile(list(medians.values()), 0.1) / np.quantile(list(ref_medians.values()), 0.1)
            out.append(
                {
                    "state": state,
                    "run": run,
                    "width": row["width"],
                    "paired median ratio": float(np.median(paired)),
                    "p50 ratio": row["p50_ms"] / ref["p50_ms"],
                    "min ratio": row["min_ms"] / ref["min_ms"],
                    "paired min ratio": float(np.median(paired_min)),
                    "20% trimmed mean ratio": float(trimmed.mean()),
                    "p10 of rounds ratio": float(low),
                }
            )
    return pd.DataFrame(out)


def _block_bootstrap(values: np.ndarray, rng: np.random.Generator, draws: int = 400) -> tuple[float, float]:
    """Percentile interval of the median, resampling blocks of consecutive rounds (length ~ sqrt(R))."""
    n = len(values)
    block = max(1, math.ceil(math.sqrt(n)))
    starts = np.arange(n - block + 1)
    medians = []
    for _ in range(draws):
        picks = rng.choice(starts, size=math.ceil(n / block))
        medians.append(np.median(np.concatenate([values[s : s + block] for s in picks])[:n]))
    low, high = np.quantile(medians, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def candidate_intervals(row: pd.Series, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    medians = np.array(list(rounds_of(row)[0].values()))
    center = row["p50_ms"]
    rounds_low, rounds_high = median_ci(medians, CONFIDENCE)
    boot_low, boot_high = _block_bootstrap(medians, rng)

    def widened(low: float, high: float) -> tuple[float, float]:
        return center - math.sqrt(2) * (center - low), center + math.sqrt(2) * (high - center)

    with_history = row.get("spread_runs", 0) >= 2
    return {
        "reported (ci_low_ms, ci_high_ms)": (row["ci_low_ms"], row["ci_high_ms"]),
        f"reported, rows {'with' if with_history else 'without'} a run history": (
            row["ci_low_ms"],
            row["ci_high_ms"],
        ),
        "round medians (order statistics)": (rounds_low, rounds_high),
        "round medians, block bootstrap": (boot_low, boot_high),
        "round medians x sqrt2 (prediction)": widened(rounds_low, rounds_high),
        "block bootstrap x sqrt2 (prediction)": widened(boot_low, boot_high),
    }


def coverage(raw: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = []
    for (state, width), rows in raw.groupby(["state", "width"]):
        rows = rows.sort_values("run").reset_index(drop=True)
        for k in range(len(rows) - 1):
            following = rows.loc[k + 1, "p50_ms"]
            for name, (low, high) in candidate_intervals(rows.loc[k], rng).items():
                out.append(
                    {
                        "state": state,
                        "width": width,
                        "interval": name,
                        "covers": bool(low <= following <= high),
                        "half_width_pct": 50 * (high - low) / rows.loc[k, "p50_ms"],
                    }
                )
    return pd.DataFrame(out)


def _spread(values: pd.Series) -> float:
    return float((values.max() - values.min()) / values.mean())


def report(raw: pd.DataFrame, command: str, conditions_text: str) -> str:
    lines = [
        "# Repeatability on a quiet and a busy machine (issue 14)",
        "",
        f"Command: `{command}`",
        "",
        f"Conditions: {conditions_text}",
        "",
        "`quiet` runs had no spinner of ours, but this 2-core machine is shared with other sessions' test"
        " suites and trainings: the machine state recorded before each run (load average, busiest"
        " processes over 0.5 s) says how quiet they were. `busy` runs add one CPU-spinning process.",
        "",
        "## Runs",
        "",
        "| state | run | seconds | rows flagged | largest other_cores | machine before the run |",
        "|---|---|---|---|---|---|",
    ]
    for (state, run), table in raw.groupby(["state", "run"], sort=False):
        lines.append(
            f"| {state} | {run} | {table['run_s'].iloc[0]:.0f} | {int(table['contended'].sum())} of"
            f" {len(table)} | {table['other_cores'].max():.2f} | {table['machine'].iloc[0]} |"
        )
    for state in ("quiet", "busy"):
        part = raw[raw["state"] == state]
        lines.append("")
        lines.append(
            f"{state}: {int(part['contended'].sum())} of {len(part)} rows flagged contended; other_cores"
            f" median {part['other_cores'].median():.2f}, range {part['other_cores'].min():.2f}-"
            f"{part['other_cores'].max():.2f}."
        )
    stats = ranking_statistics(raw)
    names = [c for c in stats.columns if c not in ("state", "run", "width")]
    lines += [
        "",
        "## Ranking statistics: spread over runs, and the move from quiet to busy",
        "",
        "Spread = (max - min) / mean over the runs of one state; shift = |busy median / quiet median - 1|.",
        "",
        "| statistic | width | quiet values | quiet spread | busy values | busy spread | shift |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for name in names:
        for width, rows in stats.groupby("width"):
            quiet = rows.loc[rows["state"] == "quiet", name]
            busy = rows.loc[rows["state"] == "busy", name]
            shift = abs(busy.median() / quiet.median() - 1)
            summary.append((name, _spread(quiet), _spread(busy), shift))
            lines.append(
                f"| {name} | {width:g} | {', '.join(f'{v:.3f}' for v in quiet)} | {_spread(quiet):.1%} |"
                f" {', '.join(f'{v:.3f}' for v in busy)} | {_spread(busy):.1%} | {shift:.1%} |"
            )
    lines += [
        "",
        "Over the widths: largest (and median) spread and shift.",
        "",
        "| statistic | quiet spread | busy spread | shift quiet to busy |",
        "|---|---|---|---|",
    ]
    frame = pd.DataFrame(summary, columns=["name", "quiet", "busy", "shift"]).groupby("name", sort=False)
    for name, row in frame.max().iterrows():
        middle = frame.median().loc[name]
        lines.append(
            f"| {name} | {row['quiet']:.1%} ({middle['quiet']:.1%}) | {row['busy']:.1%}"
            f" ({middle['busy']:.1%}) | {row['shift']:.1%} ({middle['shift']:.1%}) |"
        )
    covered = coverage(raw)
    lines += [
        "",
        "## Interval coverage: does run k's 95% interval contain run k+1's p50?",
        "",
        "`reported` is what the profiler that ran wrote into the rows: before issue 14's interval commit the"
        " order-statistic interval of all samples, then the round medians' interval x sqrt2, and since the"
        " run history (profilers/history.py) the union of that with the host's run-to-run interval where"
        " the history holds two runs or more of the same state (the history starts empty, so each state's"
        " first run has none). The rows after it split `reported` by that.",
        "",
        "| interval | quiet coverage | busy coverage | median half-width |",
        "|---|---|---|---|",
    ]
    for name, rows in covered.groupby("interval", sort=False):
        quiet = rows[rows["state"] == "quiet"]
        busy = rows[rows["state"] == "busy"]
        lines.append(
            f"| {name} | {quiet['covers'].mean():.0%} ({int(quiet['covers'].sum())}/{len(quiet)}) |"
            f" {busy['covers'].mean():.0%} ({int(busy['covers'].sum())}/{len(busy)}) |"
            f" {rows['half_width_pct'].median():.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = runs_parser(__doc__.splitlines()[0], runs=5, max_seconds=5.0)
    parser.add_argument("--analyse", type=Path, help="only write the report from this CSV")
    parser.add_argument("--name", default="busy_repeatability")
    parser.add_argument(
        "--keep-cpus-awake", action="store_true", help="hold idle CPUs out of their idle states (needs root)"
    )
    arguments = parser.parse_args()
    if arguments.analyse:
        raw = pd.read_csv(arguments.analyse)
        text = (RESULTS / f"{arguments.name}.md").read_text().split("\n")
        command = next(line for line in text if line.startswith("Command:"))[len("Command: `") : -1]
        conditions_text = next(line for line in text if line.startswith("Conditions:"))[len("Conditions: ") :]
    else:
        conditions_text = conditions()
        command = command_line()
        raw = measure(arguments)
        RESULTS.mkdir(exist_ok=True)
        raw[COLUMNS].to_csv(RESULTS / f"{arguments.name}.csv", index=False)
    (RESULTS / f"{arguments.name}.md").write_text(report(raw, command, conditions_text))
    print((RESULTS / f"{arguments.name}.md").read_text())


if __name__ == "__main__":
    main()
