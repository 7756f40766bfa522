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
from pathlib import Path

import numpy as np
import torch

from planner.accuracy.data import Batch, Dataset, load_dataset
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


@dataclass(frozen=True)
class OnData:
    """A checkpoint's network with the data it is scored on and the configurations asked for."""

    model: SlimmableNetwork
    dataset: Dataset
    configs: list[WidthConfig]


def checkpoint_on_data(
    model_name: str | None,
    checkpoint: Path,
    data: str,
    widths: Sequence[float] | None = None,
    config_files: Sequence[Path] | None = None,
    **shape: int | None,
) -> OnData:
    """The network of `checkpoint` on `data`, which must have its input shape and classes.

    The data is loaded at the checkpoint's input size (or the `input_size` given); the configurations
    are the given widths and files, or every trained width.
    """
    from planner.accuracy.images import PIPELINE, check_classes, load_image_folder
    from planner.models.sources import is_source
    from planner.nn.build import build_model, configurations
    from planner.nn.checkpoint import read_checkpoint

    recorded = read_checkpoint(checkpoint)["planner"]
    size = shape.get("input_size") or recorded.get("input_size")
    if (
        recorded.get("pipeline") == PIPELINE
    ):  # images, read through the evaluation transform it was trained for
        dataset = load_image_folder(data, image_size=size)
    else:
        dataset = load_dataset(data, image_size=size)
    check_classes(recorded, dataset.classes, data)
    # the original network's weights (a source, plain state dict) are converted at the widths asked for
    converted = list(widths) if widths and is_source(model_name or "") and not recorded else None
    model = build_model(model_name, checkpoint, dataset=dataset, widths=converted, **shape)
    return OnData(model, dataset, configurations(model, widths, config_files))


@dataclass(frozen=True)
class Evaluated:
    """What `planner evaluate` did: the scores, and the accuracy table they were added to."""

    model: SlimmableNetwork
    dataset: Dataset
    results: list[ConfigAccuracy]
    path: Path
    rows: int


def evaluate_checkpoint(
    on_data: OnData,
    checkpoint: Path,
    results_dir: Path,
    split: str = "val",
    batch_size: int = 256,
    calibration_batches: int = DEFAULT_BATCHES,
) -> Evaluated:
    """`planner evaluate`: score every configuration on `split` and add the rows to RESULTS/accuracy."""
    from planner.accuracy.table import accuracy_rows, checkpoint_digest, write_accuracy

    model, dataset = on_data.model, on_data.dataset
    calibration = dataset.batches("calibration", batch_size, shuffle=True) if calibration_batches > 0 else []
    results = evaluate(
        model,
        on_data.configs,
        dataset.batches(split, batch_size),
        calibration,
        calibration_batches,
        model.calibrations,
    )
    rows = accuracy_rows(model.name, results, dataset.name, split, checkpoint_digest(checkpoint))
    return Evaluated(model, dataset, results, write_accuracy(results_dir, rows), len(rows))


def calibrate_checkpoint(
    on_data: OnData, checkpoint: Path, output: Path, batches: int = DEFAULT_BATCHES, batch_size: int = 128
) -> tuple[list[Calibration], Path]:
    """`planner calibrate`: BN statistics of every configuration, written into a copy of the checkpoint."""
    from planner.nn.calibrate import save_calibrated_checkpoint
    from planner.nn.checkpoint import read_checkpoint

    calibration = on_data.dataset.batches("calibration", batch_size, shuffle=True)
    done = [calibrate(on_data.model, config, calibration, batches) for config in on_data.configs]
    extra = read_checkpoint(checkpoint)["planner"]
    return done, save_calibrated_checkpoint(on_data.model, output, done, extra=extra)
