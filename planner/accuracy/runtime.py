"""Accuracy of the artifact a target ships: each configuration's ONNX, IR or int8 model, run through the
target's runtime on the evaluation split.

    evaluate_target(model, configs, target, dataset, split, out_dir, weights, batch=B)
        -> {precision: [ConfigAccuracy]}

The files are the ones `planner profile` measured: the same exports under OUT/artifacts/ (same weights
key, same static batch), the int8 file named in the latency rows (else quantized here from the data's
calibration split, the way profile does), built into the same profiler cache entry (profilers.predict).
A batch-B artifact is fed B images per inference (the last batch padded, the padding's outputs dropped),
so each batch size a target lists is scored on its own file and gets its own rows (`batch` column).
On an SSH target the artifacts and the split's images (an .npz, without labels) go to the device,
`python -m profilers predict` runs them there, and the outputs come back
(planner.measure.remote.predict_remote); with a Ray address they go to the target's fleet node instead
(planner.measure.fleet.predict_fleet). Torch-side accuracy (planner.accuracy.evaluate) stays: the
table's `runtime` column tells the two apart.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from planner.accuracy.data import Dataset
from planner.accuracy.evaluate import TOP5_MIN_CLASSES, ConfigAccuracy, OnData
from planner.errors import PlannerError
from planner.measure.artifacts import (
    Artifact,
    export_artifacts,
    make_jobs,
    model_for_target,
    quantize_artifacts,
    weights_key,
)
from planner.measure.quantize import DEFAULT_CALIBRATION_SIZE, calibration_from
from planner.measure.targets import Target
from planner.models.base import SlimmableNetwork
from planner.widths import WidthConfig
from profilers.jobs import Job, Settings
from profilers.predict import predict
from profilers.results import load_latency


def evaluate_target(
    model: SlimmableNetwork,
    configs: list[WidthConfig],
    target: Target,
    dataset: Dataset,
    split: str,
    out_dir: Path | str,
    weights: str = "init",
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    settings: Settings | None = None,
    *,
    batch: int | None = None,
    ray_address: str | None = None,
) -> dict[str, list[ConfigAccuracy]]:
    """Top-1 (top-5 with more than 5 classes) of every configuration at each of the target's precisions,
    scored on the static batch-`batch` artifacts (default: the first batch size the target lists).

    Accuracy cannot depend on the batch in exact arithmetic, but each batch size ships its own file
    (and int8 file), so each is scored on what it ships. With `ray_address` the artifacts run on the
    target's node of that Ray cluster.
    """
    out_dir = Path(out_dir)
    batch = target.planned_batches[0] if batch is None else batch
    if batch not in target.planned_batches:
        raise PlannerError(
            f"target {target.name} does not list batch {batch}; it runs batches "
            f"{', '.join(map(str, target.planned_batches))}"
        )
    target_model = model_for_target(model, target)
    artifacts = export_artifacts(target_model, configs, out_dir, target, weights, batch)
    images, labels = (tensor.numpy() for tensor in dataset.splits[split])
    expected = artifacts[0].input_shape[1:]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(expected):
        raise PlannerError(
            f"split {split!r} of {dataset.name} has images of shape {'x'.join(map(str, images.shape[1:]))}, "
            f"{model.name} on {target.name} takes {'x'.join(map(str, expected))}"
        )
    if not len(images):
        raise PlannerError(f"split {split!r} of {dataset.name} is empty")
    if int(labels.max()) >= model.num_classes:
        raise PlannerError(
            f"label {int(labels.max())} in the data but {model.name} has {model.num_classes} classes"
        )
    chosen: dict[str, list[Artifact]] = {}
    for precision in target.planned_precisions:
        chosen[precision] = artifacts
        if precision == "int8":
            profiled = _profiled_int8(artifacts, target, out_dir, batch)
            missing = [a for a in artifacts if a.config.id not in {c.config.id for c in profiled}]
            if missing:
                calibration = calibration_from(dataset, artifacts[0].input_shape, calibration_size)
                quantized, failures = quantize_artifacts(missing, target, calibration)
                if failures:
                    raise PlannerError(failures[0])
                profiled = profiled + quantized
            chosen[precision] = profiled
    jobs = [
        job
        for precision, files in chosen.items()
        for job in make_jobs(files, target.at_batch(batch).at_precision(precision))
    ]
    outputs = iter(_run(jobs, target, images, settings, ray_address))  # one trip to the device
    return {
        precision: [_score(artifact.config, next(outputs), labels) for artifact in files]
        for precision, files in chosen.items()
    }


def _run(
    jobs: list[Job], target: Target, images: np.ndarray, settings: Settings | None, ray_address: str | None
) -> list[np.ndarray]:
    """Each job's outputs on `images`: on the target's Ray node, over SSH, or here."""
    if ray_address:
        from planner.measure.fleet import predict_fleet

        return predict_fleet(jobs, target.name, images, ray_address)
    if target.is_remote:
        from planner.measure.remote import predict_remote

        return predict_remote(jobs, target, images)
    return [predict(job, images, settings) for job in jobs]


def _profiled_int8(artifacts: list[Artifact], target: Target, out_dir: Path, batch: int) -> list[Artifact]:
    """The int8 files the latency rows of this target at `batch` name, for the configurations with one."""
    import dataclasses

    table = load_latency(out_dir)
    if "artifact" not in table or not len(table):
        return []
    rows = table[
        (table["target"] == target.name)
        & (table["precision"] == "int8")
        & (table["status"] == "ok")
        & (table["batch"] == batch)
    ]
    named = dict(zip(rows["config_id"], rows["artifact"], strict=True))
    found = []
    for artifact in artifacts:
        name = named.get(artifact.config.id)
        path = artifact.onnx.parent / str(name) if isinstance(name, str) and name else None
        if path is not None and path.is_file():
            found.append(dataclasses.replace(artifact, onnx=path))
    return found


def _score(config: WidthConfig, outputs: np.ndarray, labels: np.ndarray) -> ConfigAccuracy:
    logits = outputs.reshape(len(outputs), -1)
    classes = logits.shape[1]
    k = 5 if classes >= TOP5_MIN_CLASSES else 1
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = top == labels[:, None]
    top1 = 100.0 * float(hits[:, 0].mean())
    top5 = 100.0 * float(hits.any(axis=1).mean()) if k == 5 else None
    return ConfigAccuracy(config, top1, top5, len(labels), False, hits[:, 0].copy())


@dataclass(frozen=True)
class TargetScores:
    """One target's scores at one precision and batch size, and the accuracy table they were added to."""

    target: Target
    precision: str
    batch: int
    results: list[ConfigAccuracy]
    rows: pd.DataFrame
    path: Path


def evaluate_on_targets(
    on_data: OnData,
    checkpoint: Path,
    targets: list[Target],
    results_dir: Path,
    split: str = "val",
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    ray_address: str | None = None,
) -> list[TargetScores]:
    """`planner evaluate --target`: the exact artifacts each target measured, scored through its runtime at
    each of its precisions and batch sizes (here, over SSH, or on its Ray node with `ray_address`); rows
    (target, precision, batch, runtime) are added to RESULTS/accuracy."""
    from planner.accuracy.table import accuracy_rows, checkpoint_digest, write_accuracy

    model, dataset = on_data.model, on_data.dataset
    digest = checkpoint_digest(checkpoint)
    scores = []
    with _fleet(ray_address, targets):
        for target, batch in ((t, b) for t in targets for b in t.planned_batches):
            by_precision = evaluate_target(
                model,
                on_data.configs,
                target,
                dataset,
                split,
                results_dir,
                weights_key(checkpoint),
                calibration_size=calibration_size,
                batch=batch,
                ray_address=ray_address,
            )
            for precision, results in by_precision.items():
                rows = accuracy_rows(
                    model.name,
                    results,
                    dataset.name,
                    split,
                    digest,
                    target=target.name,
                    precision=precision,
                    runtime=target.backend,
                    batch=batch,
                )
                path = write_accuracy(results_dir, rows)
                scores.append(TargetScores(target, precision, batch, results, rows, path))
    return scores


def _fleet(address: str | None, targets: list[Target]) -> AbstractContextManager:
    """One connection to the Ray cluster for the whole evaluation (checked for every target's node first)."""
    if not address:
        return nullcontext()
    from planner.measure.fleet import joined

    return joined(address, [target.name for target in targets])
