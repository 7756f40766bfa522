"""`planner demo` end to end: train, evaluate, profile on two runtimes, select, deploy, report; resumable."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import run
from PIL import Image

from planner.deploy.manifest import load_manifest


@pytest.mark.timeout(400)
def test_demo_runs_the_whole_pipeline_and_resumes(capsys, tmp_path):
    out = tmp_path / "demo"
    code, printed, err = run(capsys, "demo", "--out", out, "--epochs", "3", "--max-seconds", "3")
    assert code == 0, err

    latency = pd.read_parquet(out / "results" / "latency.parquet")
    accuracy = pd.read_parquet(out / "results" / "accuracy.parquet")
    assert set(latency["target"]) == {"cpu-int8", "openvino-cpu-int8"}
    assert set(latency["precision"]) == {"fp32", "int8"} and len(latency) == 16  # 4 widths x 2 x 2
    assert (latency["status"] == "ok").all() and not latency["estimated"].any()
    # one warning line exactly when rows were measured on a busy machine (this machine's state decides)
    flagged = int(latency["contended"].sum())
    warned = [line for line in printed.splitlines() if "measured on a busy machine" in line]
    assert len(warned) == (1 if flagged else 0), printed
    assert not flagged or f"{flagged} of 16 rows" in warned[0]
    top1 = accuracy[accuracy["metric"] == "top1"]
    torch_side = top1[top1["runtime"] == "torch"]
    assert sorted(torch_side["width"]) == [0.25, 0.5, 0.75, 1.0]
    # every shipped artifact scored through its runtime, with its interval
    through = top1[top1["runtime"] != "torch"]
    assert len(through) == 16 and (through["n"] == torch_side["n"].iloc[0]).all()
    assert ((through["ci_low"] < through["value"]) & (through["value"] < through["ci_high"])).all()
    assert top1["value"].min() > 25 and top1["value"].max() > 60  # ten classes: chance is 10%

    for target in ("cpu-int8", "openvino-cpu-int8"):
        manifest = load_manifest(out / "deploy" / target / "manifest.json")
        budget = manifest["budget"]["max_latency_ms"]
        measured = latency[latency["target"] == target]
        # the budget bites: halfway between the fastest and the slowest width, so the slowest is out
        assert measured["p90_ms"].min() <= budget < measured["p90_ms"].max()
        assert manifest["configuration"]["latency"]["p90_ms"] <= budget
        assert all(rung["latency"]["p90_ms"] <= budget for rung in manifest["ladder"])
        assert str(out / "deploy" / target / "manifest.json") in printed
    with Image.open(out / "report" / "pareto.png") as image:
        assert image.format == "PNG"
    assert "Plotly.newPlot" in (out / "report" / "pareto.html").read_text()
    loadtest = json.loads((out / "loadtest" / "loadtest.json").read_text())  # the ladder under interference
    assert [run["run"] for run in loadtest["runs"]] == ["adaptive"] and loadtest["runs"][0]["requests"] > 0
    assert [phase["spinners"] for phase in loadtest["schedule"]] == [0, 1, 0]
    assert "load test:" in printed and "adaptive: within budget in" in printed

    code, printed, err = run(capsys, "demo", "--out", out, "--epochs", "3", "--max-seconds", "3")
    assert code == 0, err
    assert "reusing the trained weights" in printed
    again = pd.read_parquet(out / "results" / "latency.parquet")
    assert sorted(again["run_id"]) == sorted(latency["run_id"])  # nothing measured twice


def test_demo_rejects_bad_options(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--out", tmp_path, "--epochs", "0")
    assert code == 2 and "--epochs" in err
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "demo", "--out", tmp_path / "file")
    assert code == 2 and "is a file" in err
