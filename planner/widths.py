"""Width configurations: the frozen value that flows between every stage of the pipeline.

A configuration names a model and gives the channel count of each of its slimmable channel groups, plus
the uniform width it came from (None for a per-layer configuration). Its id is a short hash of its JSON,
so the same configuration has the same id on every machine and in every results table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from profilers.documents import check, load_schema, read_json


@dataclass(frozen=True)
class WidthConfig:
    """A model's channel counts per slimmable group (kept sorted by name, so equal configs compare equal)."""

    model: str
    channel_items: tuple[tuple[str, int], ...]
    width: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_items", tuple(sorted(self.channel_items)))

    @property
    def channels(self) -> dict[str, int]:
        return dict(self.channel_items)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_json(indent=None).encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        """What a person reads in a table: the width, or the id of a per-layer configuration."""
        return f"{self.width:g}x" if self.width is not None else f"layers:{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "width": self.width, "channels": self.channels}

    def to_json(self, indent: int | None = 2) -> str:
        separators = (",", ":") if indent is None else None
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, separators=separators)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "width configuration") -> WidthConfig:
        check(data, load_schema("planner", "width_config"), source, PlannerError)
        width = data.get("width")
        channels = tuple((str(key), int(value)) for key, value in data["channels"].items())
        return cls(data["model"], channels, None if width is None else float(width))

    @classmethod
    def from_json(cls, text: str) -> WidthConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlannerError(f"malformed width configuration: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> WidthConfig:
        data = read_json(path, "width configuration", error=PlannerError)
        return cls.from_dict(data, f"width configuration {path}")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path
