"""Resumable training: the whole state of a run in one file, written atomically, read back exactly.

    save_state(path, state)              # atomic (profilers.files.replacing): a kill leaves the old file
    load_state(path, recipe) -> dict     # checked: written by planner, for this model and recipe
    capture_rng() / restore_rng(saved)   # torch, numpy and Python generators

A resume file holds the model, optimizer, scheduler and grad-scaler state dicts, the position (epoch and
the next step in it), the loss sums of the epoch so far, the RNG states, and the recipe it was written
for: the model's build options and every setting that changes what the steps compute (data, batch,
schedule, seed, world size...). The data order is a function of the seed and the epoch, so the position
is all it takes to continue it. Resuming under another recipe would silently train something else, so a
difference is an error naming the setting. Everything is stored as tensors and plain values, so the file
loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from planner.errors import PlannerError
from profilers.files import replacing

FORMAT = "planner-train-resume"
VERSION = 1


def capture_rng() -> dict[str, Any]:
    """The global torch, numpy and Python RNG states, in a form `weights_only` loading accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng(saved: dict[str, Any]) -> None:
    """Put the generators back where `capture_rng` found them."""
    torch.set_rng_state(saved["torch"])
    n = saved["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["position"], n["has_gauss"], n["cached"]))
    p = saved["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write the resume file atomically: a crash mid-write leaves the previous one intact."""
    try:
        with replacing(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    except OSError as error:
        raise PlannerError(f"cannot write resume checkpoint {path}: {error.strerror}") from None
    return path


def load_state(path: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """The resume file at `path`, checked against this run's `recipe` (one PlannerError per problem)."""
    path = Path(path)
    if not path.is_file():
        raise PlannerError(f"resume checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a truncated or foreign file
        raise PlannerError(
            f"{path} is not a resume checkpoint torch can read (truncated or corrupt)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PlannerError(
            f"{path} is not a planner resume checkpoint (a model checkpoint? resume from the file "
            "written by --save-every / at each epoch end)"
        )
    if state.get("version") != VERSION:
        raise PlannerError(
            f"{path} is a version {state.get('version')} resume checkpoint; expected {VERSION}"
        )
    saved = state.get("recipe", {})
    for key, value in recipe.items():
        if saved.get(key) != value:
            raise PlannerError(
                f"{path} was written for {key} = {_shown(saved.get(key))}, this run has {_shown(value)}"
            )
    return state


def resume_path(output: Path) -> Path:
    """Where a run writing the checkpoint `output` keeps its resume state: beside it, `NAME.resume.pt`."""
    return output.with_name(f"{output.stem}.resume.pt")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
