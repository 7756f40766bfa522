"""Checkpoints in the reference layout: `{'model': state_dict}` saved from DataParallel (`module.` keys).

Loading never unpickles code (`torch.load(weights_only=True)`). A checkpoint written by planner also
carries the model's build options under `'planner'`, so a command given only the file can rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from profilers.files import replacing


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint as a dict with a `'model'` state dict (prefixes stripped) and `'planner'` info."""
    path = Path(path)
    if not path.is_file():
        raise PlannerError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a file that is not a checkpoint
        raise PlannerError(
            f"{path} is not a checkpoint torch can read with weights_only=True "
            "(corrupt, or it holds pickled code)"
        ) from None
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        state, info = raw["model"], raw.get("planner", {})
    elif isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        state, info = raw["state_dict"], raw.get("planner", {})
    elif isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, info = raw, {}
    else:
        raise PlannerError(f"{path} holds no state dict (expected {{'model': state_dict}} or a state dict)")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return {"model": state, "planner": dict(info) if isinstance(info, Mapping) else {}}


def check_state_dict(model: SlimmableNetwork, state: Mapping[str, torch.Tensor]) -> None:
    """Raise a PlannerError naming the first missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if mis_shaped:
        k = mis_shaped[0]
        problems.append(
            f"{len(mis_shaped)} shape mismatches (first: {k} is {list(state[k].shape)} in the checkpoint, "
            f"{list(expected[k].shape)} in the model)"
        )
    if problems:
        raise PlannerError(f"checkpoint does not match {model.name}: " + "; ".join(problems))


def build_options(model: SlimmableNetwork) -> dict[str, Any]:
    """What `create_model` (or, for a converted network, `build_source`) needs to rebuild this model.

    A converted network also records that it is universal, the multiple its channel counts are rounded
    to, and the channel permutation its groups were reordered with (provenance: the weights saved are
    already the reordered ones).
    """
    options = {
        "name": model.name,
        "widths": list(model.widths),
        "num_classes": model.num_classes,
        "input_size": model.input_size,
        "in_channels": model.in_channels,
    }
    if getattr(model, "source", None) is not None:
        options["source"] = model.source["source"]
        options["universal"] = bool(model.universal)
        options["channel_multiple"] = int(model.channel_multiple)
        permutation = getattr(model, "permutation", None)
        if permutation:
            options["permutation"] = {group: list(map(int, order)) for group, order in permutation.items()}
    return options


def save_checkpoint(
    model: SlimmableNetwork, path: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save in the reference layout (`module.` prefixes) plus planner's build options."""
    path = Path(path)
    state = {f"module.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    info = {**build_options(model), **(extra or {})}
    try:
        with replacing(path) as tmp:
            torch.save({"model": state, "planner": info}, tmp)
    except OSError as error:
        raise PlannerError(f"cannot write checkpoint {path}: {error.strerror}") from None
    return path
