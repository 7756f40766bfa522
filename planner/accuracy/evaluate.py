"""Accuracy of each width configuration: top-1, and top-5 when there are more than 5 classes.

    evaluate(model, configs, batches, calibration_batches=None, num_calibration_batches=5,
             calibrations=None) -> list[ConfigAccuracy]

A configuration without trained BN statistics (a per-layer one, a US width that is not tracked) is
calibrated first, from `calibrations` stored by `planner calibrate` or on `calibration_batches`; scoring
it with borrowed statistics would report an accuracy the deployed network does not have, so with neither
it is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from planner.accuracy.data import Batch
from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from planner.nn.calibrate import DEFAULT_BATCHES, Calibration, apply_calibration, calibrate
from planner.widths import WidthConfig

TOP5_MIN_CLASSES = 6


@dataclass(frozen=True)
class ConfigAccuracy:
    """Accuracy in percent of one configuration; `top5` is None with 5 classes or fewer."""

    config: WidthConfig
    top1: float
    top5: float | None
    samples: int
    calibrated: bool
    hits: np.ndarray | None = field(default=None, compare=False)  # top-1 correct, per image in order

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1} if self.top5 is None else {"top1": self.top1, "top5": self.top5}


def _score(model: SlimmableNetwork, batches: Sequence[Batch]) -> tuple[float, float | None, int, np.ndarray]:
    k = 5 if model.num_classes >= TOP5_MIN_CLASSES else 1
    correct5 = total = 0
    top1_hits = []
    with torch.no_grad():
        for images, labels in batches:
            top = model(images).topk(k, dim=1).indices
            hits = top == labels[:, None]
            top1_hits.append(hits[:, 0].numpy())
            correct5 += int(hits.any(dim=1).sum())
            total += len(labels)
    if total == 0:
        raise PlannerError("no evaluation data: the evaluation split is empty")
    first = np.concatenate(top1_hits)
    return 100.0 * first.sum() / total, (100.0 * correct5 / total if k == 5 else None), total, first


def evaluate(
    model: SlimmableNetwork,
    configs: Sequence[WidthConfig],
    batches: Sequence[Batch],
    calibration_batches: Sequence[Batch] | None = None,
    num_calibration_batches: int = DEFAULT_BATCHES,
    calibrations: Mapping[str, Calibration] | None = None,
) -> list[ConfigAccuracy]:
    """Score every configuration on `batches`, calibrating BN first where the configuration needs it."""
    labels_max = max((int(labels.max()) for _, labels in batches if len(labels)), default=-1)
    if labels_max >= model.num_classes:
        raise PlannerError(f"label {labels_max} in the data but {model.name} has {model.num_classes} classes")
    calibrations = calibrations or {}
    results = []
    for config in configs:
        stored = calibrations.get(config.id)
        if stored is not None:
            apply_calibration(model, stored)
        elif model.needs_calibration(config):
            if not calibration_batches:
                raise PlannerError(
                    f"{model.name} {config.label} has no trained BN statistics and there is no calibration "
                    "data: give a dataset with a calibration split, or a checkpoint from `planner calibrate`"
                )
            calibrate(model, config, calibration_batches, num_calibration_batches)
        else:
            model.set_config(config)
        model.eval()
        top1, top5, samples, hits = _score(model, batches)
        calibrated = stored is not None or model.needs_calibration(config)
        results.append(ConfigAccuracy(config, float(top1), top5, samples, calibrated, hits))
    return results
