"""Profiling on a Ray cluster of devices (`pip install "planner[fleet]"`).

Each device joins the cluster with a custom resource naming its target:

    ray start --address=HEAD:6379 --resources='{"target:jetson-orin-nano": 1}'

One Ray task per target profiles all of that target's jobs (so the profiler still interleaves the
configurations round by round) on a node holding `target:<name>`; a node offers 1 of it, so two runs never
share a device. ONNX bytes travel to the node and result rows travel back through Ray's object store, not
a shared disk. A task whose worker dies is retried (`max_retries`); its node-local output directory is
keyed by run and target, so on the same node the profiler resumes and keeps what finished. Targets run in
parallel and each target's rows are handed over as soon as its task ends.

`planner evaluate --target T --ray ADDRESS` runs the same way: one task on T's node gets the artifacts
T measured and the evaluation split's images as one .npz (no labels), runs the device-side predictor
(profilers.node.predict_on_node: no planner, no torch on the node) and returns each artifact's outputs;
the hits are counted here, where the labels are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.measure.remote import run_key
from profilers.jobs import Job, Settings

MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 10.0


def resource_name(target: str) -> str:
    return f"target:{target}"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PlannerError('--ray needs Ray: pip install "planner[fleet]"') from None
    return ray


def profile_on_node(
    target: str, run_key: str, jobs: list[dict], settings: dict, *artifacts: dict[str, bytes]
) -> pd.DataFrame:
    """Runs on the device's node: write the artifacts locally, run the profiler, return its rows.

    `artifacts` are passed as top-level object refs, which Ray resolves to bytes on the node.
    """
    import profilers
    from profilers.node import work_dir, write_files

    work = work_dir(f"{target}-{run_key}")
    write_files(work / "artifacts", *artifacts)
    node_jobs = [Job.from_dict(job, base_dir=work / "artifacts") for job in jobs]
    rows = profilers.run_jobs(node_jobs, work / "results", Settings.from_dict(settings))
    shutil.rmtree(work, ignore_errors=True)  # finished: a later call measures afresh
    return rows


def run_fleet(
    jobs_by_target: dict[str, list[Job]],
    settings: Settings,
    address: str,
    on_rows: Callable[[str, pd.DataFrame], None],
) -> None:
    """Profile every target's jobs on the cluster at `address`, calling `on_rows` as each target finishes."""
    ray = _import_ray()
    with joined(address, list(jobs_by_target)):
        task = ray.remote(profile_on_node)
        shipped: dict[tuple[Path, str], object] = {}  # each file enters the object store once
        pending = {}
        for target, jobs in jobs_by_target.items():
            ref = task.options(
                resources={resource_name(target): 1},
                num_cpus=0,
                max_retries=MAX_RETRIES,
                name=f"profile:{target}",
            ).remote(
                target,
                run_key(jobs, settings),
                _node_jobs(jobs),
                _device_settings(settings),
                *_artifact_refs(ray, jobs, shipped),
            )
            pending[ref] = target
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            target = pending.pop(done[0])
            on_rows(target, _result(ray, done[0], f"profiling on target {target}"))


def predict_fleet(jobs: list[Job], target: str, images: np.ndarray, address: str) -> list[np.ndarray]:
    """Run each job's artifact on `images` on the node offering target:<target>; the outputs in job order.

    The images travel as one .npz (profilers.predict.split_npz), the artifacts as bytes; the node's work
    directory is named by the jobs and the images and removed when the task ends.
    """
    from profilers.node import predict_on_node
    from profilers.predict import split_npz

    ray = _import_ray()
    split = split_npz(images)
    name = f"{target}-predict-{run_key(jobs, Settings())}-{hashlib.sha256(split).hexdigest()[:12]}"
    with joined(address, [target]):
        ref = (
            ray.remote(predict_on_node)
            .options(
                resources={resource_name(target): 1},
                num_cpus=0,
                max_retries=MAX_RETRIES,
                name=f"evaluate:{target}",
            )
            .remote(name, _node_jobs(jobs), split, *_artifact_refs(ray, jobs, {}))
        )
        return _result(ray, ref, f"evaluation on target {target}")


@contextmanager
def joined(address: str, targets: list[str]) -> Iterator[None]:
    """Connected to the cluster at `address` (unless Ray already is: then nothing is joined or left, so
    calls inside share one connection) with a node for each of `targets`; disconnected afterwards."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PlannerError(f"cannot join the Ray cluster at {address}: {reason}") from None
    try:
        _check_resources(ray, targets, address)
        yield
    finally:
        if started_here:
            ray.shutdown()


def _result(ray, ref, what: str):
    """A task's return value; its failure as one line (the node's error, or the last retry's cause)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        raise PlannerError(f"{what} failed: {_task_reason(error)}") from None
    except ray.exceptions.RayError as error:
        raise PlannerError(f"{what} failed after {MAX_RETRIES} retries: {type(error).__name__}") from None


def _artifact_refs(ray, jobs: list[Job], shipped: dict[tuple[Path, str], object]) -> list[object]:
    """An object ref per job for its files; a file already in `shipped` is not put again."""
    refs = []
    for job in jobs:
        key = (job.onnx, job.backend)
        if key not in shipped:
            shipped[key] = ray.put(_artifact_files(job))
        refs.append(shipped[key])
    return refs


def _node_jobs(jobs: list[Job]) -> list[dict]:
    """Jobs as the node reads them: each artifact by file name, relative to the node's artifacts folder."""
    return [{**job.to_dict(), "onnx": job.onnx.name} for job in jobs]


def _check_reachable(address: str) -> None:
    """Fail in seconds on a wrong address; ray.init itself waits minutes for a head that is not there."""
    location = address.removeprefix("ray://")
    host, _, port = location.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else (str(error) or type(error).__name__)
        raise PlannerError(f"cannot join the Ray cluster at {address}: {reason}") from None


def _check_resources(ray, targets: list[str], address: str) -> None:
    offered = ray.cluster_resources()
    missing = [target for target in targets if offered.get(resource_name(target), 0) < 1]
    if missing:
        target = missing[0]
        raise PlannerError(
            f"no node of the Ray cluster at {address} offers {resource_name(target)}; on the device run "
            f"`ray start --address={address} --resources='{{\"{resource_name(target)}\": 1}}'`"
        )


def _artifact_files(job: Job) -> dict[str, bytes]:
    """The ONNX file and, for the torch backend, the program beside it."""
    files = {job.onnx.name: job.onnx.read_bytes()}
    program = job.onnx.with_suffix(".pt2")
    if job.backend == "torch" and program.is_file():
        files[program.name] = program.read_bytes()
    return files


def _device_settings(settings: Settings) -> dict:
    """Settings as the device sees them: its own cache directory, not ours."""
    return dataclasses.replace(settings, cache_dir=None).to_dict()


def _task_reason(error: Exception) -> str:
    cause = getattr(error, "cause", None)
    text = str(cause) if cause is not None else str(error)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
