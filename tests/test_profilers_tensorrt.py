"""TensorRT and trtexec: what can be checked without a GPU (cache keys, command lines, parsing, errors)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from profilers import Job, ProfilerError, get_backend
from profilers.backends.tensorrt import engine_settings
from profilers.backends.trtexec import parse_export_times, trtexec_command
from profilers.cache import artifact_key

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRTEXEC = shutil.which("trtexec") is not None


def test_engine_cache_key_changes_with_everything_an_engine_depends_on():
    base = artifact_key("a" * 64, engine_settings("10.3.0", "Orin (nvgpu)", "fp16"))
    assert base == artifact_key("a" * 64, engine_settings("10.3.0", "Orin (nvgpu)", "fp16"))
    variants = [
        artifact_key("b" * 64, engine_settings("10.3.0", "Orin (nvgpu)", "fp16")),  # other model bytes
        artifact_key("a" * 64, engine_settings("8.6.2", "Orin (nvgpu)", "fp16")),  # other TensorRT
        artifact_key("a" * 64, engine_settings("10.3.0", "NVIDIA A100", "fp16")),  # other GPU
        artifact_key("a" * 64, engine_settings("10.3.0", "Orin (nvgpu)", "fp32")),  # other precision
        artifact_key("a" * 64, engine_settings("10.3.0", "Orin (nvgpu)", "fp16", workspace_bytes=1 << 20)),
    ]
    assert len({base, *variants}) == 6


def test_trtexec_command_is_an_argument_list_with_the_timing_flags(tmp_path):
    times = tmp_path / "times file.json"  # a space must not split an argument
    command = trtexec_command(
        Path("/usr/src/tensorrt/bin/trtexec"),
        onnx=tmp_path / "w050.onnx",
        save_engine=tmp_path / "w050.engine",
        fp16=True,
        warmup_ms=200,
        duration_s=3,
        iterations=10,
        export_times=times,
    )
    assert command == [
        "/usr/src/tensorrt/bin/trtexec",
        f"--onnx={tmp_path / 'w050.onnx'}",
        f"--saveEngine={tmp_path / 'w050.engine'}",
        "--fp16",
        "--warmUp=200",
        "--duration=3",
        "--iterations=10",
        "--percentile=90,95,99",
        "--useCudaGraph",
        "--noDataTransfers",
        f"--exportTimes={times}",
    ]
    measuring = trtexec_command(Path("trtexec"), load_engine=tmp_path / "e.engine", cuda_graph=False)
    assert f"--loadEngine={tmp_path / 'e.engine'}" in measuring and "--useCudaGraph" not in measuring
    assert "--fp16" not in measuring and not any(a.startswith("--onnx") for a in measuring)
    with pytest.raises(ValueError):
        trtexec_command(Path("trtexec"), onnx=tmp_path / "a.onnx", load_engine=tmp_path / "e.engine")


def _record(start: float, compute_ms: float) -> dict:
    """One per-iteration record in the layout trtexec --exportTimes writes."""
    return {
        "startEnqMs": start,
        "endEnqMs": start + 0.05,
        "startH2DMs": start,
        "endH2DMs": start,
        "startComputeMs": start + 0.01,
        "endComputeMs": start + 0.01 + compute_ms,
        "startD2HMs": start + 0.01 + compute_ms,
        "endD2HMs": start + 0.01 + compute_ms,
        "h2dMs": 0.0,
        "computeMs": compute_ms,
        "d2hMs": 0.0,
        "latencyMs": compute_ms + 0.01,
        "enqueueMs": 0.05,
    }


def test_export_times_are_parsed_into_per_iteration_latencies(tmp_path):
    path = tmp_path / "times.json"
    path.write_text(json.dumps([_record(10.0 * i, 1.0 + 0.1 * i) for i in range(5)]))
    assert parse_export_times(path) == pytest.approx([1.01, 1.11, 1.21, 1.31, 1.41])
    assert parse_export_times(path, field="computeMs") == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4])
    # Older trtexec builds without latencyMs: compute end minus start.
    path.write_text(json.dumps([{"startComputeMs": 2.0, "endComputeMs": 2.5}]))
    assert parse_export_times(path) == pytest.approx([0.5])


@pytest.mark.parametrize(
    "content", ["", "{not json", "[]", '{"latencyMs": 1}', '[{"enqueueMs": 1}]', "[1, 2]"]
)
def test_malformed_export_times_are_one_line_errors(tmp_path, content):
    path = tmp_path / "times.json"
    path.write_text(content)
    with pytest.raises(ProfilerError, match="trtexec times"):
        parse_export_times(path)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_an_error_with_the_install_hint():
    backend = get_backend("tensorrt")
    assert not backend.installed()
    with pytest.raises(ProfilerError, match="pip install tensorrt"):
        backend.devices()
    with pytest.raises(ProfilerError, match="pip install tensorrt"):
        backend.check(Job("model.onnx", backend="tensorrt", device="GPU"))


@pytest.mark.skipif(HAS_TRTEXEC, reason="trtexec is installed here")
def test_missing_trtexec_says_where_to_get_it():
    with pytest.raises(ProfilerError, match="trtexec is not installed"):
        get_backend("trtexec").devices()


def test_tensorrt_measurement_on_a_gpu(tmp_path):
    if not HAS_TENSORRT:
        pytest.skip("needs a CUDA GPU and TensorRT")
    backend = get_backend("tensorrt")
    try:
        devices = backend.devices()
    except ProfilerError:
        devices = []
    if not devices:
        pytest.skip("needs a CUDA GPU and TensorRT")
    from test_profilers import conv_model  # pytest puts tests/ on the path

    from profilers import Settings, run_jobs

    onnx_path = conv_model(tmp_path / "net.onnx", 16)
    jobs = [
        Job(onnx_path, backend="tensorrt", device="GPU", precision=p, metadata={"config_id": p})
        for p in ("fp32", "fp16")
    ]
    table = run_jobs(jobs, tmp_path / "out", Settings(warmup_s=0.2, cache_dir=tmp_path / "cache"))
    assert set(table["status"]) == {"ok"}
    assert (table["device_mem_bytes"] >= 0).all() and (table["artifact_bytes"] > 0).all()
