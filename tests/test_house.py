"""The project's own shape: the public API, one version, packaging that works outside a checkout, and
the defects found while reorganising it (each test here failed before its fix)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import planner
from planner.nn.calibrate import calibrate, save_calibrated_checkpoint
from profilers.results import LatencyStore

ROOT = Path(__file__).resolve().parent.parent


def test_every_public_name_resolves():
    for name in planner.__all__:
        assert getattr(planner, name) is not None, name
    with pytest.raises(AttributeError):
        planner.no_such_thing  # noqa: B018


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("planner") == planner.__version__


def test_install_hints_name_an_extra_that_provides_the_package():
    """A missing package's error tells the user to install an extra: that extra must hold it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {requirement.split(">")[0].split("=")[0] for requirement in project["dependencies"]}
    assert "jsonschema" in core  # manifests are checked by the core install, no extra needed
    manifest_source = (ROOT / "planner" / "deploy" / "manifest.py").read_text()
    assert "planner[report]" not in manifest_source


def test_an_estimate_is_not_a_measurement(tmp_path: Path):
    store = LatencyStore(tmp_path)
    row = {"model": "m", "config_id": "c", "target": "cpu", "backend": "onnxruntime", "device": "CPU",
           "precision": "fp32", "batch": 1, "status": "ok"}  # fmt: skip
    store.add({**row, "estimated": True, "p50_ms": 1.0})
    assert store.measured_keys() == set()  # a run_jobs caller still measures it
    store.add({**row, "estimated": False, "p50_ms": 2.0})
    assert len(store.measured_keys()) == 1


def test_load_checkpoint_keeps_stored_calibrations(tmp_path: Path):
    torch.manual_seed(0)
    model = planner.create_model("us_cnn_small", in_channels=1, num_classes=10, input_size=8)
    config = model.config(0.6)
    batches = [torch.randn(8, 1, 8, 8) for _ in range(3)]
    path = save_calibrated_checkpoint(model, tmp_path / "calibrated.pt", [calibrate(model, config, batches)])
    fresh = planner.create_model("us_cnn_small", in_channels=1, num_classes=10, input_size=8)
    loaded = planner.load_checkpoint(fresh, path)
    assert set(loaded.calibrations) == {config.id}
    built = planner.build_model(checkpoint=path)
    assert set(built.calibrations) == {config.id}


@pytest.mark.slow
def test_a_wheel_install_ships_the_targets_and_schemas(tmp_path: Path):
    """Built and installed without -e, in an environment of its own, outside the checkout."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(ROOT)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("planner-*.whl")
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies (and pip) come from this environment; planner itself only from the wheel
    parent_site = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "dependencies.pth").write_text(parent_site + "\n")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        env=environment,
    )
    where = subprocess.run(
        [python, "-c", "import planner; print(planner.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site)
    targets = subprocess.run(
        [env_dir / "bin" / "planner", "targets", "--json"], cwd=tmp_path, capture_output=True, text=True,
        env=environment,
    )  # fmt: skip
    assert targets.returncode == 0, targets.stderr
    assert {"cpu", "openvino-cpu", "jetson-orin-nano"} <= {t["name"] for t in json.loads(targets.stdout)}
    backends = subprocess.run(
        [python, "-m", "profilers", "backends"], cwd=tmp_path, capture_output=True, text=True, env=environment
    )
    assert backends.returncode == 0, backends.stderr
    assert "onnxruntime" in backends.stdout
    schemas = subprocess.run(
        [python, "-c", "from profilers.documents import load_schema as s; s('profilers', 'manifest'); "
         "s('planner', 'target'); s('profilers', 'jobs')"],
        cwd=tmp_path, capture_output=True, text=True, env=environment,
    )  # fmt: skip
    assert schemas.returncode == 0, schemas.stderr


def test_schemas_know_every_field_of_the_classes_they_describe():
    """A field added to a saved format's class must be added to its schema too (or files with it fail)."""
    import dataclasses

    from planner.measure.targets import Budgets, Connection, Hardware, Target
    from profilers.documents import load_schema
    from profilers.jobs import Job, Settings

    jobs = load_schema("profilers", "jobs")["$defs"]
    assert {f.name for f in dataclasses.fields(Job)} == set(jobs["job"]["properties"])
    assert {f.name for f in dataclasses.fields(Settings)} == set(jobs["settings"]["properties"])
    target = load_schema("planner", "target")["properties"]
    assert {f.name for f in dataclasses.fields(Target)} - {"path"} == set(target)
    for name, cls in (("connection", Connection), ("budgets", Budgets), ("hardware", Hardware)):
        assert {f.name for f in dataclasses.fields(cls)} == set(target[name]["properties"]), name
