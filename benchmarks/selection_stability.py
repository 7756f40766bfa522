"""Selection stability (issue 14): profile + select 10 times at three budgets; does the choice hold?

S-MobileNetV2 at 4 widths (224x224, onnxruntime CPU) with their published ImageNet top-1
(results/reference_imagenet_accuracy.csv): one calibration run sets three latency budgets (tight, middle,
loose: midway between the bounds of neighbouring widths), then N fresh runs (`run_jobs`, force) are each
followed by `select` at every budget, for p50 (against the upper end of the re-run interval) and p90.
Goal: the same choice in >= 9 of 10 runs wherever the selection did not say the choice was within noise.
Also reported: how often run k's interval held run k+1's p50 (the reported, re-run interval).

    python benchmarks/selection_stability.py [--runs 10] [--threads 1] [--max-seconds 3]
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import pandas as pd
from machine import machine_state
from profiler_common import RESULTS, command_line, conditions, export_widths, runs_parser

from planner.plan.pareto import candidates
from planner.plan.select import Budget, select
from profilers import Settings, run_jobs

BUDGETS = ("tight", "middle", "loose")


def accuracy_table(jobs: dict) -> pd.DataFrame:
    reference = pd.read_csv(RESULTS / "reference_imagenet_accuracy.csv")
    top1 = reference[(reference["metric"] == "top1") & (reference["model"] == "s_mobilenet_v2")]
    top1 = top1.set_index("width")["value"]
    return pd.DataFrame(
        [
            {
                "model": job.metadata["model"],
                "config_id": job.metadata["config_id"],
                "width": width,
                "metric": "top1",
                "value": float(top1[width]),
                "dataset": "imagenet",
                "split": "val",
                "checkpoint": "reference",
                "source": "imported",
                "timestamp": "2026-11-30T00:00:00+00:00",
            }
            for width, job in jobs.items()
        ]
    )


def budgets_from(table: pd.DataFrame, metric: str) -> dict[str, float]:
    """Midway between the bounds of neighbouring widths (0.35|0.5, 0.5|0.75, 0.75|1.0)."""
    bounds = table.sort_values("width")["bound_ms"].to_numpy()
    return {name: float((bounds[i] + bounds[i + 1]) / 2) for i, name in enumerate(BUDGETS)}


def main() -> None:
    parser = runs_parser(__doc__.splitlines()[0], runs=10, max_seconds=3.0)
    parser.add_argument("--name", default="selection_stability", help="results/NAME.md and .csv")
    arguments = parser.parse_args()
    before = conditions()
    jobs = export_widths(arguments.work / "exports")
    accuracy = accuracy_table(jobs)
    all_jobs = [dataclasses.replace(j, threads=arguments.threads) for j in jobs.values()]
    settings = Settings(cache_dir=arguments.work / "cache", max_seconds=arguments.max_seconds)
    shutil.rmtree(settings.cache_dir / "history", ignore_errors=True)  # the calibration run is the first

    def profile(run: int) -> tuple[pd.DataFrame, float, str]:
        state = machine_state()
        started = time.perf_counter()
        out = arguments.work / "selection" / f"run{run}"
        table = run_jobs(all_jobs, out, dataclasses.replace(settings, seed=100 + run), force=True)
        return table, time.perf_counter() - started, state

    calibration, _, calibration_state = profile(-1)
    budgets = {m: budgets_from(candidates(calibration, accuracy, "cpu", metric=m), m) for m in ("p50", "p90")}
    rows, latency = [], []
    for run in range(arguments.runs):
        table, seconds, state = profile(run)
        print(f"run {run}: {seconds:.0f} s; {state}", flush=True)
        latency.append(table.assign(run=run))
        for metric, levels in budgets.items():
            ranked = candidates(table, accuracy, "cpu", metric=metric)
            for name, budget_ms in levels.items():
                selection = select(ranked, Budget(budget_ms, metric))
                choice = selection.choice
                rows.append(
                    {
                        "run": run,
                        "metric": metric,
                        "budget": name,
                        "budget_ms": budget_ms,
                        "choice": f"{choice['width']:g}x" if choice is not None else "none",
                        "within_noise": selection.within_noise,
                        "margins": "; ".join(m.describe() for m in selection.margins),
                        "contended_rows": int(table["contended"].sum()),
                        "off_history_rows": int(table["off_history"].fillna(False).sum()),
                        "run_s": seconds,
                        "machine": state,
                    }
                )
    frame = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / f"{arguments.name}.csv", index=False)
    measured = pd.concat(latency, ignore_index=True)
    contended_runs = int((frame.groupby("run")["contended_rows"].first() > 0).sum())

    lines = [
        "# Selection stability (issue 14)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Conditions: {before} Calibration run: {calibration_state}.",
        "",
        f"{contended_runs} of {arguments.runs} runs had rows flagged contended: other sessions share this"
        " 2-core machine (each run's state and `contended_rows` below).",
        "",
        "A selection is flagged within noise when the choice's or the nearest more accurate miss's margin to"
        " the budget lies within its row's run-to-run spread, or that row was measured contended or off its"
        " job's earlier runs (`planner.plan.select.Margin`).",
        "",
        "Budgets (from the calibration run): "
        + "; ".join(
            f"{metric}: " + ", ".join(f"{name} {value:.3f} ms" for name, value in levels.items())
            for metric, levels in budgets.items()
        ),
        "",
        "| metric | budget | choices over the runs | flagged within noise | same choice among unflagged |",
        "|---|---|---|---|---|",
    ]
    for (metric, name), group in frame.groupby(["metric", "budget"], sort=False):
        unflagged = group[~group["within_noise"]]
        if len(unflagged):
            mode = unflagged["choice"].mode().iloc[0]
            held = f"{int((unflagged['choice'] == mode).sum())} of {len(unflagged)} ({mode})"
        else:
            held = "- (every run flagged)"
        lines.append(
            f"| {metric} | {name} | {', '.join(group['choice'])} | {int(group['within_noise'].sum())} of"
            f" {len(group)} | {held} |"
        )
    covered = []
    for _, rows_of_width in measured.groupby("width"):
        ordered = rows_of_width.sort_values("run").reset_index(drop=True)
        for k in range(len(ordered) - 1):
            covered.append(
                ordered.loc[k, "ci_low_ms"] <= ordered.loc[k + 1, "p50_ms"] <= ordered.loc[k, "ci_high_ms"]
            )
    half = ((measured["ci_high_ms"] - measured["ci_low_ms"]) / 2 / measured["p50_ms"]).median()
    lines += [
        "",
        f"Interval coverage (reported re-run interval of run k holds run k+1's p50): {sum(covered)} of"
        f" {len(covered)} ({sum(covered) / len(covered):.0%}); median half-width {half:.1%}.",
        f"Rows flagged contended: {int(measured['contended'].sum())} of {len(measured)}; other_cores median"
        f" {measured['other_cores'].median():.2f}.",
        "",
        "| run | seconds | contended rows | rows off their earlier runs | machine before the run |",
        "|---|---|---|---|---|",
    ]
    for run, group in frame.groupby("run"):
        first = group.iloc[0]
        lines.append(
            f"| {run} | {first['run_s']:.0f} | {first['contended_rows']} of 4 |"
            f" {first['off_history_rows']} of 4 | {first['machine']} |"
        )
    (RESULTS / f"{arguments.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
