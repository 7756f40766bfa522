"""LeGR (Chin et al., CVPR 2020) on slimmable networks: a learned global channel ranking -> per-layer widths.

Each output filter is scored by its squared L2 norm; a learned affine transform per layer,
`alpha_l * score + kappa_l`, makes the scores of different layers comparable, and coupled layers (a
depthwise conv and its producer, the outputs meeting in a residual add) share one channel group scored by
the sum of their transformed scores. A budget then becomes a configuration by walking the global ranking,
removing the lowest-ranked channels until the cost meets it.

A slimmable layer keeps a *prefix* of its channels, and that order is the trained priority order, so the
ranking decides how many channels each group keeps: a group's channels can only go from the back, and a
block of channels is ranked no lower than any block behind it. Channels go in steps of a granularity (8
for MobileNets), and every group keeps at least 10% of its channels (and never fewer than at the
narrowest trained width).

The cost is MACs or, better, the latency a lookup table predicts for the target (`planner.search.lut`): LeGR
and NNCF know only FLOPs. The coefficients are learned once by regularized (aging) evolution at one budget
with the validation loss after BN calibration as fitness, saved as JSON, and reused for every budget;
`prefer_uniform` keeps a budget's plan only where it beats the uniform width of that budget on the same
fitness.
One seeded numpy Generator drives the whole search (NNCF re-seeds on every call, so its "random"
population is a set of copies).
"""

from __future__ import annotations

import copy
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from planner.errors import PlannerError
from planner.models.base import SLICED_LAYERS, SlimmableNetwork
from planner.models.space import MIN_FRACTION, allowed_counts, default_granularity
from planner.widths import WidthConfig
from profilers.documents import load_schema, read_json
from profilers.files import replacing

COEFFICIENTS_FORMAT = 1
Cost = Callable[[Mapping[str, int]], float]
Batch = tuple[torch.Tensor, torch.Tensor]


def filter_scores(model: SlimmableNetwork) -> dict[str, np.ndarray]:
    """Squared L2 norm of each output filter of every layer whose output is slimmable, by layer path."""
    scores = {}
    for path, module in model.named_modules():
        if isinstance(module, SLICED_LAYERS) and module.out_group.slimmable:
            weight = module.weight.detach().double()
            scores[path] = (weight.reshape(weight.shape[0], -1) ** 2).sum(dim=1).numpy()
    return scores


@dataclass(frozen=True)
class Coefficients:
    """The per-layer affine transform of the filter scores: `alpha[l] * score + kappa[l]`."""

    layers: tuple[str, ...]
    alpha: np.ndarray
    kappa: np.ndarray

    @classmethod
    def identity(cls, layers: Sequence[str]) -> Coefficients:
        return cls(tuple(layers), np.ones(len(layers)), np.zeros(len(layers)))

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            layer: {"alpha": float(a), "kappa": float(k)}
            for layer, a, k in zip(self.layers, self.alpha, self.kappa, strict=True)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, float]]) -> Coefficients:
        try:
            layers = tuple(data)
            alpha = np.array([float(data[layer]["alpha"]) for layer in layers])
            kappa = np.array([float(data[layer]["kappa"]) for layer in layers])
        except (KeyError, TypeError, ValueError):
            raise PlannerError(
                "coefficients must map each layer to {'alpha': number, 'kappa': number}"
            ) from None
        if not np.all(np.isfinite(alpha)) or not np.all(np.isfinite(kappa)):
            raise PlannerError("coefficients hold a non-finite alpha or kappa")
        return cls(layers, alpha, kappa)


class WidthPlanner:
    """Turns coefficients and a budget into a configuration of `model` (the LeGR walk, prefix-aware).

    Args:
        model: the slimmable network (its weights give the filter scores).
        cost: cost of a configuration's channel counts (MACs, or a lookup table's predicted latency);
            it must not grow when channels are removed.
        granularity: channel step (default: 8 for MobileNets, else 1).
        min_fraction: share of each group's channels that is always kept.
    """

    def __init__(
        self,
        model: SlimmableNetwork,
        cost: Cost,
        granularity: int | None = None,
        min_fraction: float = MIN_FRACTION,
    ) -> None:
        if granularity is not None and granularity < 1:
            raise PlannerError(f"granularity must be at least 1 channel, got {granularity}")
        if not 0 < min_fraction <= 1:
            raise PlannerError(f"the kept share of a layer must be in (0, 1], got {min_fraction}")
        self.model = model
        self.cost = cost
        self.granularity = granularity or default_granularity(model)
        self.min_fraction = min_fraction
        self.scores = filter_scores(model)
        self.layers = tuple(self.scores)
        groups = model.layer_groups()
        self.members: dict[str, list[int]] = {name: [] for name in model.groups}
        for index, layer in enumerate(self.layers):
            self.members[groups[layer]].append(index)
        self.counts = {
            name: allowed_counts(model, group, self.granularity, min_fraction)
            for name, group in model.groups.items()
        }
        self.full = {name: counts[-1] for name, counts in self.counts.items()}
        self.smallest = {name: counts[0] for name, counts in self.counts.items()}
        # sigma_l of LeGR's initial kappa: the spread of each layer's scores
        self.score_spread = np.array([float(np.std(self.scores[layer])) or 1.0 for layer in self.layers])

    def standardized(self) -> Coefficients:
        """The transform that gives every layer's scores mean 0 and spread 1, so the ranking thins the
        layers about equally: raw squared norms are not comparable across layers (their scale follows
        each layer's fan-in and training), and the identity thins the layer of smallest norms first.
        """
        mean = np.array([float(np.mean(self.scores[layer])) for layer in self.layers])
        return Coefficients(self.layers, 1.0 / self.score_spread, -mean / self.score_spread)

    def group_scores(self, coefficients: Coefficients) -> dict[str, np.ndarray]:
        """Per group, each channel's summed transformed score over the group's member layers."""
        if coefficients.layers != self.layers:
            raise PlannerError("coefficients do not match this model's layers: learn them for it")
        result = {}
        for name, members in self.members.items():
            total = np.zeros(self.full[name])
            for index in members:
                layer = self.layers[index]
                total += coefficients.alpha[index] * self.scores[layer] + coefficients.kappa[index]
            result[name] = total
        return result

    def removal_order(self, coefficients: Coefficients) -> list[tuple[str, int]]:
        """The global ranking as steps `(group, count after the step)`, lowest-ranked first.

        A step removes the channels between two allowed counts; its rank is the mean score of those
        channels, raised to the rank of any step behind it (a prefix is removed from the back).
        """
        steps: list[tuple[float, int, str, int]] = []
        for name, scores in self.group_scores(coefficients).items():
            counts = self.counts[name]
            ceiling = -math.inf
            for k in range(len(counts) - 1, 0, -1):
                ceiling = max(ceiling, float(scores[counts[k - 1] : counts[k]].mean()))
                steps.append((ceiling, -counts[k], name, counts[k - 1]))
        steps.sort(key=lambda step: (step[0], step[1]))
        return [(name, count) for _, _, name, count in steps]

    def channels_after(self, order: Sequence[tuple[str, int]], removed: int) -> dict[str, int]:
        channels = dict(self.full)
        for name, count in order[:removed]:
            channels[name] = count
        return channels

    def smallest_cost(self) -> float:
        return self.cost(self.smallest)

    def full_cost(self) -> float:
        return self.cost(self.full)

    def config_for(self, coefficients: Coefficients, budget: float) -> WidthConfig:
        """The configuration that removes the fewest lowest-ranked channels while meeting `budget`.

        Cost falls as channels go, so the walk is a bisection over how many ranked steps are taken.
        """
        order = self.removal_order(coefficients)
        if self.cost(self.full) <= budget:
            return self._config(self.full)
        if self.cost(self.channels_after(order, len(order))) > budget:
            raise PlannerError(
                f"budget {budget:g} is below the smallest possible configuration of {self.model.name} "
                f"({self.smallest_cost():g}, every layer at its floor): raise the budget"
            )
        low, high = 0, len(order)  # cost(low) > budget >= cost(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self.cost(self.channels_after(order, middle)) <= budget:
                high = middle
            else:
                low = middle
        return self._config(self.channels_after(order, high))

    def uniform_for(self, budget: float) -> WidthConfig:
        """The widest of the model's uniform widths whose cost meets `budget`: what a plan must beat."""
        fitting = [w for w in self.model.widths if self.cost(self.model.config(w).channels) <= budget]
        if not fitting:
            raise PlannerError(
                f"budget {budget:g} is below {self.model.name}'s narrowest uniform width "
                f"{self.model.widths[0]:g}x ({self.cost(self.model.config(self.model.widths[0]).channels):g})"
            )
        return self.model.config(max(fitting))

    def _config(self, channels: dict[str, int]) -> WidthConfig:
        """A trained width when the channels are exactly one (its trained BN statistics, its id)."""
        for width in self.model.widths:
            uniform = self.model.config(width)
            if uniform.channels == channels:
                return uniform
        return self.model.config_from_channels(channels)


@dataclass(frozen=True)
class MeasuredPlan:
    """A configuration planned for a budget and the measurement that decided it."""

    config: WidthConfig
    measured: float
    fits: bool
    plans: int  # distinct configurations measured


def plan_measured(
    plan_for: Callable[[float], WidthConfig],
    budget: float,
    measure: Callable[[WidthConfig], float],
    max_plans: int = 6,
) -> MeasuredPlan:
    """The configuration for `budget` when the planner's cost is only a prediction (a latency table):
    the measurement decides, the prediction guides.

    `plan_for(aim)` is the widest configuration predicted to cost at most `aim` along one ordering: the
    learned ranking (`partial(planner.config_for, coefficients)`) or the uniform widths
    (`planner.uniform_for`). The aim starts at the budget and moves by budget / measured (2% under it
    after a miss) until a fitting and a missing aim bracket the budget, then bisects. Channels only grow
    with the aim, so the fitting plan of the largest aim is kept: a table that over-predicts does not
    waste the budget, one that under-predicts does not break it. At most `max_plans` distinct
    configurations are measured; with none fitting, the last one measured is returned with `fits=False`.
    """
    if max_plans < 1:
        raise PlannerError(f"at least one plan must be measured, got {max_plans}")
    widest = plan_for(math.inf).id
    aim, fitting_aim, missing_aim = budget, 0.0, math.inf
    measured: dict[str, float] = {}
    best = last = None
    for _ in range(4 * max_plans):
        try:
            config = plan_for(aim)
        except PlannerError:
            if last is None:
                raise  # the budget itself is below the smallest configuration
            break  # the aim fell below the smallest configuration after misses
        if config.id not in measured:
            if len(measured) == max_plans:
                break
            measured[config.id] = measure(config)
        last = (config, measured[config.id])
        if last[1] <= budget:
            fitting_aim, best = aim, last
            if config.id == widest:
                break  # nothing wider to try
        else:
            missing_aim = aim
        if fitting_aim and missing_aim < math.inf:
            if missing_aim / fitting_aim < 1.001:
                break
            aim = (fitting_aim + missing_aim) / 2
        else:
            aim *= budget / last[1] * (1.0 if last[1] <= budget else 0.98)
    config, value = best or last
    return MeasuredPlan(config, value, best is not None, len(measured))


def prefer_uniform(
    plan: WidthConfig, uniform: WidthConfig, fitness: Callable[[WidthConfig], float]
) -> WidthConfig:
    """The plan only where its fitness (validation loss) beats the uniform width of the same budget.

    One learned ranking serves every budget, and away from the budget it was learned at it can cut a
    layer the uniform width keeps (results/legr_digits_distorted.md: at 0.5x's latency). A tie goes to
    the uniform width: it has trained BN statistics and needs no per-layer configuration.
    """
    return plan if fitness(plan) < fitness(uniform) else uniform


def macs_cost(model: SlimmableNetwork) -> Cost:
    """MACs of a configuration (the cost LeGR and NNCF know)."""
    from planner.nn.counting import count

    def cost(channels: Mapping[str, int]) -> float:
        return float(count(model, WidthConfig(model.name, tuple(channels.items()))).macs)

    return cost


class Fitness:
    """Validation loss of a configuration after BN calibration (and an optional short fine-tune).

    Deterministic for a configuration (fixed batches), so results are cached by configuration id: many
    coefficient vectors lead to the same configuration.

    Args:
        calibration: batches for BN calibration (kept apart from validation).
        validation: batches the loss is measured on.
        calibration_batches: how many calibration batches to forward.
        finetune_steps: LeGR's tau: SGD steps at the configuration before calibrating (0: none);
            the weights are restored afterwards.
        train: batches for the fine-tune.
    """

    def __init__(
        self,
        model: SlimmableNetwork,
        calibration: Sequence[Batch],
        validation: Sequence[Batch],
        calibration_batches: int = 5,
        finetune_steps: int = 0,
        train: Sequence[Batch] = (),
        lr: float = 0.01,
    ) -> None:
        if not validation:
            raise PlannerError("the fitness needs validation data: the dataset's val split is empty")
        if not calibration:
            raise PlannerError("BN calibration needs data: the dataset's calibration split is empty")
        if finetune_steps < 0:
            raise PlannerError(f"fine-tune steps must be >= 0, got {finetune_steps}")
        if finetune_steps and not train:
            raise PlannerError("fine-tuning needs training data: the dataset's train split is empty")
        self.model = model
        self.calibration = list(calibration)
        self.validation = list(validation)
        self.calibration_batches = calibration_batches
        self.finetune_steps = finetune_steps
        self.train = list(train)
        self.lr = lr
        self.cache: dict[str, float] = {}

    def __call__(self, config: WidthConfig) -> float:
        if config.id not in self.cache:
            self.cache[config.id] = self._evaluate(config)
        return self.cache[config.id]

    def _evaluate(self, config: WidthConfig) -> float:
        from planner.nn.calibrate import calibrate

        saved = copy.deepcopy(self.model.state_dict()) if self.finetune_steps else None
        try:
            if self.finetune_steps:
                self._finetune(config)
            calibrate(self.model, config, self.calibration, self.calibration_batches)
            return validation_loss(self.model, self.validation)
        finally:
            if saved is not None:
                self.model.load_state_dict(saved)

    def _finetune(self, config: WidthConfig) -> None:
        self.model.set_config(config)
        self.model.train()
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        for images, labels in islice(cycle(self.train), self.finetune_steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(images), labels).backward()
            optimizer.step()
        self.model.eval()


@torch.no_grad()
def validation_loss(model: SlimmableNetwork, batches: Iterable[Batch]) -> float:
    """Mean cross-entropy of the active configuration (eval mode)."""
    model.eval()
    total, count = 0.0, 0
    for images, labels in batches:
        total += F.cross_entropy(model(images), labels, reduction="sum").item()
        count += len(labels)
    return total / count


@torch.no_grad()
def accuracy(model: SlimmableNetwork, batches: Iterable[Batch]) -> float:
    """Top-1 accuracy (percent) of the active configuration."""
    model.eval()
    correct, count = 0, 0
    for images, labels in batches:
        correct += int((model(images).argmax(dim=1) == labels).sum())
        count += len(labels)
    return 100.0 * correct / count


@dataclass(frozen=True)
class SearchSettings:
    """Regularized evolution (Real et al. 2019) as LeGR runs it."""

    population: int = 64
    sample: int = 16
    generations: int = 400
    mutate: float = 0.1  # share of the layers a child changes

    def __post_init__(self) -> None:
        if self.population < 2:
            raise PlannerError(f"population must be at least 2, got {self.population}")
        if not 1 <= self.sample <= self.population:
            raise PlannerError(
                f"tournament sample must be 1 to the population ({self.population}), got {self.sample}"
            )
        if self.generations < 0:
            raise PlannerError(f"generations must be >= 0, got {self.generations}")
        if not 0 < self.mutate <= 1:
            raise PlannerError(f"mutated share of layers must be in (0, 1], got {self.mutate}")


@dataclass
class SearchResult:
    coefficients: Coefficients
    loss: float
    config: WidthConfig
    history: list[float] = field(default_factory=list)  # best loss so far, after each generation
    evaluations: int = 0


def evolve(
    planner: WidthPlanner,
    budget: float,
    fitness: Callable[[WidthConfig], float],
    rng: np.random.Generator,
    settings: SearchSettings | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Learn the coefficients: aging evolution over (alpha, kappa), fitness at one budget (lower is better).

    The initial population is the identity, the standardized transform (about uniform thinning, a start
    LeGR lacks) and random transforms `alpha = exp(N(0, 1))`, `kappa = N(0, sigma_l)`; a child changes
    `mutate` of the layers of the best of a random sample, `alpha *= exp(N(0, step))` with a step that
    decays over the generations, `kappa += N(0, sigma_l)`; the oldest member dies. `rng` is used
    throughout and never re-seeded.
    """
    settings = settings or SearchSettings()
    layers = planner.layers
    spread = planner.score_spread
    count = len(layers)

    def score(coefficients: Coefficients) -> tuple[float, WidthConfig]:
        config = planner.config_for(coefficients, budget)
        return fitness(config), config

    population: deque[tuple[Coefficients, float, WidthConfig]] = deque()
    best: tuple[Coefficients, float, WidthConfig] | None = None
    evaluations = 0
    for index in range(settings.population):
        if index == 0:
            member = Coefficients.identity(layers)
        elif index == 1:
            member = planner.standardized()
        else:
            member = Coefficients(layers, np.exp(rng.normal(0.0, 1.0, count)), rng.normal(0.0, spread))
        loss, config = score(member)
        evaluations += 1
        population.append((member, loss, config))
        if best is None or loss < best[1]:
            best = (member, loss, config)
    history = []
    changed = max(1, round(settings.mutate * count))
    for generation in range(settings.generations):
        picks = rng.choice(len(population), size=settings.sample, replace=False)
        parent = min((population[i] for i in picks), key=lambda member: member[1])[0]
        step = 1.0 - generation / (1.25 * max(1, settings.generations))
        chosen = rng.choice(count, size=changed, replace=False)
        alpha, kappa = parent.alpha.copy(), parent.kappa.copy()
        alpha[chosen] *= np.exp(rng.normal(0.0, step, changed))
        kappa[chosen] += rng.normal(0.0, spread[chosen])
        child = Coefficients(layers, alpha, kappa)
        loss, config = score(child)
        evaluations += 1
        population.append((child, loss, config))
        population.popleft()
        if loss < best[1]:
            best = (child, loss, config)
        history.append(best[1])
        if progress is not None:
            progress(generation + 1, best[1])
    return SearchResult(best[0], best[1], best[2], history, evaluations)


@dataclass(frozen=True)
class LearnedRanking:
    """What `planner legr learn` writes: the coefficients and how they were learned (JSON)."""

    model: str
    coefficients: Coefficients
    granularity: int
    min_fraction: float = MIN_FRACTION
    info: dict[str, Any] = field(default_factory=dict)  # checkpoint, cost, budget, search settings, loss

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": COEFFICIENTS_FORMAT,
            "model": self.model,
            "granularity": self.granularity,
            "min_fraction": self.min_fraction,
            **self.info,
            "layers": self.coefficients.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.parent and not path.parent.is_dir():
            raise PlannerError(f"cannot write {path}: directory {path.parent} does not exist")
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LearnedRanking:
        data = read_json(
            path,
            "coefficients file",
            load_schema("planner", "legr_coefficients"),
            missing_hint="learn it with planner legr learn",
            error=PlannerError,
        )
        info = {
            k: v
            for k, v in data.items()
            if k not in ("format", "model", "granularity", "min_fraction", "layers")
        }
        coefficients = Coefficients.from_dict(data["layers"])
        return cls(data["model"], coefficients, data["granularity"], float(data["min_fraction"]), info)

    def planner_for(self, model: SlimmableNetwork, cost: Cost) -> WidthPlanner:
        """A planner of `model` with the granularity and floor the coefficients were learned with."""
        if self.model != model.name:
            raise PlannerError(f"coefficients were learned for {self.model!r}, not {model.name!r}")
        planner = WidthPlanner(model, cost, self.granularity, self.min_fraction)
        if planner.layers != self.coefficients.layers:
            raise PlannerError(f"coefficients do not match {model.name}'s layers (another model version?)")
        return planner
