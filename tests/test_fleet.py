"""`planner profile --ray` and `planner evaluate --ray`: a local two-node Ray cluster, each node offering one
target resource."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import fresh_out, run, run_cli

from planner.errors import PlannerError
from planner.measure.profile import profile_configs
from planner.measure.targets import load_target
from planner.nn.build import build_model
from profilers.jobs import Settings
from profilers.results import load_latency

ray = pytest.importorskip("ray", reason="the fleet needs Ray: pip install 'planner[fleet]'")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
MODEL_ARGS = ["--model", "s_cnn_small", "--in-channels", "1", "--num-classes", "10", "--input-size", "8"]


@pytest.fixture(scope="module")
def cluster():
    """A head node offering target:desk-a and a second node offering target:desk-b (one CPU each)."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"target:desk-a": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"target:desk-b": 1})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def targets_dir(tmp_path: Path) -> Path:
    for name in ("desk-a", "desk-b", "desk-c"):
        (tmp_path / f"{name}.toml").write_text(
            f'backend = "onnxruntime"\nthreads = 1\n[connection]\nkind = "ssh"\nuser = "lab"\n# {name}\n'
        )
    return tmp_path


def test_two_targets_profile_on_their_nodes_in_one_call(
    cluster, exports: Path, targets_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fresh_out(exports, tmp_path)
    argv = ["profile", "--target", "desk-a", "--target", "desk-b", "--targets-dir", str(targets_dir)]
    argv += [*MODEL_ARGS, "--widths", "0.25,1.0", "--ray", cluster.address, "--out", str(out)]
    argv += ["--max-seconds", "0.5", "--min-queries", "16"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    table = load_latency(out)
    assert sorted(zip(table["target"], table["width"], strict=True)) == [
        ("desk-a", 0.25),
        ("desk-a", 1.0),
        ("desk-b", 0.25),
        ("desk-b", 1.0),
    ]
    assert set(table["status"]) == {"ok"} and (table["p50_ms"] > 0).all()
    assert not table["estimated"].any()
    assert "desk-a" in stdout and "desk-b" in stdout

    code, _, err = run_cli(argv, capsys)  # a re-run finds everything measured
    assert code == 0, err
    assert list(load_latency(out)["run_id"]) == list(table["run_id"])


def test_a_target_no_node_offers_is_a_one_line_error(
    cluster, targets_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["profile", "--target", "desk-c", "--targets-dir", str(targets_dir), *MODEL_ARGS]
    argv += ["--widths", "0.5", "--ray", cluster.address, "--out", str(tmp_path / "out")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "target:desk-c" in err and "ray start" in err


def test_unreachable_cluster_is_a_one_line_error(targets_dir: Path, tmp_path: Path, capsys) -> None:
    if ray.is_initialized():
        ray.shutdown()
    argv = ["profile", "--target", "desk-a", "--targets-dir", str(targets_dir), *MODEL_ARGS]
    argv += ["--widths", "0.5", "--ray", "127.0.0.1:1", "--out", str(tmp_path / "out")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: cannot join the Ray cluster at 127.0.0.1:1")


def test_evaluate_runs_the_artifacts_on_the_targets_node(
    cluster, targets_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The split goes to desk-b's node as an .npz, each batch size's file runs there (batch 7 pads the
    last batch), the hits come back and match this machine's; the node keeps nothing."""
    import planner
    from planner.accuracy.table import load_accuracy
    from planner.stats import decode_hits

    (targets_dir / "desk-b.toml").write_text(
        'backend = "onnxruntime"\nthreads = 1\nbatches = [1, 7]\n[connection]\nkind = "ssh"\nuser = "lab"\n'
    )
    checkpoint = planner.save_checkpoint(
        build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8), tmp_path / "weights.pt"
    )
    out = tmp_path / "out"
    argv = ["evaluate", "s_cnn_small", "--checkpoint", checkpoint, "--data", "digits", "--widths", "0.5"]
    argv += ["--targets-dir", targets_dir, "--out", out]
    code, _, err = run(capsys, *argv, "--target", "desk-b", "--ray", cluster.address)
    assert code == 0, err
    code, _, err = run(capsys, *argv, "--target", "cpu")  # the same file, run here
    assert code == 0, err
    top1 = load_accuracy(out).query("metric == 'top1'").set_index(["target", "batch"])
    assert set(top1.index) == {("desk-b", 1), ("desk-b", 7), ("cpu", 1)}
    here = decode_hits(top1.loc[("cpu", 1), "hits"], int(top1.loc[("cpu", 1), "n"]))
    for batch in (1, 7):
        row = top1.loc[("desk-b", batch)]
        assert row["runtime"] == "onnxruntime" and row["n"] == len(here) and len(here) % 7
        assert np.mean(decode_hits(row["hits"], int(row["n"])) == here) > 0.99
    fleet_dir = Path(tempfile.gettempdir()) / "planner-fleet"
    assert not list(fleet_dir.glob("desk-b-predict-*"))

    code, _, err = run(capsys, *argv, "--target", "desk-c", "--ray", cluster.address)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "target:desk-c" in err


def test_evaluate_on_an_unreachable_cluster_or_without_a_target_is_a_one_line_error(
    targets_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import planner

    if ray.is_initialized():
        ray.shutdown()
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    checkpoint = planner.save_checkpoint(model, tmp_path / "weights.pt")
    argv = ["evaluate", "s_cnn_small", "--checkpoint", checkpoint, "--data", "digits", "--widths", "0.5"]
    argv += ["--targets-dir", targets_dir, "--out", tmp_path / "out", "--ray", "127.0.0.1:1"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err == "error: --ray runs a target's artifacts on its fleet node: give --target\n"
    code, _, err = run(capsys, *argv, "--target", "desk-a")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: cannot join the Ray cluster at 127.0.0.1:1")
    assert not (tmp_path / "out" / "accuracy.parquet").exists()


def _parent(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def _profiling_task_pid(cluster) -> int | None:
    """Our Ray worker running profile_on_node: a child of one of *this cluster's* raylets with a
    profilers.worker child. Only processes this test started are ever considered."""
    raylets = {
        info.process.pid for node in cluster.list_all_nodes() for info in node.all_processes.get("raylet", [])
    }
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"profilers.worker" in command:
            task = _parent(int(entry.name))
            if task is not None and _parent(task) in raylets:
                return task
    return None


def test_a_dead_worker_is_retried_and_finished_rows_are_kept(
    cluster, exports: Path, targets_dir: Path, tmp_path: Path
) -> None:
    target = load_target("desk-a", targets_dir)
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    configs = [model.config(width) for width in model.widths]
    settings = Settings(max_workers=1, ci_rel=1e-6, max_seconds=1.0, min_queries=8, warmup_s=0.1, seed=7)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["rows"] = profile_configs(
                model,
                configs,
                [target],
                fresh_out(exports, tmp_path),
                settings=settings,
                ray_address=cluster.address,
            )
        except PlannerError as error:  # pragma: no cover - reported by the assertion below
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    fleet_dir = Path(tempfile.gettempdir()) / "planner-fleet"
    deadline, killed = time.monotonic() + 120, None
    while time.monotonic() < deadline and killed is None:
        for results in fleet_dir.glob("desk-a-*/results/latency.parquet"):
            # at least two jobs still to measure: a kill that lands as the last row is written leaves the
            # retry nothing to measure, and no second run id
            if 1 <= len(pd.read_parquet(results)) <= len(configs) - 2:
                killed = _profiling_task_pid(cluster)
        time.sleep(0.05)
    assert killed is not None, "the node never finished a job"
    os.kill(killed, signal.SIGKILL)
    worker.join(timeout=240)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    rows = outcome["rows"]
    assert sorted(rows["width"]) == sorted(model.widths) and set(rows["status"]) == {"ok"}
    assert rows["config_id"].is_unique
    assert rows["run_id"].nunique() == 2  # the rows from before the crash were kept, not measured again
