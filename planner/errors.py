"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class PlannerError(Exception):
    """Bad input: unknown name, malformed file, unreachable device. Never a bug."""
