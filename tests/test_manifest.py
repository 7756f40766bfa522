"""Deployment manifests: schema-valid, artifacts that load and compute the chosen width, hashes checked."""

from __future__ import annotations

import hashlib
import json
import shutil

import jsonschema
import numpy as np
import pytest
import torch
from selection_tables import four_widths

import planner
from planner.deploy.manifest import load_manifest, schema, write_manifest
from planner.errors import PlannerError
from planner.measure.artifacts import export_ladder
from planner.measure.targets import load_target
from planner.plan.pareto import candidates
from planner.plan.select import Budget, select

TARGETS = ("cpu", "openvino-cpu", "gpu-tensorrt")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Manifests for three targets under a budget that admits 0.25x and 0.5x (p90 1.2 and 2.4 ms)."""
    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    model = planner.create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    checkpoint = planner.save_checkpoint(model, root / "weights.pt")
    paths = {}
    for name in TARGETS:
        _, latency, accuracy = four_widths(target=name)
        target = load_target(name)
        selection = select(candidates(latency, accuracy, name), Budget(3.0, "p90"))
        exports = export_ladder(selection.ladder, target, checkpoint, root / "results")
        paths[name] = write_manifest(
            selection, target, exports.model, checkpoint, exports.onnx, root / "deploy" / name
        )
    return model, checkpoint, paths


def test_manifests_validate_against_the_schema(deployed):
    _, _, paths = deployed
    for path in paths.values():
        jsonschema.validate(json.loads(path.read_text()), schema())


def test_choice_ladder_budget_and_channels(deployed):
    model, checkpoint, paths = deployed
    manifest = load_manifest(paths["cpu"])
    assert manifest["schema_version"] == 2
    assert {rung["precision"] for rung in manifest["ladder"]} == {"fp32"}
    assert all(rung["quantization"] is None and rung["batch"] == 1 for rung in manifest["ladder"])
    assert manifest["configuration"]["width"] == 0.5
    assert manifest["configuration"]["channels"] == model.config(0.5).channels
    assert [rung["width"] for rung in manifest["ladder"]] == [0.25, 0.5]  # fastest to most accurate
    assert manifest["ladder"][-1] == manifest["configuration"]
    assert manifest["budget"] == {"metric": "p90", "max_latency_ms": 3.0, "max_memory_bytes": None}
    latency = manifest["configuration"]["latency"]
    assert (
        latency["p90_ms"] == pytest.approx(2.4)
        and latency["ci_low_ms"] < latency["p50_ms"] < latency["ci_high_ms"]
    )
    assert manifest["configuration"]["accuracy"]["top1"] == 88.0
    assert manifest["environment"]["cpu"] == "Test CPU" and manifest["environment"]["libs"]["numpy"]
    assert manifest["model"]["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def _reference_logits(model, width, x):
    model.set_width(width)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_onnx_artifact_computes_the_chosen_width(deployed):
    import onnxruntime

    model, _, paths = deployed
    manifest = load_manifest(paths["cpu"])
    (entry,) = manifest["configuration"]["artifact"]["files"]
    session = onnxruntime.InferenceSession(str(paths["cpu"].parent / entry["path"]))
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    (logits,) = session.run(None, {"input": x})
    np.testing.assert_allclose(logits, _reference_logits(model, 0.5, x), rtol=1e-4, atol=1e-4)


def test_openvino_artifact_is_an_ir_that_computes_the_chosen_width(deployed):
    import openvino

    model, _, paths = deployed
    manifest = load_manifest(paths["openvino-cpu"])
    artifact = manifest["configuration"]["artifact"]
    assert artifact["format"] == "openvino-ir"
    files = {entry["role"]: paths["openvino-cpu"].parent / entry["path"] for entry in artifact["files"]}
    compiled = openvino.Core().compile_model(str(files["model"]), "CPU")
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    logits = compiled(x)[0]
    np.testing.assert_allclose(logits, _reference_logits(model, 0.5, x), rtol=1e-3, atol=1e-3)


def test_tensorrt_manifest_carries_the_onnx_and_the_trtexec_build_command(deployed):
    _, _, paths = deployed
    manifest = load_manifest(paths["gpu-tensorrt"])
    artifact = manifest["configuration"]["artifact"]
    assert artifact["format"] == "onnx" and manifest["precision"] == "fp16"
    build = artifact["build"]
    assert build["command"][0] == "trtexec" and "--fp16" in build["command"]
    assert any(arg.startswith("--onnx=") for arg in build["command"])
    assert any(arg.startswith("--saveEngine=") for arg in build["command"])
    onnx_file = paths["gpu-tensorrt"].parent / build["cwd"] / build["command"][1].removeprefix("--onnx=")
    assert onnx_file.is_file()


def test_changed_artifact_is_refused(deployed, tmp_path):
    _, _, paths = deployed
    copy = tmp_path / "cpu"
    shutil.copytree(paths["cpu"].parent, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    artifact = copy / manifest["configuration"]["artifact"]["files"][0]["path"]
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(PlannerError, match="does not match its sha256"):
        load_manifest(copy / "manifest.json")
    artifact.unlink()
    with pytest.raises(PlannerError, match="missing"):
        load_manifest(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("ladder"), "schema"),
        (lambda m: m.update(schema_version=3), "schema_version 3"),
        (lambda m: m["configuration"].pop("precision"), "schema"),
        (lambda m: m["configuration"]["artifact"]["files"][0].update(path="/etc/passwd"), "schema"),
        (lambda m: m["configuration"]["artifact"]["files"][0].update(path="../../x"), "leaves"),
    ],
)
def test_malformed_manifest_is_refused(deployed, tmp_path, edit, message):
    _, _, paths = deployed
    manifest = json.loads(paths["cpu"].read_text())
    edit(manifest)
    broken = tmp_path / "manifest.json"
    broken.write_text(json.dumps(manifest))
    with pytest.raises(PlannerError, match=message):
        load_manifest(broken)


def test_a_version_1_manifest_still_loads(deployed, tmp_path):
    _, _, paths = deployed
    manifest = json.loads(paths["cpu"].read_text())
    manifest["schema_version"] = 1
    for rung in [manifest["configuration"], *manifest["ladder"]]:
        for key in ("precision", "batch", "quantization"):
            rung.pop(key)
        for key in ("runtime", "batch", "n", "ci95"):
            rung["accuracy"].pop(key)
    old = paths["cpu"].parent / "manifest.v1.json"
    old.write_text(json.dumps(manifest))
    assert load_manifest(old)["configuration"]["width"] == 0.5


def test_accuracy_from_other_weights_is_refused(deployed, tmp_path):
    model, checkpoint, _ = deployed
    _, latency, accuracy = four_widths()
    accuracy["checkpoint"] = "0123abcd"
    selection = select(candidates(latency, accuracy, "cpu"), Budget(3.0, "p90"))
    with pytest.raises(PlannerError, match="measured with checkpoint 0123abcd"):
        write_manifest(selection, load_target("cpu"), {}, checkpoint, {}, tmp_path)
