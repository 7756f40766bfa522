"""Bring your own network, end to end through the CLI (issue 13 section 6).

A torchvision resnet18 and a network from a user's file, both at 16x16 on digits repeated to 3 channels:
original weights -> train (converted, a few steps) -> evaluate -> profile on cpu and openvino-cpu -> lut
build -> legr learn/config -> select -> manifest -> report; the manifest's artifacts load and match.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from planner.cli import main

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("planner.models.convert") is None,
        reason="needs the converter (planner.models.convert, issue 13 sections 1-3)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
    ),
]

SIZE = 16
QUICK = ["--max-seconds", "1", "--min-queries", "16"]
# the table measures 44 layer shapes of resnet18 at 2 grid points: 0.3 s each is enough to run through
LUT_QUICK = ["--max-seconds", "0.3", "--min-queries", "16"]
USER_NET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


def build(num_classes=10, in_channels=3):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), Block(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
"""


def cli(*argv) -> None:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    assert done.value.code in (0, None), argv


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from planner.accuracy.data import load_dataset

    dataset = load_dataset("digits", image_size=SIZE)
    arrays = {}
    for split, (x, y) in dataset.splits.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.repeat(1, 3, 1, 1).numpy(), y.numpy()
    path = tmp_path_factory.mktemp("data") / "digits3.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.slow  # trains, profiles on two runtimes, builds a latency table and searches
@pytest.mark.timeout(1800)  # converts the network in each command: minutes on a busy 2-core machine
@pytest.mark.parametrize("kind", ["torchvision", "user file"])
def test_convert_train_profile_plan_ship(kind: str, data: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from planner.deploy.manifest import load_manifest
    from planner.models.sources import load_source
    from planner.nn.build import build_model
    from planner.nn.counting import count
    from planner.widths import WidthConfig

    if kind == "torchvision":
        source = "torchvision:resnet18"
    else:
        (tmp_path / "mynet.py").write_text(USER_NET)
        source = f"{tmp_path / 'mynet.py'}:build"
    torch.manual_seed(0)
    original = tmp_path / "original.pth"
    torch.save(load_source(source, num_classes=10, input_size=SIZE).state_dict(), original)
    slim, out = tmp_path / "slim.pt", tmp_path / "out"

    cli("train", source, "--checkpoint", original, "--data", data, "--widths", "0.5,1.0", "--epochs", 1,
        "--batch-size", 512, "-o", slim)  # fmt: skip
    info = torch.load(slim, weights_only=True)["planner"]
    assert info["source"] == source and info["widths"] == [0.5, 1.0] and info["input_size"] == SIZE
    cli("evaluate", source, "--checkpoint", slim, "--data", data, "--out", out)
    cli("profile", "--target", "cpu", "--target", "openvino-cpu", "--checkpoint", slim, "--out", out, *QUICK)
    cli("lut", "build", "--target", "cpu", "--checkpoint", slim, "--points", 2, "--calibration-samples", 0,
        "--out", out, *LUT_QUICK)  # fmt: skip
    coefficients, config_path = tmp_path / "coefficients.json", tmp_path / "config.json"
    cli("legr", "learn", source, "--checkpoint", slim, "--data", data, "--generations", 2, "--population", 2,
        "--sample", 2, "-o", coefficients)  # fmt: skip
    model = build_model(checkpoint=slim)
    half_macs = count(model, model.config(0.5)).macs
    cli("legr", "config", source, "--coefficients", coefficients, "--max-macs", int(1.5 * half_macs),
        "-o", config_path)  # fmt: skip
    assert model.validate(WidthConfig.load(config_path))
    cli("select", "--target", "cpu", "--out", out, "--max-latency", "10s")
    deploy = tmp_path / "deploy"
    cli("manifest", "-t", "cpu", "-t", "openvino-cpu", "--max-latency", "10s", "--checkpoint", slim,
        "--out", out, "-o", deploy)  # fmt: skip
    cli("report", "--out", out, "-o", tmp_path / "report")
    assert (tmp_path / "report" / "pareto.csv").stat().st_size > 0

    manifest = load_manifest(deploy / "cpu" / "manifest.json")  # checks the artifacts' digests
    assert manifest["model"]["name"] == source
    assert load_manifest(deploy / "openvino-cpu" / "manifest.json")["target"]["backend"] == "openvino"
    x = torch.randn(2, 3, SIZE, SIZE)
    for rung in manifest["ladder"]:
        (entry,) = [f for f in rung["artifact"]["files"] if f["role"] == "model"]
        session = ort.InferenceSession(
            str(deploy / "cpu" / entry["path"]), providers=["CPUExecutionProvider"]
        )
        model.set_config(model.validate(WidthConfig(source, tuple(rung["channels"].items()), rung["width"])))
        with torch.no_grad():
            expected = model(x).numpy()
        rows = [session.run(None, {session.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(2)]
        assert np.abs(np.concatenate(rows) - expected).max() < 1e-4, rung["label"]
