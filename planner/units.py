"""Budgets as people type them (`20ms`, `64MiB`), parsed strictly.

A budget that is silently misread picks the wrong width, so anything but `<non-negative number><unit>`
with a known unit is refused with a message that lists the units. Decimal (KB = 1000 B) and binary
(KiB = 1024 B) prefixes follow IEC 80000-13.
"""

from __future__ import annotations

import math
import re

from planner.errors import PlannerError

TIME_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
SIZE_UNITS_BYTES = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}

_QUANTITY = re.compile(
    r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$"
)


def _split(text: str, what: str, units: dict[str, float] | dict[str, int]) -> tuple[float, str]:
    known = ", ".join(units)
    match = _QUANTITY.match(text)
    if match is None:
        raise PlannerError(
            f"malformed {what} {text!r}: expected a number and a unit ({known}), e.g. "
            f"{'20ms' if what == 'latency' else '64MB'}"
        )
    number, unit = float(match["number"]), match["unit"]
    if not unit:
        raise PlannerError(f"{what} {text!r} has no unit; use one of {known}")
    if unit not in units:
        raise PlannerError(f"unknown {what} unit {unit!r} in {text!r}; use one of {known}")
    if not math.isfinite(number) or number <= 0:
        raise PlannerError(f"{what} budget must be positive, got {text!r}")
    return number, unit


def parse_duration_ms(text: str) -> float:
    """`20ms`, `1.5 s`, `500us`, `2e6ns` -> milliseconds."""
    number, unit = _split(text, "latency", TIME_UNITS_MS)
    return number * TIME_UNITS_MS[unit]


def parse_size_bytes(text: str) -> int:
    """`64MB`, `1.5GiB`, `4096B` -> bytes (rounded down to a whole byte)."""
    number, unit = _split(text, "memory", SIZE_UNITS_BYTES)
    size = int(number * SIZE_UNITS_BYTES[unit])
    if size < 1:
        raise PlannerError(f"memory budget {text!r} is less than one byte")
    return size


def _time_unit(value: float) -> tuple[float, str]:
    """Factor from milliseconds and the unit that shows `value` with 1 to 3 integer digits."""
    if value < 1e-3:
        return 1e6, "ns"
    if value < 1:
        return 1e3, "us"
    if value < 1e3:
        return 1.0, "ms"
    return 1e-3, "s"


def format_ms(value: float) -> str:
    """A latency for a table: three significant digits, unit scaled to the value."""
    if not math.isfinite(value):
        return "-"
    factor, unit = _time_unit(value)
    return f"{value * factor:.3g} {unit}"


def format_interval(value: float, low: float, high: float) -> str:
    """`37.6 us [37, 38.3]`: a latency and its interval, all in the value's unit."""
    if not (math.isfinite(value) and math.isfinite(low) and math.isfinite(high)):
        return format_ms(value)
    factor, unit = _time_unit(value)
    return f"{value * factor:.3g} {unit} [{low * factor:.3g}, {high * factor:.3g}]"


def format_bytes(value: float) -> str:
    """A size for a table, in binary units."""
    if not math.isfinite(value):
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.3g} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.3g} GiB"


WAIT_UNITS_S = {"s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_wait_s(text: str, longest_s: float) -> float:
    """`30s`, `5min`, `1h` -> seconds, refused unless 1 s <= it <= longest_s (a day-long wait is a typo)."""
    match = _QUANTITY.match(text)
    if match is None or match["unit"] not in WAIT_UNITS_S:
        raise PlannerError(f"malformed wait {text!r}: expected a number and a unit (s, min, h), e.g. 2min")
    seconds = float(match["number"]) * WAIT_UNITS_S[match["unit"]]
    if not math.isfinite(seconds) or not 1 <= seconds <= longest_s:
        raise PlannerError(f"wait {text!r} is out of bounds: give between 1s and {longest_s / 3600:g}h")
    return seconds
