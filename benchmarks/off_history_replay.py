"""Replay the committed busy_repeatability runs through `off_history`: which rows' medians lay beyond the
interval the same jobs' earlier runs predicted, as `planner profile` now warns.

Offline: no measurement. Each ok row of results/busy_repeatability*.csv is recorded, in the order its runs
ran, into a history (`history_replay.history_entries`: crowded rows told apart as there), and compared with
the earlier runs before it by the profiler's own `profilers.history.compared_with_earlier_runs`. A state's
first run has nothing to compare with.
"""

from __future__ import annotations

import pandas as pd
from history_replay import history_entries, replay_arguments, report_head
from profiler_common import RESULTS

from profilers.history import COLUMNS, compared_with_earlier_runs


def replay(table: pd.DataFrame, threads: int) -> pd.DataFrame:
    records = pd.DataFrame(columns=COLUMNS)
    rows = []
    for row, state, entry in history_entries(table, True, threads):
        records = pd.concat([records, pd.DataFrame([entry])], ignore_index=True)
        center, off = compared_with_earlier_runs(records, entry, state)
        if off is not None:
            rows.append({"state": row.state, "run": row.run, "off": off, "move": row.p50_ms / center - 1})
    return pd.DataFrame(rows, columns=["state", "run", "off", "move"])


def main() -> None:
    arguments = replay_arguments(__doc__)
    lines = [
        *report_head("Rows off their earlier runs, replayed (issue 14)", __doc__),
        "| run (results/) | state | rows off / compared | runs they fell in | their moves |",
        "|---|---|---|---|---|",
    ]
    totals = {"quiet": [0, 0], "busy": [0, 0]}
    for path in sorted(RESULTS.glob("busy_repeatability*.csv")):
        compared = replay(pd.read_csv(path), arguments.threads)
        for state in ("quiet", "busy"):
            part = compared[compared["state"] == state]
            off = part[part["off"]]
            totals[state][0] += len(off)
            totals[state][1] += len(part)
            runs = ", ".join(str(run) for run in sorted(off["run"].unique())) or "-"
            moves = ", ".join(f"{move:+.0%}" for move in off["move"]) or "-"
            lines.append(f"| {path.stem} | {state} | {len(off)} / {len(part)} | {runs} | {moves} |")
    lines += [
        "",
        *(f"All files, {state}: {off} of {compared} rows off." for state, (off, compared) in totals.items()),
        "",
    ]
    (arguments.out / "off_history_replay.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
