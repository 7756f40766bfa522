"""Errors the device side reports without a traceback (kept free of torch and planner imports)."""


class ProfilerError(Exception):
    """A missing runtime, a corrupt model file, an unknown device: something the user can fix."""


def missing_sdk(package: str, pip_hint: str) -> ProfilerError:
    """The error for a runtime that is not installed, with the command that installs it."""
    return ProfilerError(f"{package} is not installed on this device: {pip_hint}")


def first_line(error: BaseException) -> str:
    """An SDK's multi-line error reduced to one line: its first and last informative lines.

    OpenVINO prefixes messages with the source location of a failed check ("Check '...' failed at"),
    which tells a user nothing; those lines are skipped.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Check '")] or lines
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
