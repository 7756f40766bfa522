"""The model side of width configurations: one call sets every layer's channel counts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from planner.errors import PlannerError
from planner.models.ops import (
    ChannelGroup,
    SlimmableConv2d,
    SlimmableLinear,
    _CalibratedBatchNorm,
)
from planner.widths import WidthConfig

SLICED_LAYERS = (SlimmableConv2d, SlimmableLinear)


class SlimmableNetwork(nn.Module):
    """Base of every model in the zoo.

    Subclasses build their layers from `ChannelGroup`s and call `_finish()` at the end of `__init__`,
    which names the groups after their first producing layer and activates the widest configuration.

    Args:
        name: registry name, recorded in every configuration.
        widths: trained widths (S-models), or the widths whose BN statistics are tracked (US-models).
        universal: any width in `width_range` is valid (US-Nets), not only the trained ones.
    """

    def __init__(
        self,
        name: str,
        widths: list[float],
        num_classes: int,
        input_size: int,
        in_channels: int,
        universal: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.widths = sorted(float(w) for w in widths)
        self.num_classes = num_classes
        self.input_size = input_size
        self.in_channels = in_channels
        self.universal = universal
        self.width_range = (self.widths[0], self.widths[-1])
        self.groups: dict[str, ChannelGroup] = {}
        self.active_config: WidthConfig | None = None
        # calibrated BN statistics by config id, from a `planner calibrate` checkpoint (planner.nn.calibrate)
        self.calibrations: dict = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (batch 1): what counting traces and what export writes."""
        return (1, self.in_channels, self.input_size, self.input_size)

    # ---- structure -------------------------------------------------------------------------------
    def _finish(self) -> None:
        for path, module in self.named_modules():
            if isinstance(module, SLICED_LAYERS) and not module.out_group.name:
                module.out_group.name = path
        for layer in self.sliced_layers():
            for group in (layer.in_group, layer.out_group):
                if group.slimmable:
                    self.groups.setdefault(group.name, group)
        self.set_width(self.widths[-1])

    def sliced_layers(self) -> Iterator[SlimmableConv2d | SlimmableLinear]:
        return (m for m in self.modules() if isinstance(m, SLICED_LAYERS))

    def batch_norms(self) -> Iterator[_CalibratedBatchNorm]:
        return (m for m in self.modules() if isinstance(m, _CalibratedBatchNorm))

    def layer_groups(self) -> dict[str, str]:
        """Module path of every sliced layer -> name of its output group (slimmable outputs only)."""
        return {
            path: m.out_group.name
            for path, m in self.named_modules()
            if isinstance(m, SLICED_LAYERS) and m.out_group.slimmable
        }

    # ---- configurations --------------------------------------------------------------------------
    def config(self, width: float) -> WidthConfig:
        """The configuration of a uniform width: a trained one, or any width in range for US models."""
        width = float(width)
        low, high = self.width_range
        if self.universal:
            if not low - 1e-9 <= width <= high + 1e-9:
                raise PlannerError(f"width {width:g} is outside {self.name}'s range [{low:g}, {high:g}]")
        elif not any(abs(width - w) < 1e-9 for w in self.widths):
            trained = ", ".join(f"{w:g}" for w in self.widths)
            raise PlannerError(f"width {width:g} is not one of {self.name}'s trained widths: {trained}")
        channels = {name: group.at(width) for name, group in self.groups.items()}
        return WidthConfig(self.name, tuple(channels.items()), width)

    def config_from_channels(self, channels: Mapping[str, int], width: float | None = None) -> WidthConfig:
        """A per-layer configuration from channel counts keyed by group or by any sliced layer's path.

        Coupled layers (a residual add, a depthwise conv and its producer) share a group; giving them
        different counts is an error naming both.
        """
        by_layer = self.layer_groups()
        counts: dict[str, int] = {}
        source: dict[str, str] = {}
        for key, value in channels.items():
            group_name = key if key in self.groups else by_layer.get(key)
            if group_name is None:
                raise PlannerError(f"{self.name} has no slimmable layer named {key!r}")
            if isinstance(value, bool) or not isinstance(value, int):
                raise PlannerError(f"channel count of {key!r} must be an integer, got {value!r}")
            if group_name in counts and counts[group_name] != value:
                raise PlannerError(
                    f"coupled layers {source[group_name]!r} ({counts[group_name]}) and {key!r} ({value}) "
                    "must have the same channel count"
                )
            counts[group_name] = value
            source[group_name] = key
        missing = [name for name in self.groups if name not in counts]
        if missing:
            raise PlannerError(
                f"configuration misses {len(missing)} of {self.name}'s layers, first: {missing[0]!r}"
            )
        ordered = tuple((name, counts[name]) for name in self.groups)
        return self.validate(WidthConfig(self.name, ordered, width))

    def validate(self, config: WidthConfig) -> WidthConfig:
        """Check a configuration against this model; return it unchanged."""
        if config.model != self.name:
            raise PlannerError(f"configuration is for {config.model!r}, not {self.name!r}")
        if config.width is not None and config.channels == self.config(config.width).channels:
            return config
        if set(config.channels) != set(self.groups):
            unknown = sorted(set(config.channels) - set(self.groups))
            missing = sorted(set(self.groups) - set(config.channels))
            detail = f"unknown layer {unknown[0]!r}" if unknown else f"missing layer {missing[0]!r}"
            raise PlannerError(f"configuration does not match {self.name}: {detail}")
        for name, count in config.channels.items():
            limit = self.groups[name].max_channels
            if not 1 <= count <= limit:
                raise PlannerError(f"{name!r} takes 1 to {limit} channels, got {count}")
        if config.width is not None:
            raise PlannerError(
                f"configuration says width {config.width:g} but its channels are not that width's"
            )
        return config

    def trained_index(self, config: WidthConfig) -> int | None:
        """Index of the trained width whose BN statistics belong to this configuration, if any."""
        if config.width is None:
            return None
        for index, width in enumerate(self.widths):
            if abs(width - config.width) < 1e-9:
                return index
        return None

    def set_config(self, config: WidthConfig) -> None:
        """Activate a configuration on every layer at once (calibrated BN statistics stay with it)."""
        if config == self.active_config:
            return
        self.validate(config)
        channels = config.channels

        def count(group: ChannelGroup) -> int:
            return channels[group.name] if group.slimmable else group.max_channels

        for layer in self.sliced_layers():
            layer.set_channels(count(layer.in_group), count(layer.out_group))
        index = self.trained_index(config)
        for bn in self.batch_norms():
            bn.set_active(count(bn.group), index)
        self.active_config = config

    def set_width(self, width: float) -> None:
        self.set_config(self.config(width))

    def needs_calibration(self, config: WidthConfig) -> bool:
        """True when no trained BN statistics belong to this configuration."""
        return self.trained_index(config) is None

    def reset_calibration(self) -> None:
        """Start BN calibration of the active configuration (then forward batches in train mode)."""
        for bn in self.batch_norms():
            bn.reset_calibration()


class ZooNetwork(SlimmableNetwork):
    """A zoo model laid out as the reference's: `features` (ending in a pool) -> flatten -> `classifier`.

    `input_stride` is the features' total stride: the input size must be a multiple of it, because the
    final pool is sized for the feature map it leaves.
    """

    input_stride = 32

    def _assemble(self, features: list[nn.Module], classifier: nn.Module) -> None:
        """Install the layers, initialise them as the reference does, and activate the widest width."""
        if self.input_size % self.input_stride:
            raise ValueError(
                f"{self.name} needs an input size divisible by {self.input_stride}, got {self.input_size}"
            )
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(classifier)
        reset_parameters(self)
        self._finish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def reset_parameters(model: nn.Module) -> None:
    """He-normal convs, unit BN, small linear: the reference's initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
