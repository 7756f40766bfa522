"""`planner profile` over SSH, through a real sshd on 127.0.0.1 whose "device" python is this venv's.

Each test gets a throw-away host key, a client key in a temporary HOME (so ~/.ssh/known_hosts and the
identity are the test's own), and a target file pointing at the server.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import fresh_out, run_cli

from planner.errors import PlannerError
from planner.measure.profile import profile_configs
from planner.measure.targets import load_target
from planner.nn.build import build_model
from profilers.jobs import Settings
from profilers.results import load_latency

pytestmark = pytest.mark.slow
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
MODEL_ARGS = ["--model", "s_cnn_small", "--in-channels", "1", "--num-classes", "10", "--input-size", "8"]
QUICK = ["--max-seconds", "0.5", "--min-queries", "16"]


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    home: Path
    host_public_key: str
    targets_dir: Path
    device_dir: Path

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of our listener)."""
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    children.append(int(entry.name))
        return children


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    config_dir = tmp_path / "sshd"
    config_dir.mkdir()
    host_public = _keygen(config_dir / "host_key")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    client_public = _keygen(home / ".ssh" / "id_ed25519")
    (config_dir / "authorized_keys").write_text(client_public + "\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    port = _free_port()
    config = config_dir / "sshd_config"
    config.write_text(
        "ListenAddress 127.0.0.1\n"
        f"HostKey {config_dir / 'host_key'}\n"
        f"AuthorizedKeysFile {config_dir / 'authorized_keys'}\n"
        "PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
    )
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(config_dir / "log", "w"),  # noqa: SIM115 - closed with the process
    )
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            pytest.skip(f"sshd cannot start here: {(config_dir / 'log').read_text().strip()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.skip("sshd did not start listening within 10 s")
            time.sleep(0.05)
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public}\n")
    monkeypatch.setenv("HOME", str(home))
    targets_dir = tmp_path / "targets"
    targets_dir.mkdir()
    device_dir = tmp_path / "device"
    (targets_dir / "lab-box.toml").write_text(
        'backend = "onnxruntime"\nthreads = 1\n'
        "[connection]\n"
        f'kind = "ssh"\nhost = "127.0.0.1"\nport = {port}\nuser = "{getpass.getuser()}"\n'
        f'python = "{sys.executable}"\nworkdir = "{device_dir}"\n'
    )
    yield Server(port, process, home, host_public, targets_dir, device_dir)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


def test_profile_over_ssh_brings_rows_home_and_resumes(
    server: Server, exports: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fresh_out(exports, tmp_path)
    argv = ["profile", "--target", "lab-box", "--targets-dir", str(server.targets_dir), *MODEL_ARGS]
    argv += ["--widths", "0.25,1.0", "--out", str(out), *QUICK]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    table = load_latency(out)
    assert sorted(table["width"]) == [0.25, 1.0]
    assert set(table["target"]) == {"lab-box"} and set(table["status"]) == {"ok"}
    assert not table["estimated"].any()
    assert (table["p50_ms"] > 0).all() and (table["n"] >= 16).all()
    assert table["macs"].iloc[0] > 0 and "lab-box" in stdout
    # The artifacts were shipped to the device's workdir; the finished run directory was cleaned up.
    assert len(list((server.device_dir / "artifacts").glob("*.onnx"))) == 2
    assert not list((server.device_dir / "runs").iterdir())

    code, _, err = run_cli(argv, capsys)  # a re-run measures nothing again
    assert code == 0, err
    again = load_latency(out)
    assert list(again["run_id"]) == list(table["run_id"])
    assert list(again["timestamp"]) == list(table["timestamp"])


def test_host_key_mismatch_is_refused_and_keeps_results(
    server: Server, exports: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fresh_out(exports, tmp_path)

    def argv(width: str) -> list[str]:
        common = ["profile", "--target", "lab-box", "--targets-dir", str(server.targets_dir), *MODEL_ARGS]
        return [*common, "--widths", width, "--out", str(out), *QUICK]

    assert run_cli(argv("0.5"), capsys)[0] == 0
    before = load_latency(out)

    impostor = _keygen(tmp_path / "impostor")
    (server.home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {impostor}\n")
    code, _, err = run_cli(argv("0.25"), capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "ssh-keygen -R" in err and "ssh-keyscan" in err
    pd.testing.assert_frame_equal(load_latency(out), before)

    (server.home / ".ssh" / "known_hosts").write_text("")  # an unknown host is refused as well
    code, _, err = run_cli(argv("0.25"), capsys)
    assert code == 2 and "not trusted" in err


def test_unreachable_host_says_which_and_why(
    server: Server, exports: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = _free_port()
    argv = ["profile", "--target", "lab-box", "--targets-dir", str(server.targets_dir), *MODEL_ARGS]
    argv += [
        "--widths",
        "0.5",
        "--host",
        f"nobody@127.0.0.1:{closed}",
        "--out",
        str(fresh_out(exports, tmp_path)),
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]  # after a line per retry
    assert last.startswith("error: ") and f"127.0.0.1:{closed}" in last and "refused" in last.lower()
    assert "Traceback" not in err


@pytest.mark.parametrize("host", ["127.0.0.1;touch /tmp/x", "-oProxyCommand=sh", "a b", "root@"])
def test_invalid_host_value_is_a_usage_error(host: str, tmp_path: Path, capsys) -> None:
    argv = ["profile", "--target", "jetson", "--host", host, *MODEL_ARGS, "--out", str(tmp_path)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "invalid host" in err and err.count("\n") == 1


def test_remote_target_without_host_fails_at_once(tmp_path: Path, capsys) -> None:
    started = time.monotonic()
    code, _, err = run_cli(
        ["profile", "--target", "jetson", *MODEL_ARGS, "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert "jetson-orin-nano" in err and "--host" in err
    assert time.monotonic() - started < 5
    assert not (tmp_path / "o").exists()  # nothing exported before the check


def test_dropped_connection_is_retried_without_measuring_twice(
    server: Server, exports: Path, tmp_path: Path
) -> None:
    """Kill the SSH session while the device measures; the retry resumes there and finishes the rest."""
    target = load_target("lab-box", server.targets_dir)
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    configs = [model.config(width) for width in model.widths]
    # One job at a time, each for a fixed time, so the drop lands between finished and unfinished jobs.
    settings = Settings(max_workers=1, ci_rel=1e-6, max_seconds=0.6, min_queries=8, warmup_s=0.1)
    lines: list[str] = []
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["rows"] = profile_configs(
                model, configs, [target], fresh_out(exports, tmp_path), settings=settings, log=lines.append
            )
        except PlannerError as error:  # pragma: no cover - reported by the assertion below
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    device_results = None
    while time.monotonic() < deadline and device_results is None:
        found = list((server.device_dir / "runs").glob("*/latency.parquet"))
        if found and len(pd.read_parquet(found[0])) >= 1:
            device_results = found[0]
        time.sleep(0.05)
    assert device_results is not None, "the device never finished a job"
    for pid in server.session_pids():
        os.kill(pid, signal.SIGKILL)
    worker.join(timeout=180)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert any("retry" in line for line in lines)
    rows = outcome["rows"]
    assert sorted(rows["width"]) == sorted(model.widths)
    assert set(rows["status"]) == {"ok"}
    # Rows measured before the drop kept their run; the retry measured only the rest (a second run id).
    assert rows["run_id"].nunique() == 2
    assert rows["config_id"].is_unique
