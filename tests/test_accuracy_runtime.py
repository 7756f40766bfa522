"""Accuracy of the shipped artifact through the target's runtime, with its interval and paired test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from planner.accuracy.data import load_dataset
from planner.accuracy.evaluate import evaluate
from planner.accuracy.runtime import evaluate_target
from planner.accuracy.table import PARQUET, accuracy_rows, load_accuracy, write_accuracy
from planner.errors import PlannerError
from planner.measure.targets import load_target
from planner.nn.build import build_model
from planner.stats import decode_hits, encode_hits, mcnemar_p, wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(95, 100)
    assert (low, high) == pytest.approx((88.83, 97.85), abs=0.01)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(100.0)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_mcnemar_counts_only_the_images_the_two_disagree_on():
    right = np.ones(500, dtype=bool)
    five_wrong, six_wrong = right.copy(), right.copy()
    five_wrong[:5] = False
    six_wrong[:6] = False
    assert mcnemar_p(right, five_wrong) == pytest.approx(2 / 32)  # 5 discordant: not significant
    assert mcnemar_p(right, six_wrong) == pytest.approx(2 / 64)  # 6: significant at 5%
    assert mcnemar_p(right, right) == 1.0
    swapped = right.copy()
    swapped[10:15] = False  # same accuracy as five_wrong, other images: 10 discordant, split 5/5
    assert mcnemar_p(five_wrong, swapped) == 1.0


def test_hits_round_trip_through_text():
    hits = np.random.default_rng(0).random(37) > 0.3
    assert (decode_hits(encode_hits(hits), 37) == hits).all()
    assert decode_hits(encode_hits(hits), 80) is None and decode_hits("zz", 37) is None


def test_an_accuracy_table_from_before_runtimes_loads(tmp_path):
    old = pd.DataFrame(
        {
            "model": ["s_cnn_small"] * 2,
            "config_id": ["a", "b"],
            "width": [0.5, 1.0],
            "config": ["", ""],
            "metric": ["top1", "top1"],
            "value": [90.0, 95.0],
            "dataset": ["digits"] * 2,
            "split": ["val"] * 2,
            "checkpoint": ["", ""],
            "source": ["measured", "imported"],
            "timestamp": ["t", "t"],
        }
    )
    old.to_parquet(tmp_path / PARQUET, index=False)
    table = load_accuracy(tmp_path)
    assert list(table["runtime"]) == ["torch", ""] and set(table["precision"]) == {"fp32"}
    assert table["n"].isna().all() and list(table["value"]) == [90.0, 95.0]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_fp32_through_onnxruntime_agrees_with_torch_and_int8_is_stored_apart(tmp_path, digits):
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    configs = [model.config(0.5)]
    scored = evaluate_target(
        model, configs, load_target("cpu-int8"), digits, "val", tmp_path, calibration_size=16
    )
    assert set(scored) == {"fp32", "int8"}
    (runtime,), (int8,) = scored["fp32"], scored["int8"]
    (torch_side,) = evaluate(model, configs, digits.batches("val", 256))
    assert runtime.samples == torch_side.samples == digits.size("val")
    assert np.mean(runtime.hits == torch_side.hits) > 0.99  # same network, same images
    for precision, results in scored.items():
        write_accuracy(
            tmp_path,
            accuracy_rows(
                model.name,
                results,
                "digits",
                "val",
                target="cpu-int8",
                precision=precision,
                runtime="onnxruntime",
            ),
        )
    write_accuracy(tmp_path, accuracy_rows(model.name, [torch_side], "digits", "val"))
    table = load_accuracy(tmp_path)
    top1 = table[table["metric"] == "top1"].set_index(["runtime", "precision"])
    assert set(top1.index) == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torch", "fp32")}
    row = top1.loc[("onnxruntime", "int8")]
    assert row["n"] == digits.size("val") and row["ci_low"] < row["value"] < row["ci_high"]
    assert (decode_hits(row["hits"], row["n"]) == int8.hits).all()


def test_an_evaluation_split_that_does_not_fit_the_model_is_refused(tmp_path, digits):
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=16)
    with pytest.raises(PlannerError, match="images of shape 1x8x8, s_cnn_small on cpu takes 1x16x16"):
        evaluate_target(model, [model.config(1.0)], load_target("cpu"), digits, "val", tmp_path)


def test_device_side_predict_writes_each_jobs_outputs(exports, tmp_path, capsys):
    from profilers.cli import main as profilers_main
    from profilers.jobs import Job, write_jobs_file
    from profilers.predict import predict

    onnx = sorted((exports / "artifacts").glob("*.onnx"))[:2]
    jobs = [Job(onnx=path, backend="onnxruntime") for path in onnx]
    jobs_file = write_jobs_file(tmp_path / "jobs.json", jobs)
    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "split.npz", x=images)
    out = tmp_path / "outputs.npz"
    argv = ["predict", "--jobs", str(jobs_file), "--images", str(tmp_path / "split.npz"), "--out", str(out)]
    assert profilers_main(argv) == 0
    with np.load(out) as outputs:
        assert sorted(outputs) == ["job0", "job1"]
        for index, job in enumerate(jobs):
            assert outputs[f"job{index}"].shape == (5, 10)
            assert np.allclose(outputs[f"job{index}"], predict(job, images), atol=1e-5)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 3, 8, 8), dtype=np.float32))
    argv[4] = str(tmp_path / "wrong.npz")
    assert profilers_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: evaluation images are 3x8x8") and "takes 1x8x8" in err and "\n" not in err
