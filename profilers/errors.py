"""Errors the device side reports without a traceback (kept free of torch and planner imports)."""


class ProfilerError(Exception):
    """A missing runtime, a corrupt model file, an unknown device: something the user can fix."""


def missing_sdk(package: str, pip_hint: str) -> ProfilerError:
    """The error for a runtime that is not installed, with the command that installs it."""
    return ProfilerError(f"{package} is not installed on this device: {pip_hint}")


def first_line(error: BaseException) -> str:
    """An SDK's multi-line error message reduced to the line a user needs."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
