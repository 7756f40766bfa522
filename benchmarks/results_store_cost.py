"""Cost: the parent's time to write one finished row into the results table, as the table grows.

`LatencyStore.add` rewrites latency.parquet and latency.csv after every finished job, so that an
interrupted run keeps every row so far. A LUT build writes hundreds of rows; this times each write of a
realistic row (every schema column filled, as the profiler fills them) at table sizes 1 to --rows, and
prints the median time per write around a few sizes. Run it once per commit to compare, e.g. an older
one from a worktree with `PYTHONPATH=WORKTREE python benchmarks/results_store_cost.py`.

    python benchmarks/results_store_cost.py [--rows 512]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from machine import machine_state

import profilers
from profilers.results import SCHEMA, LatencyStore, load_latency

SIZES = (16, 64, 128, 256, 512)


def realistic_row(index: int) -> dict:
    """A row like the profiler's: text, numbers, flags and a long round_ms column."""
    row: dict = {}
    for column, dtype in SCHEMA.items():
        if dtype == "string":
            row[column] = f"{column}-{index % 7}"
        elif dtype == "float64":
            row[column] = 1.0 + index / 1000
        elif dtype == "Int64":
            row[column] = index
        else:
            row[column] = index % 2 == 0
    row.update(config_id=f"config-{index}", status="ok", batch=1, error=None, estimated=False)
    row["round_ms"] = "{" + ", ".join(f'"{r}": {1 + r / 100:.4f}' for r in range(60)) + "}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    args = parser.parse_args()
    print(f"profilers from {Path(profilers.__file__).parent}; {machine_state()}")
    seconds = []
    with tempfile.TemporaryDirectory(prefix="store_cost-") as work:
        store = LatencyStore(Path(work))
        for index in range(args.rows):
            started = time.perf_counter()
            store.add(realistic_row(index))
            seconds.append(time.perf_counter() - started)
        assert len(load_latency(Path(work))) == args.rows
    for size in (s for s in SIZES if s <= args.rows):
        around = seconds[max(size - 8, 0) : size]
        print(f"table of {size:4d} rows: {1000 * statistics.median(around):6.1f} ms per row written")
    total = sum(seconds)
    print(f"all {args.rows} rows: {total:.1f} s ({1000 * total / args.rows:.1f} ms per row on average)")


if __name__ == "__main__":
    main()
