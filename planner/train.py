"""Slimmable training: one set of weights trained at every width.

    train(model, dataset, epochs=15, batch_size=128, lr=0.2, seed=0, on_step=None) -> TrainResult

S-models (Yu et al., ICLR 2019): every iteration runs all trained widths, widest first, accumulates their
gradients and takes one optimizer step, so the shared weights serve every width.
US-models (Yu & Huang, ICCV 2019): the sandwich rule, i.e. the widest, the narrowest and two random widths
per iteration, with inplace distillation: the widest output's softmax (detached) is the soft target of the
others. The random widths are drawn from the tracked widths (a 0.025 grid, finer than the 8-channel
rounding), so each tracked width's BN statistics are trained; any other width is post-calibrated.

SGD with Nesterov momentum and a cosine learning-rate schedule per step, as the reference's recipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from planner.data import Dataset
from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork


@dataclass(frozen=True)
class TrainStep:
    """What the progress display shows after each optimizer step."""

    epoch: int
    step: int
    steps_per_epoch: int
    losses: dict[float, float]


@dataclass
class TrainResult:
    """Mean training loss per epoch and width, and the wall time."""

    epoch_losses: list[dict[float, float]] = field(default_factory=list)
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


def soft_cross_entropy(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution: the inplace-distillation loss."""
    return -(target_probabilities * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def check_settings(epochs: int, batch_size: int, lr: float) -> None:
    """Reject settings that cannot train, before any data is read."""
    if epochs < 1:
        raise PlannerError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise PlannerError(f"batch size must be at least 1, got {batch_size}")
    if lr <= 0:
        raise PlannerError(f"learning rate must be positive, got {lr}")


def train(
    model: SlimmableNetwork,
    dataset: Dataset,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.2,
    weight_decay: float = 5e-4,
    seed: int = 0,
    on_step: Callable[[TrainStep], None] | None = None,
) -> TrainResult:
    """Train `model` in place at all its widths on the dataset's train split, reshuffled every epoch.

    The model is left in eval mode at its widest width.
    """
    check_settings(epochs, batch_size, lr)
    if dataset.num_classes > model.num_classes:
        raise PlannerError(f"dataset has {dataset.num_classes} classes, {model.name} has {model.num_classes}")
    if dataset.size("train") == 0:
        raise PlannerError(f"dataset {dataset.name} has no training split")
    steps_per_epoch = -(-dataset.size("train") // batch_size)
    configs = {w: model.config(w) for w in model.widths}
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
        sums: dict[float, float] = {}
        counts: dict[float, int] = {}
        batches = dataset.batches("train", batch_size, shuffle=True, seed=seed * 100_003 + epoch)
        for step, (images, labels) in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            losses: dict[float, float] = {}
            soft_target = None
            for width in iteration_widths(model, generator):
                model.set_config(configs[width])
                logits = model(images)
                if soft_target is None or not distill:
                    loss = F.cross_entropy(logits, labels)
                    soft_target = F.softmax(logits.detach(), dim=1)
                else:
                    loss = soft_cross_entropy(logits, soft_target)
                loss.backward()
                losses[width] = loss.item()
                sums[width] = sums.get(width, 0.0) + losses[width]
                counts[width] = counts.get(width, 0) + 1
            optimizer.step()
            schedule.step()
            result.steps += 1
            if on_step is not None:
                on_step(TrainStep(epoch, step, len(batches), losses))
        result.epoch_losses.append({w: sums[w] / counts[w] for w in sorted(sums, reverse=True)})
    result.wall_s = time.perf_counter() - start
    model.set_config(configs[model.widths[-1]])
    model.eval()
    return result
