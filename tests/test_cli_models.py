"""`planner models`, `planner info`, `planner export` as a user runs them."""

import json
import subprocess
import sys

import onnx
import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=300
    )


def test_models_lists_the_zoo():
    result = run("models")
    assert result.returncode == 0
    for name in ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50", "us_mobilenet_v2", "s_cnn_small"):
        assert name in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if "us_cnn_small" in line]
    assert "0.25 … 1 (any)" in line


def test_info_json_has_channels_macs_and_params_per_width():
    result = run("info", "s_mobilenet_v2", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == "s_mobilenet_v2"
    assert [w["width"] for w in info["widths"]] == [0.35, 0.5, 0.75, 1.0]
    full = info["widths"][-1]
    assert round(full["macs"] / 1e6, 1) == 300.8 and full["channels"][0] == 32
    assert set(full) >= {"width", "macs", "params", "channels"}


def test_export_writes_an_onnx_file(tmp_path):
    out = tmp_path / "small.onnx"
    result = run("export", "s_cnn_small", "--width", "0.5", "-o", str(out))
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(str(out))
    assert "0.5x" in result.stdout


def test_export_of_a_per_layer_config_file(tmp_path):
    config = {
        "model": "s_cnn_small",
        "width": None,
        "channels": {"features.0.0": 8, "features.1.0": 40, "features.2.0": 24, "features.3.0": 100},
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    result = run(
        "export", "s_cnn_small", "--config", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.onnx")
    )
    assert result.returncode == 0, result.stderr
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    shapes = sorted(tuple(t.dims) for t in graph.initializer if len(t.dims) == 4)
    assert (100, 24, 3, 3) in shapes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "nope"], "unknown model 'nope'"),
        (["info", "s_mobilenet_v2", "--widths", "0.6"], "not one of s_mobilenet_v2's trained widths"),
        (["export", "s_cnn_small", "--width", "0.5", "--config", "x.json", "-o", "a.onnx"], "exactly one"),
        (
            ["export", "s_cnn_small", "--config", "/no/such.json", "-o", "a.onnx"],
            "width configuration /no/such.json does not exist",
        ),
        (["export", "s_cnn_small", "--width", "0.5", "-o", "/no/such/dir/a.onnx"], "does not exist"),
        (
            ["export", "s_cnn_small", "--width", "0.5", "--checkpoint", "/no/ckpt.pt", "-o", "a.onnx"],
            "does not exist",
        ),
        # Usage errors that typer finds before any command runs get the same one line.
        (["select"], "Missing option '--target'"),
        (["train", "s_cnn_small", "--epochs", "x"], "Invalid value for '--epochs'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_config_and_corrupt_checkpoint(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    for args in (
        ["--config", str(tmp_path / "bad.json")],
        ["--width", "1", "--checkpoint", str(tmp_path / "bad.pt")],
    ):
        result = run("export", "s_cnn_small", *args, "-o", str(tmp_path / "a.onnx"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ")
    assert not (tmp_path / "a.onnx").exists()
