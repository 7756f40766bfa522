"""BN calibration: the statistics of a configuration that has no trained ones.

    calibrate(model, config, batches, num_batches=5) -> Calibration
    apply_calibration(model, calibration) -> None
    save_calibrated_checkpoint(model, path, calibrations, extra=None) -> Path
    stored_calibrations(model, checkpoint_info) -> dict[config_id, Calibration]

Switchable BN holds statistics only for the trained widths. A per-layer configuration, or a US width that
is not tracked, would borrow another width's statistics and lose accuracy (reference repo issue #27), so
US-Nets "post-calibrate": reset the running statistics, forward a few training batches in train mode at
that configuration with a cumulative average, then evaluate.

What `planner calibrate` writes: a copy of the checkpoint (same weights, reference layout) whose
`'planner'` entry carries `'calibration': {config_id: {'config': JSON, 'batches': n, 'mean': {bn: tensor},
'var': {bn: tensor}}}`. The trained statistics are never overwritten, and `stored_calibrations` +
`apply_calibration` put the calibrated ones back so a later evaluate or export uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from planner.nn.checkpoint import save_checkpoint
from planner.widths import WidthConfig

DEFAULT_BATCHES = 5


@dataclass(frozen=True)
class Calibration:
    """Calibrated BN statistics of one configuration, keyed by the BN module's path."""

    config: WidthConfig
    batches: int
    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]


def _batch_norms(model: SlimmableNetwork) -> dict[str, Any]:
    norms = set(model.batch_norms())
    return {path: module for path, module in model.named_modules() if module in norms}


def calibrate(
    model: SlimmableNetwork,
    config: WidthConfig,
    batches: Iterable[Any],
    num_batches: int = DEFAULT_BATCHES,
) -> Calibration:
    """Calibrate `config`'s BN statistics on up to `num_batches` batches (images, or (images, labels)).

    The model is left in eval mode with `config` active and calibrated, until another config is set.
    """
    if num_batches < 1:
        raise PlannerError(f"calibration needs at least 1 batch, got {num_batches}")
    model.set_config(config)
    model.reset_calibration()
    model.train()
    used = 0
    with torch.no_grad():
        for batch in islice(batches, num_batches):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images)
            used += 1
    model.eval()
    if used == 0:
        raise PlannerError(
            f"no calibration data for {model.name} {config.label}: the calibration split is empty"
        )
    norms = _batch_norms(model)
    return Calibration(
        config,
        used,
        {path: bn.calibration_mean[: bn.active_channels].clone() for path, bn in norms.items()},
        {path: bn.calibration_var[: bn.active_channels].clone() for path, bn in norms.items()},
    )


def apply_calibration(model: SlimmableNetwork, calibration: Calibration) -> None:
    """Activate the configuration with its stored calibrated statistics (no data needed)."""
    model.set_config(calibration.config)
    model.reset_calibration()
    for path, bn in _batch_norms(model).items():
        mean, var = calibration.mean.get(path), calibration.var.get(path)
        if mean is None or var is None or len(mean) != bn.active_channels or len(var) != bn.active_channels:
            raise PlannerError(f"stored calibration of {calibration.config.id} does not fit {path}")
        bn.calibration_mean[: bn.active_channels] = mean
        bn.calibration_var[: bn.active_channels] = var
        bn.calibration_batches = calibration.batches
    model.eval()


def _to_info(calibrations: Iterable[Calibration]) -> dict[str, Any]:
    return {
        c.config.id: {
            "config": c.config.to_json(indent=None),
            "batches": c.batches,
            "mean": c.mean,
            "var": c.var,
        }
        for c in calibrations
    }


def stored_calibrations(
    model: SlimmableNetwork, checkpoint_info: Mapping[str, Any]
) -> dict[str, Calibration]:
    """The calibrations a `planner calibrate` checkpoint carries, validated against `model`."""
    stored = checkpoint_info.get("calibration") or {}
    if not isinstance(stored, Mapping):
        raise PlannerError("checkpoint's 'calibration' entry is malformed")
    result = {}
    for config_id, entry in stored.items():
        try:
            loaded = WidthConfig.from_json(entry["config"])
            config = model.config_from_channels(loaded.channels, loaded.width)
            result[config_id] = Calibration(
                config, int(entry["batches"]), dict(entry["mean"]), dict(entry["var"])
            )
        except (KeyError, TypeError):
            raise PlannerError(f"checkpoint's calibration {config_id} is malformed") from None
    return result


def save_calibrated_checkpoint(
    model: SlimmableNetwork,
    path: str | Path,
    calibrations: Iterable[Calibration],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the model's weights plus calibrated statistics (merged over `extra['calibration']`)."""
    info = dict(extra or {})
    merged = {**dict(info.get("calibration") or {}), **_to_info(calibrations)}
    return save_checkpoint(model, path, extra={**info, "calibration": merged})
