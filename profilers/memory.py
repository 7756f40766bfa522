"""Host memory of the measuring process: peak RSS over a baseline taken before the model is loaded.

The peak is the kernel's high-water mark (VmHWM). Writing 5 to /proc/self/clear_refs resets it, so the
peak excludes what importing the runtime cost; where that is not allowed, the lifetime peak is used.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else peak_rss()


def peak_rss() -> int:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakOverBaseline:
    """Start it before loading the model; `.bytes()` is the growth of the peak RSS since then."""

    def __init__(self) -> None:
        reset_peak()
        self.baseline = current_rss()

    def bytes(self) -> int:
        return max(0, peak_rss() - self.baseline)
