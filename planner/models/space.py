"""The configuration space of a slimmable network: which channel counts a per-layer configuration may
give each group (a granularity and a floor), random configurations in it, and the uniform widths that
calibrate a latency table. Training (per-layer sandwich members), latency tables and LeGR share it."""

from __future__ import annotations

import math

import numpy as np

from planner.models.base import SlimmableNetwork
from planner.models.ops import ChannelGroup
from planner.widths import WidthConfig

MIN_FRACTION = 0.1
# Channel step of the configurations a model is planned in (TF-slim's rounding for MobileNets).
GRANULARITY = {"s_mobilenet_v1": 8, "s_mobilenet_v2": 8, "us_mobilenet_v2": 8, "us_cnn_small": 8}


def default_granularity(model: SlimmableNetwork) -> int:
    """The zoo's published step; 8 channels for a converted network (planner.models.sources), whose
    groups are as wide as a torchvision model's (a step of 1 would make LeGR's search space huge)."""
    return GRANULARITY.get(model.name, 8 if getattr(model, "source", None) else 1)


def channel_floor(model: SlimmableNetwork, group: ChannelGroup, min_fraction: float = MIN_FRACTION) -> int:
    """The fewest channels a group is given: `min_fraction` of it (LeGR keeps 10%), and never fewer than
    at the narrowest trained width, below which a slimmable network was never trained; a multiple of the
    group's divisor (a grouped conv keeps its group count)."""
    floor = max(1, math.ceil(min_fraction * group.max_channels), group.at(model.widths[0]))
    return -(-floor // group.divisor) * group.divisor


def allowed_counts(
    model: SlimmableNetwork, group: ChannelGroup, granularity: int, min_fraction: float = MIN_FRACTION
) -> list[int]:
    """Channel counts a planned configuration may give a group: multiples of the granularity (and of the
    group's divisor) between the floor and the maximum, plus both ends."""
    floor = channel_floor(model, group, min_fraction)
    step = math.lcm(granularity, group.divisor)
    steps = range(-(-floor // step) * step, group.max_channels, step)
    return sorted({floor, *steps, group.max_channels})


def random_configs(
    model: SlimmableNetwork, count: int, rng: np.random.Generator, granularity: int | None = None
) -> list[WidthConfig]:
    """Per-layer configurations with every group's count drawn uniformly from its allowed counts."""
    granularity = granularity or default_granularity(model)
    domains = {name: allowed_counts(model, group, granularity) for name, group in model.groups.items()}
    return [
        model.config_from_channels({name: int(rng.choice(counts)) for name, counts in domains.items()})
        for _ in range(count)
    ]


def calibration_widths(model: SlimmableNetwork, count: int = 4) -> list[float]:
    """Uniform widths whose end-to-end latency calibrates a table: the trained widths of an S-Net; for a
    US-Net, `count` of its tracked widths spread over the range (it tracks dozens)."""
    if not model.universal or len(model.widths) <= count:
        return list(model.widths)
    picks = np.linspace(0, len(model.widths) - 1, count).round().astype(int)
    return [model.widths[i] for i in sorted(set(picks))]
