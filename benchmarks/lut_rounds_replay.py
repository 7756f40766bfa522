"""Replay the committed LUT checks with only the steady rounds counted (issue 14): how many configurations
the table predicts within +-10% when a configuration's ratio to the full width comes from the rounds in
which the host ran at its fastest (`planner.search.lut_runs.anchored_latency`), against the figure each
check reported when it ran.

Offline: no measurement. `--collect NAME=WORKDIR ...` first copies, from a check's work directory, the raw
rows of the groups that measured its configurations (every try, with each job's bursts by round) and the
table's full-width latency at the build into results/lut_rounds_replay_raw.parquet; the replay then reads
only that file. The tries are those the check measured, under the rule of its day: the replay counts rounds
anew, it does not measure the groups the new rule would have measured again.

    python benchmarks/lut_rounds_replay.py
    (the raw rows were collected with --collect legr_lut_error_spanning_quiet=/tmp/legr_lut_quiet, and the
    same for _night, _night2, _steady, _fast, _rule, _layers, _layers2, _busy1, _busy1b, each with the
    --work directory its own .md names; those directories were this machine's /tmp)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from profiler_common import RESULTS, command_line

from planner.search.lut import within
from planner.search.lut_runs import STEADY_BAND, STEADY_ROUNDS, anchored_latency
from profilers.results import load_latency

RAW = RESULTS / "lut_rounds_replay_raw.parquet"
COLUMNS = ["run", "group", "config_id", "status", "p50_ms", "ref_config_id", "ratio_to_ref", "round_ms"]


def collect(name: str, work: Path, model: str = "s_mobilenet_v2", target: str = "cpu") -> pd.DataFrame:
    """The raw rows of the groups holding the configurations of results/NAME.csv, with the table's anchor."""
    checked = set(pd.read_csv(RESULTS / f"{name}.csv")["config_id"])
    table = json.loads((work / "lut" / f"{target}-{model}.json").read_text())
    frames = []
    for directory in sorted((work / "lut" / f"{target}-{model}" / "anchored").iterdir()):
        rows = load_latency(directory)
        if checked & set(rows["config_id"]):
            frames.append(rows.assign(run=name, group=directory.name))
    rows = pd.concat(frames, ignore_index=True)
    return rows[COLUMNS].assign(
        contended=rows["contended"].astype(bool), table_anchor_ms=table["calibration"]["anchor_ms"]
    )


def replay(raw: pd.DataFrame, name: str) -> dict[str, object]:
    """One check: its reported share within 10%, and the share with steady rounds only."""
    checked = pd.read_csv(RESULTS / f"{name}.csv").set_index("config_id")
    rows = raw[raw["run"] == name]
    anchor_id = rows.loc[rows["config_id"] == rows["ref_config_id"], "config_id"].iloc[0]
    first_try = rows["group"].str.split("-retry").str[0]
    tries = first_try.map(rows.groupby(first_try)["group"].nunique())
    frame = anchored_latency(rows.assign(tries=tries), anchor_id, f"{name}: no full width measured")
    level = frame["anchored_ms"].iloc[0]  # the full width's row comes first
    frame = frame[frame["config_id"].isin(checked.index)].set_index("config_id")
    built = checked.loc[frame.index, "built_predicted_ms"]
    errors = built / (rows["table_anchor_ms"].iloc[0] * frame["anchored_ms"] / level) - 1
    return {
        "check": name,
        "configurations": len(checked),
        "groups": first_try.nunique(),
        "tries": rows["group"].nunique(),
        "reported within 10%": within(checked["error"]),
        "steady rounds within 10%": within(errors),
        "without a steady round": int((frame["steady_rounds"] == 0).sum()),
        f"with fewer than {STEADY_ROUNDS}": int((frame["steady_rounds"] < STEADY_ROUNDS).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", nargs="*", default=[], metavar="NAME=WORKDIR")
    parser.add_argument("--name", default="lut_rounds_replay")
    args = parser.parse_args()
    if args.collect:
        pairs = [item.split("=", 1) for item in args.collect]
        pd.concat([collect(name, Path(work)) for name, work in pairs], ignore_index=True).to_parquet(RAW)
    raw = pd.read_parquet(RAW)
    table = pd.DataFrame([replay(raw, name) for name in dict.fromkeys(raw["run"])])
    lines = [
        "# LUT checks replayed with only the steady rounds counted (issue 14)",
        "",
        f"Command: `{command_line()}`",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"A round is steady when the full width's burst in it ran within {STEADY_BAND:.0%} of the full "
        "width's fastest median in any group of the check; a configuration's ratio is its median ratio of "
        "burst minima to the full width's over the steady rounds of its try with the most of them (without "
        "one, the profiler's ratio over all rounds). The error is the table's prediction, re-anchored, "
        "against that ratio, as `lut check` computes it.",
        "",
        table.to_markdown(index=False, floatfmt=".0%"),
        "",
        f"Raw rows: {RAW.name}.",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
