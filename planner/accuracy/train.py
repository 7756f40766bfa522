"""Slimmable training: one set of weights trained at every width.

    train(model, dataset, epochs=15, batch_size=128, lr=0.2, seed=0, on_step=None, per_layer=False)
        -> TrainResult

S-models (Yu et al., ICLR 2019): every iteration runs all trained widths, widest first, accumulates their
gradients and takes one optimizer step, so the shared weights serve every width.
US-models (Yu & Huang, ICCV 2019): the sandwich rule, i.e. the widest, the narrowest and two random widths
per iteration, with inplace distillation: the widest output's softmax (detached) is the soft target of the
others. The random widths are drawn from the tracked widths (a 0.025 grid, finer than the 8-channel
rounding), so each tracked width's BN statistics are trained; any other width is post-calibrated.

Per-layer random training (`per_layer=True`, US-models only; AutoSlim, Yu & Huang 2019): the two random
members are per-layer configurations instead, each channel group's count drawn independently from the
counts a planned configuration may take (`planner.search.lut.allowed_counts`). A per-layer search such as LeGR
then picks mixes the weights were trained on, not only the uniform widths. Such members run BN on batch
statistics (they have no tracked ones), and the tracked widths between the two ends are never run, so
after training every tracked width's running statistics are re-estimated on training batches (US-Nets'
post-training calibration); per-layer configurations are calibrated when evaluated, as before.

SGD with Nesterov momentum and a cosine learning-rate schedule per step, as the reference's recipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from planner.accuracy.data import Batch, Dataset
from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from planner.nn.calibrate import DEFAULT_BATCHES, calibrate
from planner.search.lut import allowed_counts, default_granularity
from planner.widths import WidthConfig

# Loss key of the sandwich's per-layer random members (the other members are keyed by their width).
PER_LAYER = "per-layer"
LossKey = float | str


@dataclass(frozen=True)
class TrainStep:
    """What the progress display shows after each optimizer step."""

    epoch: int
    step: int
    steps_per_epoch: int
    losses: dict[LossKey, float]


@dataclass
class TrainResult:
    """Mean training loss per epoch and width (or `PER_LAYER`), and the wall time."""

    epoch_losses: list[dict[LossKey, float]] = field(default_factory=list)
    wall_s: float = 0.0
    steps: int = 0


def iteration_widths(model: SlimmableNetwork, generator: torch.Generator) -> list[float]:
    """The widths of one iteration, widest first: all of them, or the sandwich for a US model."""
    widths = sorted(model.widths, reverse=True)
    if not model.universal or len(widths) <= 4:
        return widths
    inner = widths[1:-1]
    picks = torch.randperm(len(inner), generator=generator)[:2].tolist()
    return [widths[0], *sorted((inner[i] for i in picks), reverse=True), widths[-1]]


def per_layer_domains(model: SlimmableNetwork, granularity: int | None = None) -> dict[str, list[int]]:
    """Per channel group, the counts a per-layer member may take: what LeGR may plan (same floor, same
    granularity), so training covers exactly the configurations a search can return."""
    granularity = granularity or default_granularity(model)
    return {name: allowed_counts(model, group, granularity) for name, group in model.groups.items()}


def random_per_layer_config(
    model: SlimmableNetwork, domains: dict[str, list[int]], generator: torch.Generator
) -> WidthConfig:
    """Every group's count drawn independently and uniformly from its domain (as
    `planner.search.lut.random_configs`, but from the training generator, so a seed repeats the run)."""
    channels = {
        name: counts[int(torch.randint(len(counts), (1,), generator=generator))]
        for name, counts in domains.items()
    }
    return model.config_from_channels(channels)


def iteration_configs(
    model: SlimmableNetwork, generator: torch.Generator, domains: dict[str, list[int]] | None = None
) -> list[tuple[LossKey, WidthConfig]]:
    """The members of one iteration, widest first, each with its loss key.

    Without `domains`: the widths of `iteration_widths`. With them (per-layer training): the widest and
    the narrowest width around two per-layer random configurations.
    """
    if domains is None:
        return [(w, model.config(w)) for w in iteration_widths(model, generator)]
    widest, narrowest = model.widths[-1], model.widths[0]
    randoms = [(PER_LAYER, random_per_layer_config(model, domains, generator)) for _ in range(2)]
    return [(widest, model.config(widest)), *randoms, (narrowest, model.config(narrowest))]


def sandwich_order(keys: list[LossKey]) -> list[LossKey]:
    """Loss keys in the order the members run: widths widest first, per-layer members after the widest."""
    widths = sorted((k for k in keys if k != PER_LAYER), reverse=True)
    return widths[:1] + [PER_LAYER] * (PER_LAYER in keys) + widths[1:]


def refresh_tracked_statistics(model: SlimmableNetwork, batches: list[Batch]) -> None:
    """Re-estimate every tracked width's BN running statistics on `batches` (cumulative average).

    Per-layer training runs only the two ends of the tracked grid; without this, the widths in between
    would keep their initial statistics (mean 0, variance 1) and evaluate near chance.
    """
    norms = list(model.batch_norms())
    for index, width in enumerate(model.widths):
        calibrate(model, model.config(width), batches, len(batches))
        for bn in norms:
            bn.adopt_calibration(index)  # use the refreshed trained statistics from here on


def soft_cross_entropy(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution: the inplace-distillation loss."""
    return -(target_probabilities * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def check_settings(
    epochs: int, batch_size: int, lr: float, per_layer: bool = False, granularity: int | None = None
) -> None:
    """Reject settings that cannot train, before any data is read."""
    if granularity is not None and not per_layer:
        raise PlannerError("a channel granularity applies to per-layer training only (--per-layer)")
    if granularity is not None and granularity < 1:
        raise PlannerError(f"granularity must be at least 1 channel, got {granularity}")
    if epochs < 1:
        raise PlannerError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise PlannerError(f"batch size must be at least 1, got {batch_size}")
    if lr <= 0:
        raise PlannerError(f"learning rate must be positive, got {lr}")


def check_model(model: SlimmableNetwork, per_layer: bool) -> None:
    """Per-layer members need US batch norm: switchable BN has statistics for the trained widths only."""
    if per_layer and not model.universal:
        raise PlannerError(
            f"per-layer random training needs a universally slimmable model (us_*): {model.name} keeps "
            "BN statistics per trained width only"
        )


def train(
    model: SlimmableNetwork,
    dataset: Dataset,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.2,
    weight_decay: float = 5e-4,
    seed: int = 0,
    on_step: Callable[[TrainStep], None] | None = None,
    per_layer: bool = False,
    granularity: int | None = None,
) -> TrainResult:
    """Train `model` in place at all its widths on the dataset's train split, reshuffled every epoch.

    Args:
        per_layer: the sandwich's random members are per-layer random configurations (US-models only).
        granularity: channel step of those configurations (default: the model's planning step,
            `planner.search.lut.default_granularity`).

    The model is left in eval mode at its widest width.
    """
    check_settings(epochs, batch_size, lr, per_layer, granularity)
    check_model(model, per_layer)
    if dataset.num_classes > model.num_classes:
        raise PlannerError(f"dataset has {dataset.num_classes} classes, {model.name} has {model.num_classes}")
    if dataset.size("train") == 0:
        raise PlannerError(f"dataset {dataset.name} has no training split")
    steps_per_epoch = -(-dataset.size("train") // batch_size)
    domains = per_layer_domains(model, granularity) if per_layer else None
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    distill = model.universal
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        sums: dict[LossKey, float] = {}
        counts: dict[LossKey, int] = {}
        batches = dataset.batches("train", batch_size, shuffle=True, seed=seed * 100_003 + epoch)
        for step, (images, labels) in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            step_sums: dict[LossKey, float] = {}
            step_counts: dict[LossKey, int] = {}
            soft_target = None
            for key, config in iteration_configs(model, generator, domains):
                model.set_config(config)
                logits = model(images)
                if soft_target is None or not distill:
                    loss = F.cross_entropy(logits, labels)
                    soft_target = F.softmax(logits.detach(), dim=1)
                else:
                    loss = soft_cross_entropy(logits, soft_target)
                loss.backward()
                step_sums[key] = step_sums.get(key, 0.0) + loss.item()
                step_counts[key] = step_counts.get(key, 0) + 1
            for key, total in step_sums.items():
                sums[key] = sums.get(key, 0.0) + total
                counts[key] = counts.get(key, 0) + step_counts[key]
            losses = {key: step_sums[key] / step_counts[key] for key in step_sums}
            optimizer.step()
            schedule.step()
            result.steps += 1
            if on_step is not None:
                on_step(TrainStep(epoch, step, len(batches), losses))
        result.epoch_losses.append({k: sums[k] / counts[k] for k in sandwich_order(list(sums))})
    if per_layer:
        batches = dataset.batches("train", batch_size, shuffle=True, seed=seed * 100_003 + epochs)
        refresh_tracked_statistics(model, batches[:DEFAULT_BATCHES])
    result.wall_s = time.perf_counter() - start
    model.set_config(model.config(model.widths[-1]))
    model.eval()
    return result
