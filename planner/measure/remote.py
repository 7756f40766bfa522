"""Profiling on a device over SSH (asyncssh): ship the artifacts, run the device-side profiler, fetch rows.

On the device, under the target's `workdir`:

    artifacts/<name>.onnx            uploaded once (skipped when the same file is there already)
    runs/<run_id>/jobs.json          the jobs, with paths relative to the file
    runs/<run_id>/latency.parquet    written by `python -m profilers run` as each job finishes
    runs/<run_id>/profiler.pid       so a retry can stop a profiler orphaned by a dropped connection

Host keys are checked against ~/.ssh/known_hosts (or what ~/.ssh/config says); an unknown or changed key
is refused. The device command is a fixed argument list quoted with `shlex.join`, never a string built
from user input. A dropped connection is retried in the same run directory: the profiler there resumes,
so nothing finished is measured twice, and the rows come home only once the run is complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import posixpath
import shlex
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from profilers.jobs import Job, Settings, write_jobs_file
from profilers.predict import split_npz

CONNECT_TIMEOUT_S = 15.0
KEEPALIVE_S = 15.0
# Stop an orphaned profiler (and its job workers) of an earlier attempt before resuming in its directory.
_STOP_PREVIOUS = (
    'test -f "$0" || exit 0; pid=$(cat "$0"); '
    'kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; '
    'while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done; exit 0'
)
# Record our pid, then become the profiler (exec keeps the pid).
_RUN_RECORDING_PID = 'echo $$ > "$0"; exec "$@"'


def _import_asyncssh():
    try:
        import asyncssh
    except ImportError:
        raise PlannerError('SSH targets need asyncssh: pip install "planner[ssh]"') from None
    return asyncssh


def require_host(target: Target) -> None:
    """An SSH target needs an address before anything is exported or shipped."""
    if target.is_remote and not target.connection.host:
        raise PlannerError(
            f"target {target.name} is reached over SSH but has no host: give --host user@address "
            f"or set host in [connection] of {target.path or target.name + '.toml'} "
            "(or --estimate, or --ray ADDRESS for a fleet)"
        )


def run_key(jobs: list[Job], settings: Settings) -> str:
    """Names the device's run directory: the same jobs and settings resume there, even from a new call."""
    text = json.dumps([[str(part) for part in job.key()] for job in jobs] + [settings.to_dict()], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_remote(
    jobs: list[Job],
    target: Target,
    settings: Settings,
    on_line: Callable[[str], None] | None = None,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> pd.DataFrame:
    """Profile `jobs` on the target's SSH host; return the device's rows for them."""
    require_host(target)
    connection = target.connection
    asyncssh = _import_asyncssh()
    address = connection.address
    run_id = run_key(jobs, settings)
    settings = dataclasses.replace(settings, cache_dir=None)  # the device's own cache, not ours
    last_reason = ""
    for attempt in range(1, retries + 1):
        try:
            return asyncio.run(_session(asyncssh, jobs, target, settings, run_id, on_line))
        except asyncssh.HostKeyNotVerifiable as error:
            host, port = connection.host, connection.port
            raise PlannerError(
                f"host key of {host}:{port} is not trusted ({error.reason}); if the device is new, add it "
                f"with `ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts`; if it was reinstalled, first "
                f"remove the old key with `ssh-keygen -R '[{host}]:{port}'`"
            ) from None
        except asyncssh.PermissionDenied:
            user = connection.user or "USER"
            raise PlannerError(
                f"{address} refused the login: install your key on the device with "
                f"`ssh-copy-id -p {connection.port} {user}@{connection.host}`"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as error:
            last_reason = _reason(error)
            if attempt < retries:
                if on_line:
                    on_line(f"connection to {address} failed ({last_reason}); retry {attempt}/{retries - 1}")
                time.sleep(backoff_s * attempt)
    raise PlannerError(f"cannot profile on {address}: {last_reason} (tried {retries} times)")


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name ({error.strerror})"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)  # "Connection refused", "No route to host", ...
    text = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__


async def _session(asyncssh, jobs, target, settings, run_id, on_line) -> pd.DataFrame:
    connection = target.connection
    options = {"username": connection.user} if connection.user else {}
    async with asyncssh.connect(
        connection.host,
        port=connection.port,
        connect_timeout=CONNECT_TIMEOUT_S,
        keepalive_interval=KEEPALIVE_S,
        **options,
    ) as ssh:
        workdir = connection.workdir
        run_dir = posixpath.join(workdir, "runs", run_id)
        artifacts_dir = posixpath.join(workdir, "artifacts")
        async with ssh.start_sftp_client() as sftp:
            await sftp.makedirs(artifacts_dir, exist_ok=True)
            await sftp.makedirs(run_dir, exist_ok=True)
            for local in _artifact_files(jobs):
                await _upload_once(sftp, local, posixpath.join(artifacts_dir, local.name))
            await _upload_jobs(sftp, jobs, settings, run_dir)

        pid_file = posixpath.join(run_dir, "profiler.pid")
        await ssh.run(shlex.join(["sh", "-c", _STOP_PREVIOUS, pid_file]), check=False)
        argv = [
            connection.python,
            "-m",
            "profilers",
            "run",
            "--jobs",
            posixpath.join(run_dir, "jobs.json"),
            "--out",
            run_dir,
        ]
        command = shlex.join(["sh", "-c", _RUN_RECORDING_PID, pid_file, *argv])
        device_lines: list[str] = []  # the profiler reports each finished job on stderr
        async with ssh.create_process(command) as process:
            stdout_task = asyncio.ensure_future(process.stdout.read())
            async for line in process.stderr:
                device_lines.append(line.rstrip("\n"))
                if on_line:
                    on_line(device_lines[-1])
            completed = await process.wait()
            await stdout_task
        if completed.exit_status is None:
            raise asyncssh.ConnectionLost("the profiler's session ended without an exit status")
        if completed.exit_status not in (0, 1):  # 1: some job failed, and its row says why
            lines = [line for line in device_lines if line.strip()]
            detail = lines[-1] if lines else f"exit status {completed.exit_status}"
            raise PlannerError(f"profiler on {connection.host} failed: {detail}")

        with tempfile.TemporaryDirectory(prefix="planner-remote-") as local:
            async with ssh.start_sftp_client() as sftp:
                fetched = Path(local) / "latency.parquet"
                await sftp.get(posixpath.join(run_dir, "latency.parquet"), str(fetched))
                rows = pd.read_parquet(fetched)
                await sftp.rmtree(run_dir, ignore_errors=True)
        return rows


def _artifact_files(jobs: list[Job]) -> list[Path]:
    """Each ONNX file once, and the torch program beside it for the torch backend."""
    files = {job.onnx: None for job in jobs}
    for job in jobs:
        program = job.onnx.with_suffix(".pt2")
        if job.backend == "torch" and program.is_file():
            files[program] = None
    return list(files)


async def _upload_once(sftp, local: Path, remote: str) -> None:
    """Copy an artifact unless the device has it already (names carry the content key); atomic rename."""
    size = local.stat().st_size
    if await sftp.exists(remote) and (await sftp.stat(remote)).size == size:
        return
    partial = remote + ".part"
    await sftp.put(str(local), partial)
    await sftp.posix_rename(partial, remote)


async def _upload_jobs(sftp, jobs: list[Job], settings: Settings, run_dir: str) -> None:
    """jobs.json as the device sees it: artifacts at ../../artifacts/<name> relative to the file."""
    with tempfile.TemporaryDirectory(prefix="planner-jobs-") as local:
        mirror_run = Path(local) / "runs" / "run"
        mirror_run.mkdir(parents=True)
        device_jobs = [_on_device(job, Path(local) / "artifacts" / job.onnx.name) for job in jobs]
        jobs_file = write_jobs_file(mirror_run / "jobs.json", device_jobs, settings)
        await sftp.put(str(jobs_file), posixpath.join(run_dir, "jobs.json"))


def _on_device(job: Job, onnx: Path) -> Job:
    return dataclasses.replace(job, onnx=onnx)


def predict_remote(jobs: list[Job], target: Target, images: np.ndarray) -> list[np.ndarray]:
    """Run each job's artifact on `images` on the target's SSH host (`python -m profilers predict`).

    The images travel as one .npz (`x` only: the labels stay here), beside the artifacts the profiler
    uses; the outputs come back as one .npz. Same host-key and login checks as `run_remote`.
    """
    require_host(target)
    asyncssh = _import_asyncssh()
    address = target.connection.address
    try:
        return asyncio.run(_predict_session(asyncssh, jobs, target, images))
    except asyncssh.HostKeyNotVerifiable as error:
        raise PlannerError(
            f"host key of {address} is not trusted ({error.reason}): see planner profile"
        ) from None
    except asyncssh.PermissionDenied:
        raise PlannerError(f"{address} refused the login: install your key with ssh-copy-id") from None
    except (OSError, asyncssh.Error, TimeoutError) as error:
        raise PlannerError(f"cannot evaluate on {address}: {_reason(error)}") from None


async def _predict_session(asyncssh, jobs: list[Job], target: Target, images: np.ndarray) -> list[np.ndarray]:
    connection = target.connection
    options = {"username": connection.user} if connection.user else {}
    key = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:12]
    run_dir = posixpath.join(connection.workdir, "runs", f"predict-{run_key(jobs, Settings())}-{key}")
    async with asyncssh.connect(
        connection.host, port=connection.port, connect_timeout=CONNECT_TIMEOUT_S, **options
    ) as ssh:
        with tempfile.TemporaryDirectory(prefix="planner-predict-") as local:
            split = Path(local) / "split.npz"
            split.write_bytes(split_npz(images))
            async with ssh.start_sftp_client() as sftp:
                artifacts_dir = posixpath.join(connection.workdir, "artifacts")
                await sftp.makedirs(artifacts_dir, exist_ok=True)
                await sftp.makedirs(run_dir, exist_ok=True)
                for file in _artifact_files(jobs):
                    await _upload_once(sftp, file, posixpath.join(artifacts_dir, file.name))
                await _upload_jobs(sftp, jobs, Settings(), run_dir)
                await sftp.put(str(split), posixpath.join(run_dir, "split.npz"))
            argv = [connection.python, "-m", "profilers", "predict", "--jobs"]
            argv += [posixpath.join(run_dir, "jobs.json"), "--images", posixpath.join(run_dir, "split.npz")]
            argv += ["--out", posixpath.join(run_dir, "outputs.npz")]
            done = await ssh.run(shlex.join(argv), check=False)
            if done.exit_status != 0:
                lines = [line for line in str(done.stderr or "").splitlines() if line.strip()]
                detail = lines[-1].removeprefix("error: ") if lines else f"exit status {done.exit_status}"
                raise PlannerError(f"evaluation on {connection.host} failed: {detail}")
            fetched = Path(local) / "outputs.npz"
            async with ssh.start_sftp_client() as sftp:
                await sftp.get(posixpath.join(run_dir, "outputs.npz"), str(fetched))
                await sftp.rmtree(run_dir, ignore_errors=True)
            with np.load(fetched, allow_pickle=False) as outputs:
                return [outputs[f"job{index}"] for index in range(len(jobs))]
