"""CPU-spinning processes for the tests that need a busy machine (contention flags, waiting for quiet), and
the machine state a measured row records."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

from profilers import Settings
from profilers.history import machine_state


def _spin(started, stop) -> None:
    started.wait()
    while not stop.is_set():
        pass


@contextmanager
def spinning(count: int) -> Iterator[list[int]]:
    """`count` processes busy-looping until the block ends, all spinning when the block starts (a
    measurement shorter than their start-up would otherwise see a quiet machine); yields their pids."""
    stop = multiprocessing.Event()
    started = multiprocessing.Barrier(count + 1)
    processes = [
        multiprocessing.Process(target=_spin, args=(started, stop), daemon=True) for _ in range(count)
    ]
    for process in processes:
        process.start()
    started.wait(timeout=30)
    try:
        yield [process.pid for process in processes]
    finally:
        stop.set()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()


def row_state(row: pd.Series) -> str:
    """The history state a row was measured in, from its own columns."""
    others_busy = row["other_cores"] > Settings().contention_cores
    return machine_state(bool(row["contended"]), row["wait_pct"] / 100, others_busy)
