"""Targets: shipped files load, aliases resolve, user directories add and shadow, bad files are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli

from planner.errors import PlannerError
from planner.measure.targets import list_targets, load_target, parse_host

SHIPPED = {
    "cpu",
    "openvino-cpu",
    "torch-cpu",
    "gpu-tensorrt",
    "jetson-orin-nano",
    "jetson-agx-orin",
    "raspberry-pi-5",
}


@pytest.fixture(autouse=True)
def no_env_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLANNER_TARGETS_DIR", raising=False)


def test_shipped_targets_load_with_their_settings() -> None:
    targets = {target.name: target for target in list_targets()}
    assert SHIPPED <= set(targets)
    assert targets["cpu"].backend == "onnxruntime" and not targets["cpu"].is_remote
    assert targets["openvino-cpu"].backend == "openvino"
    assert targets["torch-cpu"].backend == "torch"
    for name in ("gpu-tensorrt", "jetson-orin-nano", "jetson-agx-orin"):
        assert (targets[name].backend, targets[name].precision) == ("tensorrt", "fp16")
    for name in ("jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5"):
        target = targets[name]
        assert target.is_remote
        assert target.hardware is not None and target.hardware.source
        assert target.hardware.peak_fp32_gflops and target.hardware.memory_bandwidth_gbs
    pi = targets["raspberry-pi-5"]
    assert (pi.backend, pi.device, pi.threads) == ("onnxruntime", "CPU", 4)
    # The Orin Nano's GPU is slower and has less bandwidth than the AGX Orin's.
    nano, agx = targets["jetson-orin-nano"].hardware, targets["jetson-agx-orin"].hardware
    assert nano.peak_fp16_gflops < agx.peak_fp16_gflops
    assert nano.memory_bandwidth_gbs < agx.memory_bandwidth_gbs


def test_alias_resolves_to_the_target() -> None:
    assert load_target("jetson").name == "jetson-orin-nano"
    assert load_target("jetson-orin-nano").name == "jetson-orin-nano"


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(PlannerError) as error:
        load_target("jetson-xavier")
    message = str(error.value)
    assert "jetson-xavier" in message
    assert all(name in message for name in SHIPPED)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_a_user_directory_adds_and_shadows_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "cpu", 'backend = "onnxruntime"\nthreads = 2\ndescription = "mine"\n')
    write(tmp_path, "lab-npu", 'backend = "openvino"\ndevice = "NPU"\naliases = ["npu"]\n')
    assert load_target("cpu", tmp_path).description == "mine"
    assert load_target("npu", tmp_path).device == "NPU"
    assert load_target("jetson", tmp_path).name == "jetson-orin-nano"  # shipped ones are still there

    monkeypatch.setenv("PLANNER_TARGETS_DIR", str(tmp_path))
    assert load_target("cpu").threads == 2
    other = tmp_path / "first"
    other.mkdir()
    write(other, "cpu", 'backend = "onnxruntime"\nthreads = 3\n')
    assert load_target("cpu", other).threads == 3  # --targets-dir before the environment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('backend = "onnxruntime"\nthred = 4\n', "'thred'"),
        ('backend = "onnxruntime"\nthreads = "4"\n', "key 'threads': '4' is not of type 'integer'"),
        ('backend = "onnxruntime"\n[connection]\nkind = "ssh"\nprot = 22\n', "'connection.prot'"),
        ('backend = "onnxruntime"\n[connection]\nport = "22"\n', "key 'connection.port'"),
        ('backend = "onnxruntime"\n[connection]\nhost = "a;b"\n', "'connection.host'"),
        ('backend = "tflite"\n', "'backend' must be one of"),
        ('backend = "onnxruntime"\nprecision = "fp8"\n', "'precision'"),
        ('backend = "onnxruntime"\n[hardware]\npeak_fp32_gflops = 10.0\n', "'hardware.source'"),
        ('backend = "onnxruntime"\n[hardware]\nsource = "x"\nram_gb = -1\n', "'hardware.ram_gb'"),
        ('device = "CPU"\n', "missing key 'backend'"),
        ('backend = "onnxruntime"\nbatch = 2\ninput_shape = [1, 3, 8, 8]\n', "'input_shape'"),
        ("backend = onnxruntime\n", "not valid TOML"),
    ],
)
def test_bad_target_files_name_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "broken", text)
    with pytest.raises(PlannerError) as error:
        list_targets(tmp_path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_target_files_are_data_not_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write(tmp_path, "evil", f"backend = \"__import__('os').system('touch {marker}')\"\n")
    with pytest.raises(PlannerError):
        list_targets(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("jetson.local", (None, "jetson.local", None)),
        ("nvidia@192.168.1.20", ("nvidia", "192.168.1.20", None)),
        ("pi@raspberrypi:2222", ("pi", "raspberrypi", 2222)),
        ("root@[::1]:22", ("root", "::1", 22)),
        ("fe80::1", (None, "fe80::1", None)),
    ],
)
def test_host_values_parse(spec: str, expected: tuple) -> None:
    assert parse_host(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "-oProxyCommand=touch x",
        "host;reboot",
        "a b",
        "user@",
        "@host",
        "u@h@x",
        "host:0",
        "host:ssh",
        "$(id)",
    ],
)
def test_invalid_host_values_are_refused(spec: str) -> None:
    with pytest.raises(PlannerError, match="host"):
        parse_host(spec)


def test_targets_command_lists_and_prints_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(["targets"], capsys)
    assert code == 0
    assert "jetson-orin-nano" in out and "raspberry-pi-5" in out

    write(tmp_path, "lab-pi", 'backend = "onnxruntime"\n[connection]\nkind = "ssh"\nhost = "pi4.lab"\n')
    code, out, _ = run_cli(["targets", "--json", "--targets-dir", str(tmp_path)], capsys)
    assert code == 0
    listed = {entry["name"]: entry for entry in json.loads(out)}
    assert SHIPPED | {"lab-pi"} <= set(listed)
    assert listed["lab-pi"]["connection"]["host"] == "pi4.lab"
    assert listed["jetson-orin-nano"]["aliases"][0] == "jetson"


def test_targets_command_reports_a_broken_file_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write(tmp_path, "broken", 'backend = "onnxruntime"\nthreads = "many"\n')
    code, out, err = run_cli(["targets", "--targets-dir", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "broken.toml" in err and "threads" in err
    assert "Traceback" not in err
