"""BN calibration: statistics are the calibration data's, they rescue per-layer configurations, and a
`planner calibrate` checkpoint carries them to a later evaluate without data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from planner.accuracy.data import load_dataset
from planner.accuracy.evaluate import evaluate
from planner.accuracy.train import train
from planner.models import create_model
from planner.nn.calibrate import apply_calibration, calibrate, stored_calibrations
from planner.nn.checkpoint import read_checkpoint, save_checkpoint

PER_LAYER = {"features.0.0": 8, "features.1.0": 64, "features.2.0": 16, "features.3.0": 128}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_checkpoint(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and far faster on a busy machine
    try:
        torch.manual_seed(0)
        model = create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
        train(model, digits, epochs=1, batch_size=32, lr=0.1, seed=0)
    finally:
        torch.set_num_threads(threads)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "digits.pt")


def _load(path: Path):
    model = create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    model.load_state_dict(read_checkpoint(path)["model"])
    return model.eval()


def test_calibrated_statistics_are_the_average_of_the_batch_statistics(trained_checkpoint, digits) -> None:
    model = _load(trained_checkpoint)
    config = model.config_from_channels(PER_LAYER)
    batches = digits.batches("calibration", 50, shuffle=True)
    result = calibrate(model, config, batches, num_batches=3)
    assert result.batches == 3 and not model.training
    first_conv = model.features[0][0]
    with torch.no_grad():
        outputs = [first_conv(x) for x, _ in batches[:3]]
    expected_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    expected_var = torch.stack([o.var(dim=(0, 2, 3)) for o in outputs]).mean(0)
    assert torch.allclose(result.mean["features.0.1"], expected_mean, atol=1e-5)
    assert torch.allclose(result.var["features.0.1"], expected_var, atol=1e-5)
    assert result.mean["features.1.1"].shape == (64,)


def test_calibration_rescues_a_per_layer_configuration(trained_checkpoint, digits) -> None:
    model = _load(trained_checkpoint)
    config = model.config_from_channels(PER_LAYER)
    val = digits.batches("val", 512)
    model.set_config(config)
    with torch.no_grad():
        images, labels = val[0]
        borrowed = 100 * (model(images).argmax(1) == labels).float().mean().item()
    [calibrated] = evaluate(model, [config], val, digits.batches("calibration", 64, shuffle=True))
    assert calibrated.calibrated and calibrated.top1 > borrowed + 20, (borrowed, calibrated.top1)


def test_trained_widths_keep_their_statistics_after_calibrating_another(trained_checkpoint, digits) -> None:
    model = _load(trained_checkpoint)
    val = digits.batches("val", 512)
    before = evaluate(model, [model.config(0.5)], val)[0].top1
    calibrate(model, model.config_from_channels(PER_LAYER), digits.batches("calibration", 64))
    assert evaluate(model, [model.config(0.5)], val)[0].top1 == before


def test_stored_calibration_gives_the_same_outputs_on_a_fresh_model(
    trained_checkpoint, digits, tmp_path
) -> None:
    model = _load(trained_checkpoint)
    config = model.config_from_channels(PER_LAYER)
    result = calibrate(model, config, digits.batches("calibration", 64))
    images = digits.splits["val"][0][:32]
    with torch.no_grad():
        expected = model(images)
    fresh = _load(trained_checkpoint)
    apply_calibration(fresh, result)
    with torch.no_grad():
        assert torch.allclose(fresh(images), expected, atol=1e-6)


def test_calibrate_command_writes_a_checkpoint_evaluate_uses_without_data(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    config_file = tmp_path / "layers.json"
    config_file.write_text(json.dumps({"model": "s_cnn_small", "width": None, "channels": PER_LAYER}))
    calibrated = tmp_path / "calibrated.pt"
    code, _, err = run_cli(
        ["calibrate", "s_cnn_small", "-c", str(trained_checkpoint), "--data", "digits", "--config",
         str(config_file), "--batches", "3", "--batch-size", "64", "-o", str(calibrated)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    model = _load(calibrated)
    config_id = model.config_from_channels(PER_LAYER).id
    assert set(stored_calibrations(model, read_checkpoint(calibrated)["planner"])) == {config_id}
    assert read_checkpoint(calibrated)["model"].keys() == read_checkpoint(trained_checkpoint)["model"].keys()

    base = ["evaluate", "s_cnn_small", "--data", "digits", "--config", str(config_file), "--json"]
    code, out, err = run_cli(
        [*base, "-c", str(calibrated), "--calibration-batches", "0", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    [from_file] = json.loads(out)["results"]
    code, out, _ = run_cli(
        [
            *base,
            "-c",
            str(trained_checkpoint),
            "--batch-size",
            "64",
            "--calibration-batches",
            "3",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    [recalibrated] = json.loads(out)["results"]
    assert from_file["calibrated"] and from_file["top1"] == pytest.approx(recalibrated["top1"])


def test_calibrate_command_needs_configurations_and_data(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    base = ["calibrate", "s_cnn_small", "-c", str(trained_checkpoint), "-o", str(tmp_path / "c.pt")]
    code, _, err = run_cli([*base, "--data", "digits"], capsys)
    assert code == 2 and "give --widths or --config" in err
    np.savez(tmp_path / "val.npz", x_val=np.zeros((10, 8, 8), np.float32), y_val=np.arange(10))
    code, _, err = run_cli([*base, "--data", str(tmp_path / "val.npz"), "--widths", "0.5"], capsys)
    assert code == 2 and "no calibration data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.pt").exists()
