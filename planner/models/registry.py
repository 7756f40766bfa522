"""One registry, one entry point (as in timm): `@register_model` on a builder, `create_model(name)`."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING

from planner.errors import PlannerError

if TYPE_CHECKING:
    from planner.models.base import SlimmableNetwork

_BUILDERS: dict[str, Callable[..., SlimmableNetwork]] = {}


def register_model(builder: Callable[..., SlimmableNetwork]) -> Callable[..., SlimmableNetwork]:
    _BUILDERS[builder.__name__] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(name for name in _BUILDERS if fnmatch.fnmatch(name, pattern))


def create_model(
    name: str,
    widths: list[float] | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    **kwargs,
) -> SlimmableNetwork:
    """Build a registered model with freshly initialised weights (nothing is downloaded).

    Args:
        widths: trained widths; the model's published list when None.
        num_classes, input_size: the model's defaults when None (1000 and 224 for the ImageNet models).
        kwargs: model options such as `in_channels`.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        near = difflib.get_close_matches(name, _BUILDERS, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(list_models())}"
        raise PlannerError(f"unknown model {name!r}{hint}")
    if widths is not None:
        widths = [float(w) for w in widths]
        bad = [w for w in widths if not 0 < w <= 1.0]
        if not widths or bad:
            raise PlannerError(f"widths must be in (0, 1], got {widths}")
    try:
        options = {"num_classes": num_classes, "input_size": input_size, **kwargs}
        return builder(widths=widths, **{k: v for k, v in options.items() if v is not None})
    except ValueError as error:
        raise PlannerError(f"cannot build {name}: {error}") from None
