"""CPU-spinning processes for the tests that need a busy machine (contention flags, waiting for quiet)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager


def _spin(stop) -> None:
    while not stop.is_set():
        pass


@contextmanager
def spinning(count: int) -> Iterator[list[int]]:
    """`count` processes busy-looping until the block ends; yields their pids."""
    stop = multiprocessing.Event()
    processes = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(count)]
    for process in processes:
        process.start()
    try:
        yield [process.pid for process in processes]
    finally:
        stop.set()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
