"""Writing a file so that a reader, a crash or kill -9 never leaves half of it: the one way every module
writes its outputs (results tables, artifacts, checkpoints, manifests, reports), and the one lock that
serialises read-modify-write updates of a shared table (two runs writing to one directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block succeeds it is flushed to disk and
    renamed over `path` in one step, and when it fails it is removed and `path` is left as it was.

    The temporary name keeps the suffix (writers that pick a format by extension still work) and holds
    the process id (two processes writing the same file do not share a temporary).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (created if needed) for the block, across processes."""
    with FileLock(str(path)):
        yield
