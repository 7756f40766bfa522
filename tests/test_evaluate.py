"""Evaluation: correct top-1/top-5 per configuration, the JSON shape, rows under profile's ids, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from planner.accuracy.data import load_dataset
from planner.accuracy.evaluate import evaluate
from planner.accuracy.table import load_accuracy
from planner.errors import PlannerError
from planner.models import create_model
from planner.nn.checkpoint import save_checkpoint

PER_LAYER = {"features.0.0": 8, "features.1.0": 64, "features.2.0": 16, "features.3.0": 128}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained digits model whose BN statistics are not the defaults, so widths score differently."""
    torch.manual_seed(0)
    model = create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    for bn in model.batch_norms():
        for norm in bn.bn:
            norm.running_mean.normal_(0, 0.1)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "digits.pt")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"model": "s_cnn_small", "width": None, "channels": PER_LAYER}))
    return path


def test_top1_and_top5_match_a_direct_count() -> None:
    torch.manual_seed(1)
    model = create_model("s_cnn_small").eval()
    dataset = load_dataset("digits")
    [score] = evaluate(model, [model.config(0.5)], dataset.batches("val", 100))
    images, labels = dataset.splits["val"]
    model.set_width(0.5)
    with torch.no_grad():
        logits = model(images)
    assert score.top1 == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert score.top5 == pytest.approx(100 * top5)
    assert score.samples == 360 and not score.calibrated


def test_no_top5_with_five_classes_or_fewer() -> None:
    model = create_model("s_cnn_small", num_classes=3).eval()
    batches = [(torch.rand(12, 1, 8, 8), torch.arange(12) % 3)]
    [score] = evaluate(model, [model.config(1.0)], batches)
    assert score.top5 is None and score.metrics().keys() == {"top1"}


def test_us_width_between_tracked_ones_is_calibrated_first() -> None:
    model = create_model("us_mobilenet_v2", num_classes=3, input_size=32, in_channels=1).eval()
    batches = [(torch.rand(6, 1, 32, 32), torch.arange(6) % 3)]
    tracked, between = evaluate(model, [model.config(0.5), model.config(0.6125)], batches, batches)
    assert not tracked.calibrated and between.calibrated
    with pytest.raises(PlannerError, match="0.6125x has no trained BN statistics"):
        evaluate(model, [model.config(0.6125)], batches)


def test_evaluate_json_and_rows_share_profiles_config_ids(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["evaluate", "s_cnn_small", "-c", str(checkpoint), "--data", "digits", "--out", str(out), "--json"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads(stdout)
    model = create_model("s_cnn_small")
    assert report["model"] == "s_cnn_small"
    assert [r["width"] for r in report["results"]] == [0.25, 0.5, 0.75, 1.0]
    assert [r["config_id"] for r in report["results"]] == [model.config(w).id for w in model.widths]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in report["results"])
    table = load_accuracy(out)
    assert len(table) == 8 and set(table["metric"]) == {"top1", "top5"}
    assert set(table["source"]) == {"measured"} and set(table["split"]) == {"val"}
    top1 = table[table["metric"] == "top1"].set_index("config_id")["value"]
    assert all(top1[r["config_id"]] == pytest.approx(r["top1"]) for r in report["results"])

    run_cli([*argv, "--widths", "0.5"], capsys)
    assert len(load_accuracy(out)) == 8  # re-evaluating replaces the rows


def test_per_layer_config_is_calibrated_automatically(checkpoint: Path, config_file: Path, tmp_path, capsys):
    argv = [
        "evaluate",
        "s_cnn_small",
        "-c",
        str(checkpoint),
        "--data",
        "digits",
        "--config",
        str(config_file),
    ]
    code, stdout, err = run_cli([*argv, "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    [result] = json.loads(stdout)["results"]
    expected = create_model("s_cnn_small").config_from_channels(PER_LAYER)
    assert result["config"] == result["config_id"] == expected.id and result["calibrated"] is True
    row = load_accuracy(tmp_path).iloc[0]
    assert np.isnan(row["width"]) and json.loads(row["config"])["channels"] == PER_LAYER


def test_needing_calibration_without_data_is_an_error(checkpoint: Path, config_file: Path, tmp_path, capsys):
    np.savez(
        tmp_path / "test.npz", x_val=np.random.rand(20, 8, 8).astype(np.float32), y_val=np.arange(20) % 10
    )
    argv = [
        "evaluate",
        "s_cnn_small",
        "-c",
        str(checkpoint),
        "--config",
        str(config_file),
        "--out",
        str(tmp_path),
    ]
    code, _, err = run_cli([*argv, "--data", str(tmp_path / "test.npz")], capsys)
    assert code == 2 and "no trained BN statistics and there is no calibration data" in err
    code, _, err = run_cli([*argv, "--data", "digits", "--calibration-batches", "0"], capsys)
    assert code == 2 and "no calibration data" in err
    model = create_model("s_cnn_small").eval()
    with pytest.raises(PlannerError, match="no calibration data"):
        evaluate(
            model, [model.config_from_channels(PER_LAYER)], [(torch.rand(4, 1, 8, 8), torch.zeros(4).long())]
        )


def test_bad_input_is_one_line_and_exit_2(checkpoint: Path, tmp_path: Path, capsys) -> None:
    np.savez(tmp_path / "three.npz", x=np.random.rand(60, 8, 8).astype(np.float32), y=np.arange(60) % 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    base = ["evaluate", "s_cnn_small", "--out", str(tmp_path / "out")]
    cases = [
        (["-c", str(checkpoint), "--data", str(tmp_path / "missing")], "does not exist"),
        (["-c", str(checkpoint), "--data", str(tmp_path / "empty")], "no class sub-folders"),
        (
            ["-c", str(checkpoint), "--data", str(tmp_path / "three.npz")],
            "3 classes but the checkpoint has 10",
        ),
        (["-c", str(checkpoint), "--data", "digits", "--widths", "0.6"], "not one of s_cnn_small's trained"),
        (["-c", str(tmp_path / "junk.pt"), "--data", "digits"], "junk.pt is not a"),
        (["-c", str(checkpoint), "--data", "digits", "--num-classes", "5"], "does not match the checkpoint"),
    ]
    for argv, message in cases:
        code, _, err = run_cli([*base, *argv], capsys)
        assert code == 2, (argv, err)
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "accuracy.parquet").exists()
