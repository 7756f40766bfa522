"""Slimmable training: one set of weights trained at every width.

    train_checkpoint(TrainOptions(model, data, output, ...)) -> TrainedCheckpoint    # `planner train`
    train(model, dataset, epochs=15, batch_size=128, lr=0.2, seed=0, on_step=None, per_layer=False)
        -> TrainResult

`train_checkpoint` is the whole command from Python: recipe and defaults, data, model (or a converted
network and its teacher), torchrun ranks, training, the checkpoint and the val scores. `train` is the
loop itself on a model and dataset you already have.

S-models (Yu et al., ICLR 2019): every iteration runs all trained widths, widest first, accumulates their
gradients and takes one optimizer step, so the shared weights serve every width.
US-models (Yu & Huang, ICCV 2019): the sandwich rule, i.e. the widest, the narrowest and two random widths
per iteration, with inplace distillation: the widest output's softmax (detached) is the soft target of the
others. The random widths are drawn from the tracked widths (a 0.025 grid, finer than the 8-channel
rounding), so each tracked width's BN statistics are trained; any other width is post-calibrated.

Per-layer random training (`per_layer=True`, US-models only; AutoSlim, Yu & Huang 2019): the two random
members are per-layer configurations instead, each channel group's count drawn independently from the
counts a planned configuration may take (`planner.models.space.allowed_counts`). A per-layer search
such as LeGR then picks mixes the weights were trained on, not only the uniform widths. Such members run
BN on batch statistics (they have no tracked ones), and the tracked widths between the two ends are never
run, so after training every tracked width's running statistics are re-estimated on training batches
(US-Nets' post-training calibration); per-layer configurations are calibrated when evaluated, as before.

Fine-tuning a converted pretrained network (`teacher=` the original network, planner.models.sources): the
original's softmax (eval mode, no gradient) is the soft target of every width, the widest included, so
the full width stays where the original was and the narrow widths learn to imitate it.

SGD with Nesterov momentum and, by default, a cosine learning-rate schedule per step; the published
recipes' schedules (`planner.accuracy.recipes`) are the alternatives. Resume files, torchrun ranks,
mixed precision and DataLoader workers are `RunOptions`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from planner.accuracy.data import Batch, Dataset, load_dataset
from planner.accuracy.distributed import (
    ShardSampler,
    World,
    average_values,
    data_parallel,
    pick_device,
    synchronized,
    training_session,
)
from planner.accuracy.evaluate import ConfigAccuracy, evaluate
from planner.accuracy.images import PIPELINE, load_image_folder
from planner.accuracy.precision import select_precision
from planner.accuracy.recipes import COSINE, Schedule, load_recipe, lr_factor
from planner.accuracy.resume import capture_rng, load_state, restore_rng, resume_path, save_state
from planner.errors import PlannerError
from planner.models.base import SlimmableNetwork
from planner.models.space import allowed_counts, default_granularity
from planner.nn.calibrate import DEFAULT_BATCHES, calibrate
from planner.nn.checkpoint import build_options, save_checkpoint
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
    images_per_s: float = 0.0  # training images (all ranks) per second since this process started


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
    `planner.models.space.random_configs`, but from the training generator, so a seed repeats the run)."""
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


def leaves_parameters_unused(model: SlimmableNetwork, config: WidthConfig, device: torch.device) -> bool:
    """Whether `config` leaves a trainable parameter without a gradient: the other widths' switchable-BN
    parameters, or one the network never uses. One eval-mode forward of a zero image (no BN statistic
    changes); the narrowest width, the last member of every step, decides whether DDP looks for them."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    model.set_config(config)
    model.eval()
    output = model(torch.zeros(model.input_shape, device=device))
    return any(g is None for g in torch.autograd.grad(output.sum(), parameters, allow_unused=True))


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


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, as opposed to what it computes.

    checkpoint: the resume file to keep (after every epoch, and every `save_every` steps when > 0).
    resume: a resume file to continue from; the run then ends exactly as if never interrupted.
    on_resume: told the position resumed at, before the first step runs.
    world: this process's rank among torchrun's (`planner.accuracy.distributed`); None for one process.
    accumulate: micro-batches per step (each its own forward/backward, BN statistics per micro-batch):
        one process then computes what `accumulate` ranks do.
    device: where the model and batches live. workers: DataLoader worker processes.
    precision: fp32, bf16 or fp16 autocast (`planner.accuracy.precision`).
    """

    checkpoint: Path | None = None
    save_every: int = 0
    resume: Path | None = None
    on_resume: Callable[[TrainStep], None] | None = None
    world: World | None = None
    accumulate: int = 1
    device: torch.device = torch.device("cpu")
    workers: int = 0
    precision: str = "fp32"


def run_recipe(model: SlimmableNetwork, dataset: Dataset, settings: dict[str, Any]) -> dict[str, Any]:
    """What a resume file must match: the model's build options, the data and every setting that changes
    what the steps compute."""
    return {
        "model": build_options(model),
        "classes": list(dataset.classes),
        "dataset": dataset.name,
        **settings,
    }


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
    run: RunOptions = RunOptions(),
    schedule: Schedule = COSINE,
    label_smoothing: float = 0.0,
    teacher: torch.nn.Module | None = None,
) -> TrainResult:
    """Train `model` in place at all its widths on the dataset's train split, reshuffled every epoch.

    Args:
        per_layer: the sandwich's random members are per-layer random configurations (US-models only).
        granularity: channel step of those configurations (default: the model's planning step,
            `planner.models.space.default_granularity`).
        run: resume files, ranks, device, precision (`RunOptions`).
        schedule: the learning-rate decay (`planner.accuracy.recipes.Schedule`; default cosine to 0).
        label_smoothing: of the widest member's cross-entropy (the others learn its soft output).
        teacher: the network `model` was converted from; its outputs are every width's soft target.

    The model is left on the CPU in eval mode at its widest width.
    """
    check_settings(epochs, batch_size, lr, per_layer, granularity)
    check_model(model, per_layer)
    if run.save_every < 0:
        raise PlannerError(
            f"save-every must be 0 (epoch ends only) or a number of steps, got {run.save_every}"
        )
    if dataset.num_classes > model.num_classes:
        raise PlannerError(f"dataset has {dataset.num_classes} classes, {model.name} has {model.num_classes}")
    if dataset.size("train") == 0:
        raise PlannerError(f"dataset {dataset.name} has no training split")
    world = run.world
    ranks = world.size if world else 1
    if run.accumulate < 1:
        raise PlannerError(f"accumulate must be at least 1 micro-batch, got {run.accumulate}")
    if batch_size % (ranks * run.accumulate):
        raise PlannerError(
            f"batch size {batch_size} (the global batch) does not split evenly into {ranks} ranks "
            f"x {run.accumulate} micro-batches"
        )
    leader = world is None or world.leader
    train_set = dataset.training_set()
    sampler = ShardSampler(
        train_set, num_replicas=ranks, rank=world.rank if world else 0, shuffle=True, seed=seed * 100_003
    )
    local_batch = batch_size // ranks
    steps_per_epoch = epoch_steps(len(train_set), batch_size, ranks)

    def loader(epoch: int, skip_steps: int = 0) -> DataLoader:
        sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):  # augmentation drawn per (seed, epoch, image)
            train_set.set_epoch(epoch)
        sampler.skip = skip_steps * local_batch
        return DataLoader(
            train_set,
            batch_size=local_batch,
            sampler=sampler,
            num_workers=run.workers,
            collate_fn=getattr(train_set, "collate", None),
            pin_memory=run.device.type == "cuda",
        )

    device = run.device
    precision = select_precision(run.precision, device)
    scaler = precision.scaler(device)
    model.to(device)
    domains = per_layer_domains(model, granularity) if per_layer else None
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    total = epochs * steps_per_epoch
    if schedule.kind == "cosine":  # the closed form differs from CosineAnnealingLR's in the last bits
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    else:
        factor = functools.partial(lr_factor, schedule, steps_per_epoch=steps_per_epoch, total_steps=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "per_layer": per_layer,
        "granularity": granularity,
        "world_size": ranks,
        "accumulate": run.accumulate,
        "precision": precision.name,
        "schedule": dataclasses.asdict(schedule) | {"milestones": list(schedule.milestones)},
        "label_smoothing": label_smoothing,
    }
    recipe = run_recipe(model, dataset, settings)
    distill = model.universal
    if teacher is not None:
        teacher.to(device).eval()
    result = TrainResult()
    first_epoch, first_step = 0, 0
    sums: dict[LossKey, float] = {}
    counts: dict[LossKey, int] = {}
    if run.resume is not None:
        state = load_state(run.resume, recipe)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        restore_rng(state["rng"])
        first_epoch, first_step = state["epoch"], state["step"]
        result.epoch_losses, result.steps = state["epoch_losses"], state["steps"]
        sums, counts = state["sums"], state["counts"]
        if run.on_resume is not None:
            run.on_resume(TrainStep(first_epoch, first_step, steps_per_epoch, {}))

    # The narrowest width runs last in every step: DDP must not wait for what it leaves unused.
    unused = world is not None and leaves_parameters_unused(model, model.config(model.widths[0]), device)
    net = data_parallel(model, world, device, unused)

    def save(epoch: int, step: int) -> None:
        if run.checkpoint is None or not leader:
            return
        state = {
            "recipe": recipe,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "generator": generator.get_state(),
            "rng": capture_rng(),
            "epoch": epoch,
            "step": step,
            "steps": result.steps,
            "epoch_losses": result.epoch_losses,
            "sums": sums,
            "counts": counts,
        }
        save_state(run.checkpoint, state)

    start = time.perf_counter()
    seen = 0
    model.train()
    for epoch in range(first_epoch, epochs):
        skip = first_step if epoch == first_epoch else 0
        if not skip:
            sums, counts = {}, {}
        for step, (images, labels) in enumerate(loader(epoch, skip), start=skip):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            k = run.accumulate
            chunks = [(images[i::k], labels[i::k]) for i in range(k)]
            optimizer.zero_grad(set_to_none=True)
            step_sums: dict[LossKey, float] = {}
            step_counts: dict[LossKey, int] = {}
            soft_targets: list[torch.Tensor] = []
            teacher_targets = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_targets = [F.softmax(teacher(x), dim=1) for x, _ in chunks]
            members = iteration_configs(model, generator, domains)
            for member, (key, config) in enumerate(members):
                model.set_config(config)
                for chunk, (x, y) in enumerate(chunks):
                    last = member == len(members) - 1 and chunk == k - 1
                    with synchronized(net, last):  # DDP averages the step's summed gradients here
                        with precision.autocast(device):
                            logits = net(x)
                            if teacher_targets is not None:
                                loss = soft_cross_entropy(logits, teacher_targets[chunk])
                            elif member == 0 or not distill:
                                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                                if distill:
                                    soft_targets.append(F.softmax(logits.detach(), dim=1))
                            else:
                                loss = soft_cross_entropy(logits, soft_targets[chunk])
                        scaler.scale(loss / k).backward()
                    step_sums[key] = step_sums.get(key, 0.0) + loss.item() / k
                step_counts[key] = step_counts.get(key, 0) + 1
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            keys = list(step_sums)
            step_sums = dict(
                zip(keys, average_values([step_sums[key] for key in keys], world, device), strict=True)
            )
            for key, value in step_sums.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + step_counts[key]
            losses = {key: step_sums[key] / step_counts[key] for key in step_sums}
            result.steps += 1
            seen += len(labels) * ranks
            if on_step is not None:
                speed = seen / (time.perf_counter() - start)
                on_step(TrainStep(epoch, step, steps_per_epoch, losses, speed))
            if run.save_every and result.steps % run.save_every == 0 and step + 1 < steps_per_epoch:
                save(epoch, step + 1)
        result.epoch_losses.append({k: sums[k] / counts[k] for k in sandwich_order(list(sums))})
        sums, counts = {}, {}
        save(epoch + 1, 0)
    if per_layer:
        batches = [(x.to(device), y.to(device)) for x, y in itertools.islice(loader(epochs), DEFAULT_BATCHES)]
        refresh_tracked_statistics(model, batches)
    result.wall_s = time.perf_counter() - start
    model.set_config(model.config(model.widths[-1]))
    model.to("cpu")
    model.eval()
    return result


def start_from_source(
    source: str,
    dataset: Dataset,
    checkpoint: str | None = None,
    widths: list[float] | None = None,
    universal: bool = False,
    channel_multiple: int | None = None,
) -> tuple[SlimmableNetwork, torch.nn.Module | None]:
    """The converted network to fine-tune on `dataset`, and its teacher when `checkpoint` is the original's.

    A plain state dict is the original network's weights: the original (loaded as it is) becomes the
    teacher of every width and the converted copy the student. A planner checkpoint resumes training
    without a teacher. The network takes the data's channels, size and classes.
    """
    from planner.models.sources import load_original, load_source
    from planner.nn.build import build_model
    from planner.nn.checkpoint import read_checkpoint

    shape = {
        "num_classes": dataset.num_classes,
        "input_size": dataset.input_size,
        "in_channels": dataset.in_channels,
    }
    saved = read_checkpoint(checkpoint) if checkpoint is not None else None
    model = build_model(
        source, checkpoint, widths=widths, universal=universal, channel_multiple=channel_multiple, **shape
    )
    teacher = None
    if saved is not None and not saved["planner"]:
        teacher = load_source(source, **shape)
        load_original(teacher, saved["model"], source)
    return model, teacher


# What `train_checkpoint` runs for an option left None, unless a recipe sets it.
DEFAULTS = {"epochs": 15, "batch_size": 128, "lr": 0.2, "weight_decay": 5e-4, "augment": False}


@dataclass(frozen=True)
class TrainOptions:
    """Everything `planner train` takes, as one value: `train_checkpoint(TrainOptions(...))` from Python.

    model: a registered name, or torchvision:NAME, timm:NAME, FILE.py:FN (converted; `checkpoint` is then
        the original's state dict, which teaches every width, or a planner checkpoint to continue).
    data: digits, digits-distorted, an image folder or an .npz file. output: the checkpoint to write; the
        resume state is kept beside it (`planner.accuracy.resume.resume_path`).
    epochs, batch_size (global, over all ranks), lr, weight_decay, widths, input_size, augment (an image
        folder read per batch with the ImageNet augmentation), schedule, label_smoothing: None takes the
        recipe's value with `recipe` (a built-in name or a TOML file), else `DEFAULTS` (widths: the
        model's; input size: the data's; schedule: cosine; label smoothing: 0).
    in_channels, num_classes: default to the data's. threads: torch CPU threads of this process.
    channel_multiple: a converted network's channel counts at each width are multiples of it (default 8;
        1 scales exactly); its checkpoint records it.
    The rest are `train`'s and `RunOptions`' settings under the same names.
    """

    model: str
    data: str | Path
    output: str | Path
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    widths: list[float] | None = None
    input_size: int | None = None
    augment: bool | None = None
    schedule: Schedule | None = None
    label_smoothing: float | None = None
    recipe: str | Path | None = None
    seed: int = 0
    threads: int = 1
    per_layer: bool = False
    granularity: int | None = None
    save_every: int = 0
    resume: Path | None = None
    device: str = "auto"
    workers: int = 0
    precision: str = "fp32"
    accumulate: int = 1
    in_channels: int | None = None
    num_classes: int | None = None
    checkpoint: Path | None = None
    universal: bool = False
    channel_multiple: int | None = None


@dataclass(frozen=True)
class TrainStart:
    """What a run is about to do, told before its first step."""

    options: TrainOptions  # resolved: no recipe setting left None
    model: SlimmableNetwork
    dataset: Dataset
    steps_per_epoch: int


@dataclass
class TrainedCheckpoint:
    """A finished `train_checkpoint` run. `path` is None and `scores` empty on ranks other than 0."""

    path: Path | None
    model: SlimmableNetwork
    dataset: Dataset
    result: TrainResult
    scores: list[ConfigAccuracy] = field(default_factory=list)  # the val split, when the data has one


def resolve_options(options: TrainOptions) -> TrainOptions:
    """The recipe's values, then the defaults, in place of the options left None; every setting checked
    before any data is read (`planner train --nproc` calls it before starting processes)."""
    values = {}
    if options.recipe is not None:
        recipe = load_recipe(options.recipe)
        if recipe.model != options.model:
            raise PlannerError(f"recipe {recipe.name} trains {recipe.model}, not {options.model}")
        values = {name: getattr(recipe, name) for name in (*DEFAULTS, "input_size", "schedule")}
        values |= {"widths": list(recipe.widths), "label_smoothing": recipe.label_smoothing}
    values = DEFAULTS | {"schedule": COSINE, "label_smoothing": 0.0} | values
    left = {name: value for name, value in values.items() if getattr(options, name) is None}
    resolved = dataclasses.replace(options, output=Path(options.output), **left)
    check_settings(resolved.epochs, resolved.batch_size, resolved.lr, options.per_layer, options.granularity)
    if resolved.threads < 1:
        raise PlannerError(f"threads must be at least 1, got {resolved.threads}")
    select_precision(resolved.precision, pick_device(resolved.device, None))
    return resolved


def epoch_steps(images: int, batch_size: int, ranks: int) -> int:
    """Optimizer steps per epoch: each rank takes ceil(images / ranks) images, batch_size / ranks a step."""
    per_rank = -(-images // ranks)
    return -(-per_rank // (batch_size // ranks))


def train_checkpoint(
    options: TrainOptions,
    on_start: Callable[[TrainStart], None] | None = None,
    on_step: Callable[[TrainStep], None] | None = None,
    on_resume: Callable[[TrainStep], None] | None = None,
) -> TrainedCheckpoint:
    """`planner train`: build the model for the data, train every width (under torchrun: one rank of a
    data-parallel run), write the checkpoint and score the val split. The callbacks run on rank 0 only
    (progress display); rank 0 alone writes. A PlannerError under torchrun is raised on rank 0 and
    leaves the other ranks with SystemExit(2) (`planner.accuracy.distributed.training_session`).
    """
    with training_session(options.device) as (world, device):
        options = resolve_options(options)
        leader = world is None or world.leader
        torch.set_num_threads(options.threads)
        if options.augment:
            dataset = load_image_folder(options.data, options.input_size, options.workers, options.seed)
        else:
            dataset = load_dataset(options.data, image_size=options.input_size)
        torch.manual_seed(options.seed)
        model, teacher = _model_for(options, dataset)
        check_model(model, options.per_layer)
        if leader and on_start is not None:
            steps = epoch_steps(dataset.size("train"), options.batch_size, world.size if world else 1)
            on_start(TrainStart(options, model, dataset, steps))
        run = RunOptions(
            checkpoint=resume_path(options.output),
            save_every=options.save_every,
            resume=options.resume,
            on_resume=on_resume if leader else None,
            world=world,
            accumulate=options.accumulate,
            device=device,
            workers=options.workers,
            precision=options.precision,
        )
        result = train(
            model,
            dataset,
            options.epochs,
            options.batch_size,
            options.lr,
            options.weight_decay,
            options.seed,
            on_step=on_step if leader else None,
            per_layer=options.per_layer,
            granularity=options.granularity,
            run=run,
            schedule=options.schedule,
            label_smoothing=options.label_smoothing,
            teacher=teacher,
        )
    done = TrainedCheckpoint(None, model, dataset, result)
    if not leader:
        return done
    extra = {
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "pipeline": PIPELINE if options.augment else "tensors",
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "lr": options.lr,
        "seed": options.seed,
    }
    if options.per_layer:
        extra["per_layer"] = {"granularity": options.granularity or default_granularity(model)}
    done.path = save_checkpoint(model, options.output, extra=extra)
    if dataset.size("val"):
        widths = model.widths if len(model.widths) <= 8 else model.widths[:: len(model.widths) // 4]
        configs = [model.config(w) for w in sorted({*widths, model.widths[-1]})]
        done.scores = evaluate(model, configs, dataset.batches("val", 256))
    return done


def _model_for(options: TrainOptions, dataset: Dataset) -> tuple[SlimmableNetwork, torch.nn.Module | None]:
    """The network to train (a registered model, or a converted one with its teacher) for `dataset`."""
    from planner.models.sources import is_source
    from planner.nn.build import build_model

    if is_source(options.model):
        return start_from_source(
            options.model,
            dataset,
            options.checkpoint,
            options.widths,
            options.universal,
            options.channel_multiple,
        )
    if options.checkpoint is not None or options.universal:
        raise PlannerError("--checkpoint and --universal are for torchvision:, timm: and FILE.py: models")
    shape = {"in_channels": options.in_channels, "num_classes": options.num_classes}
    model = build_model(
        options.model,
        dataset=dataset,
        widths=options.widths,
        input_size=options.input_size,
        channel_multiple=options.channel_multiple,
        **shape,
    )
    return model, None
