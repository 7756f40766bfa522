"""Replay every committed repeatability run (results/busy_repeatability*.csv) with each candidate ranking
statistic (issue 14, part 3): is the statistic the profiler ranks by (the paired minimum ratio) still the
most stable over all the days this host was measured, and does any other meet the spread goals where it
misses them? Beside each run, the host's speed index (the best of 50 sorts, profilers.load), because this
host's speed itself moved between days.

Offline: no measurement. Each row keeps its round medians and minima (`round_ms`), so every statistic is
computed from the same rounds.

    python benchmarks/ranking_statistics_replay.py
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from busy_repeatability import ranking_statistics, rounds_of
from profiler_common import RESULTS, command_line

from planner.search.lut_runs import STEADY_BAND, STEADY_ROUNDS

RATIO_GOALS = {"quiet": 0.03, "busy": 0.05}  # issue 14: ratio spread over runs, quiet and busy
CURRENT = "paired min ratio"  # profilers.scheduler._Measurement.ratio


def steady_pairs(mine: np.ndarray, ref: np.ndarray, ref_medians: np.ndarray) -> dict[str, float]:
    """Paired ratios of round minima over steady rounds only: the latency table's rule (the reference's
    burst median within STEADY_BAND of its fastest, planner.search.lut_runs), and a stricter one (both
    minima within it of their own fastest), which falls back to every round when fewer than STEADY_ROUNDS
    are left."""
    ratios = mine / ref
    by_reference = ref_medians <= ref_medians.min() * (1 + STEADY_BAND)
    both = (ref <= ref.min() * (1 + STEADY_BAND)) & (mine <= mine.min() * (1 + STEADY_BAND))
    if both.sum() < STEADY_ROUNDS:
        both = np.ones_like(both)
    return {
        "paired min ratio, the LUT's steady rounds": float(np.median(ratios[by_reference])),
        "paired min ratio, rounds steady for both": float(np.median(ratios[both])),
    }


def two_speed_statistics(raw: pd.DataFrame) -> pd.DataFrame:
    """Candidates aimed at a host that flips between two speeds: pair only the rounds in which the
    reference ran in its faster half, or in its steady rounds, or compare low quantiles and sums of the
    round minima."""
    out = []
    for (state, run), table in raw.groupby(["state", "run"]):
        ref_medians, ref_minima = rounds_of(table[table["width"] == 1.0].iloc[0])
        for _, row in table[table["width"] != 1.0].iterrows():
            _, minima = rounds_of(row)
            shared = sorted(set(minima) & set(ref_minima))
            cut = np.median([ref_minima[r] for r in shared])
            fast = [r for r in shared if ref_minima[r] <= cut]
            mine, ref = np.array([minima[r] for r in shared]), np.array([ref_minima[r] for r in shared])
            steady = steady_pairs(mine, ref, np.array([ref_medians[r] for r in shared]))
            out.append(
                {
                    "state": state,
                    "run": run,
                    "width": row["width"],
                    "paired min ratio, reference's fast half": float(
                        np.median([minima[r] / ref_minima[r] for r in fast])
                    ),
                    "q25 of round minima ratio": float(np.quantile(mine, 0.25) / np.quantile(ref, 0.25)),
                    "sum of round minima ratio": float(mine.sum() / ref.sum()),
                    **steady,
                }
            )
    return pd.DataFrame(out)


def largest_spreads(raw: pd.DataFrame) -> pd.DataFrame:
    """Per statistic and state: the largest spread ((max - min) / mean over runs) over the widths."""
    keys = ["state", "run", "width"]
    values = ranking_statistics(raw).merge(two_speed_statistics(raw), on=keys)
    long = values.melt(id_vars=keys, var_name="statistic", value_name="ratio")
    by_width = long.groupby(["statistic", "state", "width"])["ratio"]
    spread = by_width.agg(lambda v: (v.max() - v.min()) / v.mean())
    return spread.groupby(["statistic", "state"]).max().unstack("state")


def replay(names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run file and statistic, one row per run file: date, host speed, states)."""
    spreads, runs = [], []
    for name in names:
        raw = pd.read_csv(RESULTS / f"{name}.csv")
        raw = raw[raw["status"] == "ok"]
        conditions = (RESULTS / f"{name}.md").read_text().split("Conditions: ")[1].split(" on ")[0]
        runs.append(
            {
                "run file": name,
                "when": conditions,
                "speed index ms": float(raw["speed_before_ms"].median()),
                "1.0x p50 ms (quiet)": float(raw.query("state == 'quiet' and width == 1")["p50_ms"].median()),
            }
        )
        spreads.append(largest_spreads(raw).reset_index().assign(**{"run file": name}))
    return pd.concat(spreads, ignore_index=True), pd.DataFrame(runs)


def report(spreads: pd.DataFrame, runs: pd.DataFrame, command: str) -> str:
    lines = [
        "# Ranking statistics replayed over every committed repeatability run (issue 14)",
        "",
        f"Command: `{command}` (offline: reads results/busy_repeatability*.csv, measures nothing)",
        "",
        "Each run file holds 5 (or 4) quiet and 5 busy runs of S-MobileNetV2 at 4 widths "
        "(benchmarks/busy_repeatability.py), measured by the profiler of its day (its rounds are the same "
        "for every statistic below); its .md says what else ran on the machine. A statistic's "
        "spread is the largest over the widths of (max - min) / mean of its ratio to 1.0x over the runs of "
        f"one state. Goals: <= {RATIO_GOALS['quiet']:.0%} quiet, <= {RATIO_GOALS['busy']:.0%} busy. "
        f"The profiler ranks by the {CURRENT}.",
        "",
        "## The runs, and the host's speed when each ran",
        "",
        runs.to_markdown(index=False, floatfmt=".3f"),
        "",
        "## Spread of each statistic in each run file",
        "",
        "Columns: the run file's name after busy_repeatability.",
        "",
    ]
    short = spreads.assign(**{"run file": spreads["run file"].str.removeprefix("busy_repeatability")})
    short["run file"] = short["run file"].replace("", "(first)")
    table = short.pivot(index="run file", columns="statistic", values=["quiet", "busy"])
    for state in ("quiet", "busy"):
        shown = (table[state] * 100).round(1).astype(str) + "%"
        lines += [f"{state}:", "", shown.T.to_markdown(), ""]
    lines += ["## Over all run files", ""]
    summary = []
    for statistic, group in spreads.groupby("statistic"):
        quiet_met, busy_met = ((group[state] <= RATIO_GOALS[state]).sum() for state in ("quiet", "busy"))
        summary.append(
            {
                "statistic": statistic,
                "median quiet spread": f"{group['quiet'].median():.1%}",
                "median busy spread": f"{group['busy'].median():.1%}",
                "files meeting the quiet goal": f"{quiet_met} of {len(group)}",
                "files meeting the busy goal": f"{busy_met} of {len(group)}",
            }
        )
    lines += [pd.DataFrame(summary).to_markdown(index=False), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="ranking_statistics_replay")
    arguments = parser.parse_args()
    names = sorted(path.stem for path in RESULTS.glob("busy_repeatability*.csv"))
    spreads, runs = replay(names)
    text = report(spreads, runs, command_line())
    (RESULTS / f"{arguments.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
