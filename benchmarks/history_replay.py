"""Replay the committed busy_repeatability runs through the run history: how often run k's interval holds run
k+1's median when the history tells crowded runs apart from busy ones, and when it does not.

Offline: no measurement. Each row of results/busy_repeatability*.csv is recorded, in the order its runs
ran, into a history built with the profiler's own functions (`profilers.history`), and its interval is
rebuilt as the profiler builds it: the within-run interval of its round medians (`rerun_interval`, with
the row's p50 as the center, as the samples themselves are not in the CSV) joined with its state's
run-to-run interval. `two states` is the history before crowded runs were told apart (every contended row
busy); `three states` tells them apart. The profiler calls a contended row crowded when its threads waited
for a CPU more than 20% of the time (`wait_pct`, `profilers.history.machine_state`), which these runs did
not record yet; here a row counts as crowded when other processes used more than the one core its one
thread left free, by over `contention_cores` (the two spinners of tests/test_profilers.py read 1.21-1.35
such cores with 39% waiting; one spinner on the spare core 1.01 with 10%).
Coverage is counted as busy_repeatability.py counts it: consecutive runs of one benchmark state and width.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from profiler_common import RESULTS, command_line

from profilers.history import BUSY, COLUMNS, CROWDED, QUIET, state_spread
from profilers.jobs import Settings
from profilers.stats import rerun_interval

CORES = 2


def history_entries(table: pd.DataFrame, three_states: bool, threads: int) -> Iterator[tuple[Any, str, dict]]:
    """Each ok row in the order its run ran, its machine state, and its run-history record."""
    table = table.assign(order=table["state"].map({"quiet": 0, "busy": 1})).sort_values(["order", "run"])
    limit = Settings().contention_cores
    for row in table[table["status"] == "ok"].itertuples():
        crowded = row.other_cores > CORES - threads + limit
        state = QUIET if not row.contended else CROWDED if crowded and three_states else BUSY
        entry = {
            "run_id": f"{row.state}{row.run}", "timestamp": f"{row.order}-{row.run:04d}",
            "onnx": str(row.width),
            "backend": row.backend, "device": "cpu", "precision": "fp32", "batch": 1, "threads": threads,
            "contended": state != QUIET, "crowded": state == CROWDED, "p50_ms": row.p50_ms, "ratio": np.nan,
        }  # fmt: skip
        yield row, state, entry


def replay(table: pd.DataFrame, three_states: bool, threads: int) -> pd.DataFrame:
    """Each ok row's interval, as the profiler would have reported it with this history."""
    records = pd.DataFrame(columns=COLUMNS)
    rows = []
    for row, state, entry in history_entries(table, three_states, threads):
        records = pd.concat([records, pd.DataFrame([entry])], ignore_index=True)
        rounds = np.array(json.loads(row.round_ms)["median"])
        within = rerun_interval(np.array([row.p50_ms]), rounds)
        low, high = state_spread(records, row.backend, "cpu", state).joined(*within, row.p50_ms)
        rows.append({"state": row.state, "run": row.run, "width": row.width, "p50_ms": row.p50_ms,
                     "low": low, "high": high, "history_state": state})  # fmt: skip
    return pd.DataFrame(rows)


def coverage(intervals: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark state: how many of run k's intervals held run k+1's p50; the median half-width."""
    pairs = []
    for (state, _), runs in intervals.groupby(["state", "width"]):
        runs = runs.sort_values("run")
        for now, following in zip(runs.iloc[:-1].itertuples(), runs.iloc[1:].itertuples(), strict=True):
            held = now.low <= following.p50_ms <= now.high
            pairs.append({"state": state, "held": held, "half": (now.high - now.low) / 2 / now.p50_ms})
    return (
        pd.DataFrame(pairs)
        .groupby("state")
        .agg(held=("held", "sum"), pairs=("held", "size"), half=("half", "median"))
    )


def replay_arguments(doc: str) -> argparse.Namespace:
    """The options of a replay over the committed runs: the threads they used, where the report goes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="the threads the replayed runs used")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def report_head(title: str, doc: str) -> list[str]:
    """A replay report's title, command and method (the script's docstring after its first paragraph)."""
    method = doc.split("\n\n", 1)[1].strip().replace("\n", " ")
    return [f"# {title}", "", f"Command: `{command_line()}`", "", method, ""]


def main() -> None:
    arguments = replay_arguments(__doc__)
    lines = [
        *report_head("The run history replayed: crowded runs apart from busy ones (issue 14)", __doc__),
        "| run (results/) | state | two states: coverage | half-width | three states: coverage | half-width "
        "| crowded rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("busy_repeatability*.csv")):
        table = pd.read_csv(path)
        two = coverage(replay(table, False, arguments.threads))
        replayed = replay(table, True, arguments.threads)
        three = coverage(replayed)
        for state in ("quiet", "busy"):
            crowded = (replayed[replayed["state"] == state]["history_state"] == CROWDED).sum()
            cells = [
                f"{c.held / c.pairs:.0%} ({c.held:.0f}/{c.pairs:.0f}) | {c.half:.0%}"
                for c in (two.loc[state], three.loc[state])
            ]
            lines.append(f"| {path.stem} | {state} | {cells[0]} | {cells[1]} | {crowded} |")
    lines.append("")
    (arguments.out / "history_replay.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
