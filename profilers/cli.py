"""`python -m profilers`: the device-side command the SSH and Ray runners start on a device.

    python -m profilers run --jobs jobs.json --out DIR [--force] [--ci 0.02 ...]
    python -m profilers predict --jobs jobs.json --images split.npz --out outputs.npz
    python -m profilers backends [--json]

`predict` runs each job's artifact (the same cache entry `run` measures) on the images (`x` in the .npz,
N x C x H x W float32) and writes each job's outputs as `job<i>` in one .npz: the device half of
evaluating the shipped artifact's accuracy; labels never leave the planner side.

Exit codes: 0 every job measured, 1 some job failed (its row says why; the others are kept),
2 bad input (one line on stderr), 130 interrupted (finished rows are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from profilers.backends import available_backends
from profilers.errors import ProfilerError
from profilers.jobs import Settings, load_jobs_file
from profilers.scheduler import ProgressEvent, run_jobs

_SETTING_FLAGS = {
    "ci": (
        "ci_rel",
        float,
        "stop when the median's 95%% re-run interval is within +-this fraction (default 0.02)",
    ),
    "min_queries": ("min_queries", int, "measured inferences before a job may stop (default 64)"),
    "max_seconds": ("max_seconds", float, "measuring time per job before it stops unconverged (default 30)"),
    "warmup": ("warmup_s", float, "warm-up seconds after the first inference (default 1)"),
    "timeout": ("timeout_s", float, "seconds a worker may take to answer a request (default 60)"),
    "seed": ("seed", int, "seed of the round order and the input (default 0)"),
    "wait_quiet": (
        "wait_quiet_s",
        float,
        "first wait up to this many seconds for a quiet machine (default 0)",
    ),
    "cache_dir": (
        "cache_dir",
        Path,
        "artifact cache (default $PROFILERS_CACHE_DIR or ~/.cache/planner/profilers)",
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every other bad input
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m profilers", description="Measure ONNX models on this device's runtimes.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="measure the jobs of a jobs file")
    run.add_argument("--jobs", type=Path, required=True, help="JSON list of jobs (paths relative to it)")
    run.add_argument("--out", type=Path, required=True, help="results directory (latency.parquet, .csv)")
    run.add_argument("--force", action="store_true", help="measure again what is already measured")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    for flag, (_, kind, text) in _SETTING_FLAGS.items():
        run.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, default=None, help=text)
    run.add_argument(
        "--keep-cpus-awake",
        action="store_true",
        default=None,
        help="hold idle CPUs out of their idle states while measuring (needs write access to "
        "/dev/cpu_dma_latency; each row's cpus_awake says whether they were)",
    )
    predict = commands.add_parser("predict", help="run each job's artifact on images, write the outputs")
    predict.add_argument("--jobs", type=Path, required=True, help="JSON list of jobs (paths relative to it)")
    predict.add_argument("--images", type=Path, required=True, help=".npz with x: N x C x H x W float32")
    predict.add_argument("--out", type=Path, required=True, help=".npz to write (job0, job1, ...)")
    listing = commands.add_parser("backends", help="list the runtimes and devices available here")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _progress(event: ProgressEvent) -> None:
    name = f"[{event.index + 1}/{event.total}] {event.job.onnx.name} {event.job.backend}/{event.job.device}"
    if event.kind == "skipped":
        print(f"{name}: already measured (use --force to measure again)", file=sys.stderr)
    elif event.kind == "finished" and event.row is not None:
        row = event.row
        if row["status"] == "ok":
            state = "converged" if row["converged"] else "not converged (time limit)"
            if row.get("contended"):
                state += f"; busy machine: {row['contention']}"
            print(
                f"{name}: median {row['p50_ms']:.3f} ms [{row['ci_low_ms']:.3f}, {row['ci_high_ms']:.3f}] "
                f"n={row['n']} {state}",
                file=sys.stderr,
            )
        else:
            print(f"{name}: {row['status']}: {row['error']}", file=sys.stderr)


def _run(arguments: argparse.Namespace) -> int:
    jobs, file_settings = load_jobs_file(arguments.jobs)
    overrides = {
        field: getattr(arguments, flag)
        for flag, (field, _, _) in _SETTING_FLAGS.items()
        if getattr(arguments, flag) is not None
    }
    if arguments.keep_cpus_awake:
        overrides["keep_cpus_awake"] = True
    settings = dataclasses.replace(file_settings or Settings(), **overrides)
    table = run_jobs(
        jobs, arguments.out, settings, force=arguments.force, progress=None if arguments.quiet else _progress
    )
    failed = table[table["status"] != "ok"]
    print(f"{len(table) - len(failed)} of {len(table)} jobs measured; results in {arguments.out}")
    return 1 if len(failed) else 0


def _predict(arguments: argparse.Namespace) -> int:
    import numpy as np

    from profilers.files import replacing
    from profilers.predict import predict, read_images

    jobs, file_settings = load_jobs_file(arguments.jobs)
    images = read_images(arguments.images)
    outputs = {f"job{index}": predict(job, images, file_settings) for index, job in enumerate(jobs)}
    with replacing(arguments.out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **outputs)
    print(f"{len(jobs)} artifacts run on {len(images)} images; outputs in {arguments.out}")
    return 0


def _backends(arguments: argparse.Namespace) -> int:
    listing = available_backends()
    if arguments.json:
        print(json.dumps(listing, indent=2))
        return 0
    for entry in listing:
        if entry["installed"]:
            print(
                f"{entry['backend']:12} {entry['version']:24} {', '.join(entry['devices']) or '(no device)'}"
            )
        else:
            print(f"{entry['backend']:12} {'-':24} {entry['note']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        commands = {"run": _run, "predict": _predict, "backends": _backends}
        return commands[arguments.command](arguments)
    except ProfilerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rows are kept; run again to resume", file=sys.stderr)
        return 130
