"""Batch as a planning axis: a static-batch artifact per batch size, rows per batch, a throughput budget."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run
from selection_tables import accuracy_row, latency_row, latency_table, small_model, write_results

from planner.accuracy.table import load_accuracy
from planner.errors import PlannerError
from planner.measure.targets import read_target
from planner.plan.pareto import candidates
from planner.plan.select import Budget, select
from planner.units import parse_rate_per_s
from profilers.results import load_latency

QUICK = ["--max-seconds", "0.3", "--min-queries", "16"]


def test_batches_are_validated_and_throughput_parsed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('backend = "onnxruntime"\nbatches = [1, 1]\n')
    with pytest.raises(PlannerError, match="'batches' must list distinct batch sizes"):
        read_target(path)
    assert parse_rate_per_s("500/s") == parse_rate_per_s("500") == 500.0
    with pytest.raises(PlannerError, match="malformed throughput"):
        parse_rate_per_s("fast")


@pytest.mark.slow  # about 55 s on the shared 2-core machine: 8 measurements, 8 evaluations, a manifest
def test_the_user_path_profile_evaluate_select_manifest_at_a_throughput(tmp_path, capsys):
    """profile and evaluate each batch size's own file; select and manifest with --min-throughput ship
    batch-4 rungs whose accuracy was scored on the batch-4 artifact."""
    import planner
    from planner.deploy.manifest import load_manifest

    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "batched.toml").write_text(
        'backend = "onnxruntime"\nthreads = 1\nbatches = [1, 4]\nprecisions = ["fp32", "int8"]\n'
    )
    checkpoint = planner.save_checkpoint(small_model(), tmp_path / "weights.pt")
    out = tmp_path / "out"
    on = ["-t", "batched", "--targets-dir", targets, "--out", out]
    code, _, err = run(
        capsys, "profile", *on, "--checkpoint", checkpoint, "--widths", "0.25,1.0", *QUICK,
        "--calibration-data", "digits", "--calibration-size", "16",
    )  # fmt: skip
    assert code == 0, err
    table = load_latency(out)
    assert len(table) == 8 and set(table["status"]) == {"ok"}  # 2 widths x 2 batches x 2 precisions
    assert set(zip(table["batch"], table["input_shape"], strict=True)) == {(1, "1x1x8x8"), (4, "4x1x8x8")}
    ratio = table["throughput_ips"] * table["p50_ms"] / 1000
    assert (ratio.round(6) == table["batch"]).all()  # images per second: a batch counts b images

    code, printed, err = run(
        capsys, "evaluate", "s_cnn_small", "--checkpoint", checkpoint, "--data", "digits",
        "--widths", "0.25,1.0", *on, "--calibration-size", "16", "--json",
    )  # fmt: skip
    assert code == 0, err
    scored = json.loads(printed.splitlines()[-1])["results"]
    assert {(r["precision"], r["batch"]) for r in scored} == {
        (p, b) for p in ("fp32", "int8") for b in (1, 4)
    }
    accuracy = load_accuracy(out)
    runtime = accuracy[(accuracy["metric"] == "top1") & (accuracy["target"] == "batched")]
    assert len(runtime) == 8 and set(runtime["batch"]) == {1, 4} and set(runtime["n"]) == {360}

    floor = round(float(table.loc[table["batch"] == 1, "throughput_ips"].max()) * 1.01, 1)
    budget = ["--max-latency", "10s", "--min-throughput", f"{floor}/s"]
    code, printed, err = run(capsys, "select", *on, *budget, "--json", "--no-measure")
    report = json.loads(printed)
    assert report["budget"]["min_throughput_ips"] == pytest.approx(floor, rel=1e-3)
    if not (table.loc[table["batch"] == 4, "throughput_ips"] >= floor).any():
        assert code == 1 and report["choice"] is None  # batching bought nothing on this (loaded) machine
        pytest.skip("no batch-4 row reached the batch-1 throughput: nothing to ship")
    assert code == 0, err
    for row in [report["choice"], *report["ladder"]]:
        assert row["batch"] == 4 and row["throughput_ips"] >= floor
        assert row["accuracy_batch"] == 4 and row["accuracy_runtime"] == "onnxruntime"

    deploy = tmp_path / "deploy"
    code, _, err = run(capsys, "manifest", *on, "-c", checkpoint, "-o", deploy, *budget)
    assert code == 0, err
    manifest = load_manifest(deploy / "batched")
    assert manifest["target"]["batch"] == 4 and manifest["budget"]["min_throughput_ips"] == pytest.approx(
        floor
    )
    import onnx

    for rung in manifest["ladder"]:
        assert rung["batch"] == 4 and rung["label"].endswith(" b4")
        assert rung["accuracy"]["batch"] == 4 and rung["accuracy"]["runtime"] == "onnxruntime"
        shipped = onnx.load(str(deploy / "batched" / rung["artifact"]["files"][0]["path"]))
        assert shipped.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_a_batch_b_file_is_fed_b_images_at_a_time_and_the_padding_dropped(tmp_path):
    from planner.measure.artifacts import export_artifacts, make_jobs
    from planner.measure.targets import load_target
    from profilers.predict import predict

    model = small_model()
    target = load_target("cpu")
    images = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)  # 4 + 3, one padded
    outputs = {}
    for batch in (1, 4):
        (artifact,) = export_artifacts(model, [model.config(0.5)], tmp_path, target, batch=batch)
        assert artifact.input_shape[0] == batch
        (job,) = make_jobs([artifact], target.at_batch(batch))
        outputs[batch] = predict(job, images)
    assert outputs[4].shape == outputs[1].shape == (7, 10)
    assert np.allclose(outputs[4], outputs[1], atol=1e-5)


def test_a_batched_target_is_scored_on_each_batch_size_it_lists(tmp_path):
    from planner.accuracy.data import load_dataset
    from planner.accuracy.runtime import evaluate_target

    path = tmp_path / "batched.toml"
    path.write_text('backend = "onnxruntime"\nbatch = 4\nbatches = [4, 7]\n')
    target, model, digits = read_target(path), small_model(), load_dataset("digits")
    scored = {
        batch: evaluate_target(model, [model.config(0.25)], target, digits, "val", tmp_path, batch=batch)
        for batch in (None, 7)
    }
    (at4,), (at7,) = scored[None]["fp32"], scored[7]["fp32"]  # the first batch listed is the default
    assert at4.samples == at7.samples == digits.size("val") and digits.size("val") % 7
    assert (at4.hits == at7.hits).mean() > 0.99
    assert sorted(f.name.split("-")[2] for f in (tmp_path / "artifacts").glob("*.onnx")) == [
        "4x1x8x8",
        "7x1x8x8",
    ]
    with pytest.raises(PlannerError, match="does not list batch 1; it runs batches 4, 7"):
        evaluate_target(model, [model.config(0.25)], target, digits, "val", tmp_path, batch=1)


def test_accuracy_joins_the_latency_row_of_the_same_batch_size(tmp_path, capsys, monkeypatch):
    """The runtime's score of the batch-b file first, then another batch's (said so), then torch's."""
    model = small_model()
    config = model.config(0.5)
    latency = latency_table(
        latency_row(config, "cpu", batch, precision=precision, batch=batch, throughput_ips=1000.0 * batch)
        for precision in ("fp32", "int8")
        for batch in (1, 4)
    )
    scored = {"target": "cpu", "runtime": "onnxruntime", "n": 360}
    accuracy = pd.DataFrame(
        [
            accuracy_row(config, 90.0, runtime="torch", target="", precision="fp32"),
            accuracy_row(config, 91.0, precision="fp32", batch=1, **scored),
            accuracy_row(config, 92.0, precision="fp32", batch=4, **scored),
            accuracy_row(config, 93.0, precision="int8", batch=1, **scored),
        ]
    )
    table = candidates(latency, accuracy, "cpu").set_index(["precision", "batch"])
    assert table.loc[("fp32", 1), ["accuracy", "accuracy_batch"]].tolist() == [91.0, 1]
    assert table.loc[("fp32", 4), ["accuracy", "accuracy_batch"]].tolist() == [92.0, 4]
    assert table.loc[("int8", 4), ["accuracy", "accuracy_batch"]].tolist() == [93.0, 1]
    only_torch = accuracy.iloc[:1]
    table = candidates(latency, only_torch, "cpu")
    assert set(zip(table["precision"], table["batch"], strict=True)) == {("fp32", 1), ("fp32", 4)}
    assert table["accuracy_batch"].isna().all() and table.attrs["unscored"] == 2  # int8 needs the runtime

    write_results(tmp_path, latency, accuracy)
    monkeypatch.setenv("COLUMNS", "200")  # the table's cells on one line each
    argv = ["select", "-t", "cpu", "--out", tmp_path, "--max-latency", "1s", "--min-throughput", "2000/s"]
    code, printed, err = run(capsys, *argv, "--no-measure")
    assert code == 0, err
    assert "0.5x int8 b4" in printed and "onnxruntime, scored at batch 1" in printed


def test_the_ladder_keeps_the_choices_batch_size():
    """A runtime feeds one static shape: rungs of another batch size never join the choice's ladder."""
    model = small_model()
    narrow, wide = model.config(0.25), model.config(1.0)
    latency = latency_table(
        [
            latency_row(narrow, "cpu", 1.0),
            latency_row(wide, "cpu", 2.0),
            latency_row(narrow, "cpu", 3.0, batch=4),
            latency_row(wide, "cpu", 6.0, batch=4),
        ]
    )
    scored = {"target": "cpu", "runtime": "onnxruntime"}
    accuracy = pd.DataFrame(
        [
            accuracy_row(narrow, 80.0, batch=1, **scored),
            accuracy_row(wide, 90.0, batch=1, **scored),
            accuracy_row(narrow, 80.0, batch=4, **scored),
            accuracy_row(wide, 90.5, batch=4, **scored),  # the batch-4 file scored one image better
        ]
    )
    selection = select(candidates(latency, accuracy, "cpu"), Budget(10.0), significance=False)
    assert (selection.choice["width"], selection.choice["batch"]) == (1.0, 4)
    assert list(zip(selection.ladder["width"], selection.ladder["batch"], strict=True)) == [
        (0.25, 4),
        (1.0, 4),
    ]
