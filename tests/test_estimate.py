"""Roofline estimates: the arithmetic, the order it implies, and that they never pass for measurements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import run_cli
from torch import nn

import planner
from planner.errors import PlannerError
from planner.measure.estimate import DEFAULT_LAYER_OVERHEAD_US, estimate_layers, estimate_rows
from planner.measure.targets import load_target
from planner.nn.build import build_model
from profilers.results import load_latency

SMALL = ["--model", "s_cnn_small", "--in-channels", "1", "--num-classes", "10", "--input-size", "8"]


def test_a_layer_takes_the_slower_of_compute_and_memory_plus_overhead() -> None:
    pi = load_target("raspberry-pi-5")
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    (layer,) = estimate_layers(nn.Sequential(conv), (1, 16, 28, 28), pi)
    macs = 32 * 28 * 28 * 16 * 9
    moved = (16 * 28 * 28 + 32 * 28 * 28 + conv.weight.numel()) * 4  # fp32
    assert (layer.kind, layer.macs, layer.bytes) == ("conv", macs, moved)
    assert layer.compute_ms == pytest.approx(2 * macs / (pi.hardware.peak_fp32_gflops * 1e6))
    assert layer.memory_ms == pytest.approx(moved / (pi.hardware.memory_bandwidth_gbs * 1e6))
    assert layer.ms == pytest.approx(max(layer.compute_ms, layer.memory_ms) + DEFAULT_LAYER_OVERHEAD_US / 1e3)
    assert layer.bound == "compute"  # a 3x3 conv with 16 input channels is compute-bound on a Pi

    depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    (thin,) = estimate_layers(nn.Sequential(depthwise), (1, 32, 28, 28), pi)
    assert thin.macs == 32 * 28 * 28 * 9 and thin.bound == "memory"


def test_fp16_targets_move_half_the_bytes() -> None:
    nano = load_target("jetson")
    dense = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    layers = estimate_layers(dense, (1, 8, 4, 4), nano)
    assert [layer.kind for layer in layers] == ["conv", "linear"]
    assert layers[0].bytes == (8 * 16 * 2 + 8 * 8 + 8) * 2


def test_wider_is_slower_and_faster_hardware_is_faster() -> None:
    model = planner.create_model("s_cnn_small", in_channels=3, input_size=32)
    configs = [model.config(width) for width in model.widths]
    per_target = {
        name: [row["p50_ms"] for row in estimate_rows(model, configs, load_target(name))]
        for name in ("raspberry-pi-5", "jetson-orin-nano", "jetson-agx-orin")
    }
    for estimates in per_target.values():
        assert estimates == sorted(estimates) and estimates[0] < estimates[-1]
    for slow, fast in zip(per_target["raspberry-pi-5"], per_target["jetson-agx-orin"], strict=True):
        assert slow > fast
    rows = estimate_rows(model, configs[:1], load_target("jetson"))
    assert rows[0]["estimated"] is True and rows[0]["n"] == 0
    assert rows[0]["macs"] == planner.count(model, configs[0]).macs


def test_estimate_on_a_device_nobody_can_reach(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["profile", "--target", "raspberry-pi-5", "--target", "jetson", *SMALL, "--estimate"]
    code, stdout, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    table = load_latency(out)
    assert len(table) == 8 and table["estimated"].all()
    assert set(table["target"]) == {"raspberry-pi-5", "jetson-orin-nano"}
    assert (table["p50_ms"] > 0).all() and set(table["env_runtime"]) == {"roofline"}
    assert "estimated" in stdout and "not measured" in stdout


def test_target_without_hardware_figures_cannot_be_estimated(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        ["profile", "--target", "cpu", *SMALL, "--estimate", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "no [hardware] figures" in err and "peak_fp32_gflops" in err and "cpu.toml" in err


def test_estimates_and_measurements_never_replace_each_other(tmp_path: Path, capsys) -> None:
    """Measured rows win: an estimate is not stored over one, and a measurement is not skipped for one."""
    targets = tmp_path / "targets"
    targets.mkdir()
    shutil.copy(load_target("cpu").path, targets / "cpu.toml")
    with open(targets / "cpu.toml", "a") as handle:
        handle.write('\n[hardware]\npeak_fp32_gflops = 50.0\nmemory_bandwidth_gbs = 10.0\nsource = "test"\n')
    out = tmp_path / "out"
    common = ["profile", "--target", "cpu", "--targets-dir", str(targets), *SMALL, "--out", str(out)]

    assert run_cli([*common, "--widths", "0.25", "--estimate"], capsys)[0] == 0
    code, _, err = run_cli(
        [*common, "--widths", "0.25", "--max-seconds", "0.3", "--min-queries", "16"], capsys
    )
    assert code == 0, err
    table = load_latency(out)
    assert len(table) == 1 and not table["estimated"].iloc[0] and table["n"].iloc[0] >= 16

    code, _, err = run_cli([*common, "--widths", "0.25", "--estimate"], capsys)
    assert code == 0 and "not stored" in err
    after = load_latency(out)
    assert len(after) == 1 and not after["estimated"].iloc[0]
    assert after["run_id"].iloc[0] == table["run_id"].iloc[0]


def test_estimate_needs_figures_for_the_precision(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "half.toml").write_text(
        'backend = "onnxruntime"\nprecision = "fp16"\n[hardware]\npeak_fp32_gflops = 10.0\nsource = "x"\n'
    )
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    with pytest.raises(PlannerError, match="memory_bandwidth_gbs"):
        estimate_rows(model, [model.config(1.0)], load_target("half", targets))
