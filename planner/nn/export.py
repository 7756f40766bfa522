"""Export a configuration: a single-file, static-shape ONNX of the materialised dense network.

torch 2.13's exporter is the dynamo one; `external_data=False` keeps the weights inside the file so one
path is one artifact (hashed, copied to devices, listed in manifests).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from planner.nn.materialize import materialize
from planner.widths import WidthConfig
from profilers.files import replacing

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _writable(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise PlannerError(f"output {path} is a directory; give a file name such as {path / 'model.onnx'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PlannerError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PlannerError(f"cannot write {path}: permission denied")
    return path


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warnings meant for its own developers, not our users."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def export_onnx(
    model: SlimmableNetwork, config: WidthConfig, path: str | Path, fold_bn: bool = False
) -> Path:
    """Write `config` of `model` as ONNX at `path` (written atomically: a temp file, then renamed)."""
    dense = materialize(model, config, fold_bn=fold_bn)
    return export_module(dense, torch.zeros(dense.input_shape), path)


def output_names(output: object) -> list[str] | None:
    """ONNX output names: `logits` for one tensor, the keys of a dict, `output{i}` for a tuple or list."""
    if isinstance(output, torch.Tensor):
        return [OUTPUT_NAME]
    if isinstance(output, dict) and all(isinstance(v, torch.Tensor) for v in output.values()):
        return [str(key) for key in output]
    if isinstance(output, tuple | list) and all(isinstance(v, torch.Tensor) for v in output):
        return [f"output{i}" for i in range(len(output))]
    return None


def export_module(module: torch.nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write any module as planner's ONNX (single file, fixed names, atomic), so a network built another
    way is exported exactly like a sliced configuration."""
    path = _writable(Path(path))
    with torch.no_grad():
        names = output_names(module(example))
    with replacing(path) as tmp, _quiet():
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamo=True,
            external_data=False,
            optimize=True,
        )
    return path


def export_program(model: SlimmableNetwork, config: WidthConfig, path: str | Path) -> Path:
    """Write a `torch.export` program (`.pt2`) of the dense network: the torch backend's artifact."""
    path = _writable(Path(path))
    dense = materialize(model, config)
    program = torch.export.export(dense, (torch.zeros(dense.input_shape),))
    with replacing(path) as tmp:
        torch.export.save(program, str(tmp))
    return path
