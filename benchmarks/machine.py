"""What the machine was doing when a benchmark ran: the line every results/ report carries beside its figures.

Latency on this shared machine moves with other tenants' work, so a report without the machine's state
cannot be compared with another. CPU shares come from top's second frame (its use over half a second);
`ps` would give each process's average over its whole life, which calls a long-idle process busy.
"""

from __future__ import annotations

import os
import subprocess


def busiest_processes(count: int = 5, min_percent: float = 5.0) -> list[str]:
    """The `count` busiest processes over half a second, as "command percent%" (empty if top is missing)."""
    try:
        text = subprocess.run(
            ["top", "-b", "-n", "2", "-d", "0.5", "-w", "200"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    frame = text.split("top - ")[-1].splitlines()
    header = next((i for i, line in enumerate(frame) if line.lstrip().startswith("PID")), None)
    if header is None:
        return []
    busiest = []
    for line in frame[header + 1 : header + 1 + count]:
        fields = line.split()
        if len(fields) >= 12 and float(fields[8]) >= min_percent:
            busiest.append(f"{fields[11]} {float(fields[8]):.0f}%")
    return busiest


def machine_state() -> str:
    """Load average and the busiest processes, in one line."""
    load = "/".join(f"{value:.2f}" for value in os.getloadavg())
    return f"load {load}; busiest: {', '.join(busiest_processes()) or 'none over 5%'}"
