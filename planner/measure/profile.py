"""Profiling: a network's configurations measured on targets, here, over SSH or on a Ray fleet.

    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    rows = profile_configs(model, configurations(model), [load_target("cpu")], out)

Each target gets its artifacts (planner.measure.artifacts: one export per configuration and batch, and
with int8 among the target's `precisions` each export quantized with the calibration images) and one
profiler job per artifact and precision; the rows land in RESULTS/latency.parquet as they come; a re-run
skips what RESULTS already holds unless `force`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from planner.errors import PlannerError
from planner.measure.artifacts import export_artifacts, make_jobs, model_for_target, quantize_artifacts
from planner.measure.quantize import Calibration
from planner.measure.targets import Target
from planner.widths import WidthConfig
from profilers.jobs import Job, Settings
from profilers.load import sped_up_only
from profilers.results import LatencyStore, load_latency, measured_rows, row_key
from profilers.scheduler import ProgressEvent, run_jobs

if TYPE_CHECKING:
    from planner.models.base import SlimmableNetwork

# Called with (target name, finished jobs, total jobs) whenever a job finishes; drives the progress bar.
Progress = Callable[[str, int, int], None]


def pending_jobs(jobs: list[Job], out_dir: Path | str, force: bool = False) -> list[Job]:
    """The jobs OUT has no measured `ok` row for (estimates do not count as measured)."""
    if force:
        return list(jobs)
    measured = LatencyStore(Path(out_dir)).measured_keys()
    return [job for job in jobs if row_key(job.identity()) not in measured]


def store_rows(out_dir: Path | str, rows: pd.DataFrame) -> None:
    """Merge rows measured elsewhere (a device, a Ray node) into OUT, one atomic write per row."""
    store = LatencyStore(Path(out_dir))
    for _, row in rows.iterrows():
        store.add({column: value for column, value in row.items() if not _missing(value)})


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are values
        return False


def profile_configs(
    model: SlimmableNetwork,
    configs: list[WidthConfig],
    targets: list[Target],
    out_dir: Path | str,
    *,
    settings: Settings | None = None,
    force: bool = False,
    ray_address: str | None = None,
    weights: str = "init",
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    calibration: Calibration | None = None,
) -> pd.DataFrame:
    """Measure every configuration on every target at each of its precisions; return their measured rows
    (old and new) from OUT.

    Local targets run one after another on this machine (never two measurements at once); SSH targets
    run on their host; with `ray_address` every target runs on its fleet node, all in parallel. The
    precisions of one target are measured interleaved, in one run. A quantization that fails leaves out
    that configuration's int8 job: everything else is measured and stored, then a PlannerError says why.
    """
    from planner.measure.fleet import run_fleet
    from planner.measure.remote import require_host, run_remote

    out_dir = Path(out_dir)
    settings = settings or Settings()
    report = progress or (lambda target, done, total: None)
    say = log or (lambda line: None)
    if not ray_address:
        for target in targets:
            require_host(target)
    jobs_by_target: dict[str, list[Job]] = {}
    failures: list[str] = []
    for target in targets:
        target_model = model_for_target(model, target)
        jobs_by_target[target.name] = []
        for batch in target.planned_batches:
            artifacts = export_artifacts(target_model, configs, out_dir, target, weights, batch)
            for precision in target.planned_precisions:
                chosen = artifacts
                if precision == "int8":
                    chosen, failed = quantize_artifacts(artifacts, target, calibration)
                    failures += failed
                jobs_by_target[target.name] += make_jobs(
                    chosen, target.at_batch(batch).at_precision(precision)
                )
    todo = {name: pending_jobs(jobs, out_dir, force) for name, jobs in jobs_by_target.items()}
    for name, jobs in jobs_by_target.items():
        report(name, len(jobs) - len(todo[name]), len(jobs))

    if ray_address:

        def arrived(name: str, rows: pd.DataFrame) -> None:
            store_rows(out_dir, rows)
            report(name, len(jobs_by_target[name]), len(jobs_by_target[name]))

        run_fleet({name: jobs for name, jobs in todo.items() if jobs}, settings, ray_address, arrived)
    else:
        for target in targets:
            jobs, total = todo[target.name], len(jobs_by_target[target.name])
            if not jobs:
                continue
            counter = _Counter(target.name, total - len(jobs), total, report)
            if target.is_remote:

                def device_line(line: str, counter: _Counter = counter) -> None:
                    if _DEVICE_EVENT.match(line):
                        counter.advance()
                    say(line)

                store_rows(out_dir, run_remote(jobs, target, settings, device_line))
            else:
                run_jobs(jobs, out_dir, settings, force=True, progress=counter.on_event)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise PlannerError(f"{failures[0]}{more}; the other rows are in {out_dir}")
    wanted = {row_key(job.identity()) for jobs in jobs_by_target.values() for job in jobs}
    table = load_latency(out_dir)
    table = table[~table["estimated"].fillna(False).astype(bool)]
    return table[[row_key(row) in wanted for _, row in table.iterrows()]].reset_index(drop=True)


# A device-side progress line for a finished or skipped job: "[3/8] name backend/device: ..."
_DEVICE_EVENT = re.compile(r"^\[\d+/\d+\] ")


class _Counter:
    """Turns profiler events (local) or device lines (SSH) into done/total progress for one target."""

    def __init__(self, target: str, done: int, total: int, report: Progress) -> None:
        self.target, self.done, self.total, self.report = target, done, total, report

    def advance(self) -> None:
        self.done = min(self.total, self.done + 1)
        self.report(self.target, self.done, self.total)

    def on_event(self, event: ProgressEvent) -> None:
        if event.kind in ("finished", "skipped"):
            self.advance()


def estimate_configs(
    model: SlimmableNetwork, configs: list[WidthConfig], targets: list[Target], out_dir: Path | str
) -> tuple[pd.DataFrame, list[str]]:
    """Roofline rows for every configuration on every target, stored in OUT with `estimated=True`.

    Returns the rows and the keys skipped because OUT holds a measurement with the same key: an
    estimate never replaces a measurement.
    """
    from planner.measure.estimate import estimate_rows

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = {row_key(row) for _, row in measured_rows(load_latency(out_dir)).iterrows()}
    store = LatencyStore(out_dir)
    kept, skipped = [], []
    for target in targets:
        target_model = model_for_target(model, target)
        for row in estimate_rows(target_model, configs, target):
            if row_key(row) in measured:
                skipped.append(f"{row['target']}/{row['config_id']}")
                continue
            store.add(row)
            kept.append(row)
    return pd.DataFrame(kept), skipped


def off_history_note(rows: pd.DataFrame) -> str | None:
    """How many rows' medians lay beyond this machine's run-to-run spread from the same jobs' earlier runs,
    and how far; None when none did. Such a row ran in a state of the machine (or a version of the job)
    that the earlier runs did not, whether or not anything flagged the machine busy."""
    if "off_history" not in rows:
        return None
    off = rows[rows["off_history"].fillna(False).astype(bool)]
    if off.empty:
        return None
    moves = off["p50_ms"] / off["history_p50_ms"] - 1
    low, high = float(moves.min()), float(moves.max())
    if low < 0 < high:
        how = f"{low:+.0%} to {high:+.0%} off"
    else:
        nearest, furthest = sorted((abs(low), abs(high)))
        span = (
            f"{furthest:.0%}"
            if f"{nearest:.0%}" == f"{furthest:.0%}"
            else f"{nearest * 100:.0f}-{furthest:.0%}"
        )
        how = f"{span} {'slower' if low > 0 else 'faster'} than"
    return (
        f"{len(off)} of {len(rows)} rows ran {how} this machine's earlier runs of the same jobs, beyond the "
        "spread between its runs"
    )


def busy_rows_note(rows: pd.DataFrame) -> str | None:
    """How many rows were measured on a busy machine, why for one of them, and what that does to their
    latencies; None when none was.

    The reason is the row with the most other load's: a row flagged by the speed index or by steal alone
    has next to no other processes, and "up to 0.0 cores" would say the opposite of the flag. Other
    processes, steal, throttling and a machine that slowed all make latencies too high; not so a row
    flagged only because the machine sped up (`profilers.load.sped_up_only`)."""
    if "contended" not in rows:
        return None
    busy = rows[rows["contended"].fillna(False).astype(bool)]
    if busy.empty:
        return None
    worst = busy.sort_values("other_cores", ascending=False) if "other_cores" in busy else busy
    reason = worst.iloc[0].get("contention")
    example = f" (for example: {reason})" if isinstance(reason, str) and reason else ""
    sped_up = any(map(sped_up_only, busy.get("contention", [])))
    effect = "latencies may be off" if sped_up else "latencies likely too high"
    return f"{len(busy)} of {len(rows)} rows measured on a busy machine{example}, {effect}"
