"""`planner manifest` and `planner report` from the command line: files written, exit codes, errors."""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import run
from selection_tables import four_widths, small_checkpoint, write_results

from planner.accuracy.table import checkpoint_digest
from planner.deploy.manifest import load_manifest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkpoint and results for cpu and openvino-cpu, accuracy measured with that checkpoint."""
    root = tmp_path_factory.mktemp("workspace")
    checkpoint = small_checkpoint(root / "weights.pt")
    _, cpu, accuracy = four_widths("cpu")  # p90 1.2, 2.4, 3.6, 4.8 ms
    _, openvino, _ = four_widths("openvino-cpu", latencies=(2.0, 3.0, 4.0, 5.0))  # p90 2.4, 3.6, ...
    accuracy["checkpoint"] = checkpoint_digest(checkpoint)
    results = write_results(root / "out", pd.concat([cpu, openvino], ignore_index=True), accuracy)
    return root, checkpoint, results


def test_manifest_per_target(capsys, workspace):
    root, checkpoint, results = workspace
    deploy = root / "deploy"
    code, out, err = run(capsys, "manifest", "-t", "cpu", "-t", "openvino", "--max-latency", "2.5ms",
                         "--checkpoint", checkpoint, "--out", results, "-o", deploy)  # fmt: skip
    assert code == 0, err
    cpu = load_manifest(deploy / "cpu" / "manifest.json")
    openvino = load_manifest(deploy / "openvino-cpu" / "manifest.json")
    assert [rung["width"] for rung in cpu["ladder"]] == [0.25, 0.5]
    assert openvino["configuration"]["width"] == 0.25 and openvino["target"]["backend"] == "openvino"
    assert "deploy/cpu/manifest.json" in out and "openvino-cpu" in out
    assert "unsettled" not in out  # every margin is beyond the rows' run-to-run spread


def test_a_shipped_choice_within_the_run_to_run_spread_says_so(capsys, workspace):
    root, checkpoint, results = workspace
    code, out, err = run(capsys, "manifest", "-t", "cpu", "--max-latency", "2.42ms",
                         "--checkpoint", checkpoint, "--out", results, "-o", root / "near")  # fmt: skip
    assert code == 0, err
    assert (root / "near" / "cpu" / "manifest.json").is_file()
    said = " ".join(out.split())
    assert ("cpu: unsettled: 0.5x fits by 0.8%, within the run-to-run spread (+-2.0%); a re-run may choose "
            "otherwise") in said  # fmt: skip


def test_a_target_where_nothing_fits_exits_1_and_keeps_the_others(capsys, workspace):
    root, checkpoint, results = workspace
    deploy = root / "partial"
    code, out, _ = run(capsys, "manifest", "-t", "cpu", "-t", "openvino-cpu", "--max-latency", "1.5ms",
                       "--checkpoint", checkpoint, "--out", results, "-o", deploy)  # fmt: skip
    assert code == 1
    assert "openvino-cpu: nothing fits" in out
    assert (deploy / "cpu" / "manifest.json").is_file()
    assert not (deploy / "openvino-cpu").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-t", "cpu", "-t", "local"], "more than once"),
        (["-t", "cpu", "--max-latency", "-1ms"], "must be positive"),
        (["-t", "gpu-tensorrt"], "planner profile --target gpu-tensorrt"),
    ],
)
def test_manifest_usage_errors(capsys, workspace, argv, message):
    root, checkpoint, results = workspace
    code, _, err = run(capsys, "manifest", *argv, "--checkpoint", checkpoint, "--out", results,
                       "-o", root / "unused")  # fmt: skip
    assert code == 2 and err.startswith("error: ") and message in err


def test_manifest_with_a_missing_checkpoint(capsys, workspace):
    root, _, results = workspace
    code, _, err = run(capsys, "manifest", "-t", "cpu", "--max-latency", "2.5ms", "--checkpoint",
                       root / "nope.pt", "--out", results, "-o", root / "unused")  # fmt: skip
    assert code == 2 and "does not exist" in err


def test_report_command(capsys, workspace):
    root, _, results = workspace
    code, out, err = run(capsys, "report", "--out", results, "-o", root / "report")
    assert code == 0, err
    for name in ("pareto.png", "pareto.html", "pareto.csv", "pareto.md"):
        assert (root / "report" / name).stat().st_size > 0 and name in out
    table = pd.read_csv(root / "report" / "pareto.csv")
    assert sorted(table["target"].unique()) == ["cpu", "openvino-cpu"]


def test_report_for_an_unmeasured_target_names_the_command(capsys, workspace):
    root, _, results = workspace
    code, _, err = run(capsys, "report", "-t", "jetson", "--out", results, "-o", root / "report2")
    assert code == 2 and "planner profile --target jetson-orin-nano" in err
