"""Batch as a planning axis: a static-batch artifact per batch size, rows per batch, a throughput budget."""

from __future__ import annotations

import json

import pytest
from cli_helpers import fresh_out, run_cli
from selection_tables import accuracy_row, accuracy_table, small_model

from planner.errors import PlannerError
from planner.measure.targets import read_target
from planner.units import parse_rate_per_s
from profilers.results import load_latency

SMALL = ["--model", "s_cnn_small", "--in-channels", "1", "--num-classes", "10", "--input-size", "8"]
QUICK = ["--max-seconds", "0.3", "--min-queries", "16"]


def test_batches_are_validated_and_throughput_parsed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('backend = "onnxruntime"\nbatches = [1, 1]\n')
    with pytest.raises(PlannerError, match="'batches' must list distinct batch sizes"):
        read_target(path)
    assert parse_rate_per_s("500/s") == parse_rate_per_s("500") == 500.0
    with pytest.raises(PlannerError, match="malformed throughput"):
        parse_rate_per_s("fast")


def test_profile_measures_each_batch_and_select_honours_a_throughput_budget(exports, tmp_path, capsys):
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "batched.toml").write_text(
        'backend = "onnxruntime"\nthreads = 1\nbatches = [1, 4]\nprecisions = ["fp32", "int8"]\n'
    )
    out = fresh_out(exports, tmp_path)
    argv = ["profile", "-t", "batched", "--targets-dir", str(targets), *SMALL, "--widths", "0.25,1.0"]
    argv += ["--out", str(out), *QUICK, "--calibration-data", "digits", "--calibration-size", "16"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    table = load_latency(out)
    assert len(table) == 8 and set(table["status"]) == {"ok"}  # 2 widths x 2 batches x 2 precisions
    assert set(zip(table["batch"], table["input_shape"], strict=True)) == {(1, "1x1x8x8"), (4, "4x1x8x8")}
    ratio = table["throughput_ips"] * table["p50_ms"] / 1000
    assert (ratio.round(6) == table["batch"]).all()  # images per second: a batch counts b images

    model = small_model()
    accuracy = accuracy_table([accuracy_row(model.config(0.25), 90.0), accuracy_row(model.config(1.0), 95.0)])
    accuracy.to_parquet(out / "accuracy.parquet", index=False)
    single = table[(table["batch"] == 1) & (table["precision"] == "fp32")]
    floor = float(single["throughput_ips"].max()) * 1.05
    select = ["select", "-t", "batched", "--targets-dir", str(targets), "--out", str(out), "--json"]
    select += ["--max-latency", "10s", "--min-throughput", f"{floor:.1f}/s", "--no-measure"]
    code, printed, err = run_cli(select, capsys)
    report = json.loads(printed)
    assert report["budget"]["min_throughput_ips"] == pytest.approx(floor, rel=1e-3)
    if code == 0:
        assert report["choice"]["throughput_ips"] >= floor
        assert all(rung["throughput_ips"] >= floor for rung in report["ladder"])
    else:  # nothing reached the floor on this (loaded) machine: said so, with exit 1
        assert code == 1 and report["choice"] is None

    # A manifest of the batch-4 fp32 rungs ships static batch-4 files.
    import onnx

    import planner
    from planner.deploy.manifest import load_manifest, write_manifest
    from planner.measure.artifacts import export_ladder
    from planner.plan.pareto import candidates, read_tables
    from planner.plan.select import Budget
    from planner.plan.select import select as choose

    checkpoint = planner.save_checkpoint(model, tmp_path / "weights.pt")
    latency, scores = read_tables(out)
    found = candidates(latency, scores, "batched")
    selection = choose(found[(found["batch"] == 4) & (found["precision"] == "fp32")], Budget(1e4), False)
    target = read_target(targets / "batched.toml")
    exported = export_ladder(selection.ladder, target, checkpoint, out)
    write_manifest(selection, target, exported.model, checkpoint, exported.onnx, tmp_path / "deploy")
    manifest = load_manifest(tmp_path / "deploy")
    assert {rung["batch"] for rung in manifest["ladder"]} == {4}
    for rung in manifest["ladder"]:
        assert rung["label"].endswith(" b4")
        shipped = onnx.load(str(tmp_path / "deploy" / rung["artifact"]["files"][0]["path"]))
        assert shipped.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_a_batched_target_is_evaluated_on_its_batch_1_artifacts(tmp_path):
    from planner.accuracy.data import load_dataset
    from planner.accuracy.runtime import evaluate_target

    path = tmp_path / "batched.toml"
    path.write_text('backend = "onnxruntime"\nbatch = 4\n')
    model = small_model()
    digits = load_dataset("digits")
    scored = evaluate_target(model, [model.config(0.25)], read_target(path), digits, "val", tmp_path)
    (result,) = scored["fp32"]
    assert result.samples == digits.size("val")
