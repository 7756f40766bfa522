"""Training recipes as TOML data: the published setups, runnable with `planner train --recipe NAME|PATH`.

    load_recipe("s_mobilenet_v2") -> Recipe        # built in (planner/accuracy/recipes/*.toml) or a path
    lr_factor(schedule, step, steps_per_epoch, total_steps) -> float

A recipe is data, never code: a fixed set of keys, each checked (an unknown or mistyped key is an error
naming the file and the key). Its `[paper]` table holds the published top-1 errors the run should
approach, from ../shared/reference/slimmable_results.json; planner does not read it.

Schedules (per optimizer step): `cosine` (to 0 over the run, planner's default), `linear` (to 0 over the
run; US-Nets' "linear_decaying"), `multistep` (x gamma at each epoch milestone; ResNet's 30/60/90) and
`exponential` (x gamma every epoch; the slimmable MobileNets' "exp_decaying").
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlannerError

BUILT_IN = Path(__file__).with_name("recipes")
SCHEDULES = ("cosine", "linear", "multistep", "exponential")


@dataclass(frozen=True)
class Schedule:
    """How the learning rate falls from its peak."""

    kind: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1


COSINE = Schedule()


@dataclass(frozen=True)
class Recipe:
    """Everything a published run fixed, as `planner train` takes it."""

    name: str
    model: str
    widths: tuple[float, ...]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float = 0.0
    input_size: int | None = None
    augment: bool = False
    schedule: Schedule = field(default_factory=Schedule)
    source: str = ""
    paper: dict[str, Any] = field(default_factory=dict)


def lr_factor(schedule: Schedule, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate after `step` optimizer steps, as a fraction of the peak."""
    epoch = step // steps_per_epoch
    if schedule.kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule.kind == "linear":
        return max(0.0, 1 - step / total_steps)
    if schedule.kind == "multistep":
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    return schedule.gamma**epoch


def recipe_names() -> list[str]:
    return sorted(p.stem for p in BUILT_IN.glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name, or a TOML file; PlannerError naming the file and key when it is wrong."""
    path = Path(name_or_path)
    if not path.suffix and (BUILT_IN / f"{name_or_path}.toml").is_file():
        path = BUILT_IN / f"{name_or_path}.toml"
    if not path.is_file():
        raise PlannerError(
            f"recipe {name_or_path} is neither a TOML file nor a built-in one ({', '.join(recipe_names())})"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PlannerError(f"recipe {path} is not valid TOML: {error}") from None
    return _parse(raw, path)


TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "widths": (list,),
    "epochs": (int,),
    "batch_size": (int,),
    "lr": (float, int),
    "weight_decay": (float, int),
    "label_smoothing": (float, int),
    "input_size": (int,),
    "augment": (bool,),
    "source": (str,),
}
REQUIRED = ("model", "widths", "epochs", "batch_size", "lr", "weight_decay")


def _parse(raw: dict[str, Any], path: Path) -> Recipe:
    train = raw.get("train")
    if not isinstance(train, dict):
        raise PlannerError(f"recipe {path} has no [train] table")
    unknown = sorted(set(raw) - {"train", "paper"}) + [
        f"train.{k}" for k in sorted(set(train) - {*TYPES, "schedule"})
    ]
    if unknown:
        raise PlannerError(f"recipe {path}: unknown key {unknown[0]}")
    for key in REQUIRED:
        if key not in train:
            raise PlannerError(f"recipe {path}: train.{key} is missing")
    for key, value in train.items():
        if key in TYPES and (
            not isinstance(value, TYPES[key]) or (isinstance(value, bool) and bool not in TYPES[key])
        ):
            raise PlannerError(f"recipe {path}: train.{key} = {value!r} is not a {TYPES[key][0].__name__}")
    widths = train["widths"]
    if not widths or not all(isinstance(w, int | float) and 0 < w <= 1 for w in widths):
        raise PlannerError(f"recipe {path}: train.widths must be numbers in (0, 1], got {widths!r}")
    for key in ("epochs", "batch_size"):
        if train[key] < 1:
            raise PlannerError(f"recipe {path}: train.{key} must be at least 1, got {train[key]}")
    if train["lr"] <= 0 or train["weight_decay"] < 0:
        raise PlannerError(f"recipe {path}: train.lr must be positive and train.weight_decay not negative")
    if not 0 <= train.get("label_smoothing", 0) < 1:
        raise PlannerError(f"recipe {path}: train.label_smoothing must be in [0, 1)")
    return Recipe(
        name=path.stem,
        model=train["model"],
        widths=tuple(float(w) for w in widths),
        epochs=train["epochs"],
        batch_size=train["batch_size"],
        lr=float(train["lr"]),
        weight_decay=float(train["weight_decay"]),
        label_smoothing=float(train.get("label_smoothing", 0.0)),
        input_size=train.get("input_size"),
        augment=train.get("augment", False),
        schedule=_schedule(train.get("schedule", {}), train["epochs"], path),
        source=train.get("source", ""),
        paper=dict(raw.get("paper", {})),
    )


def _schedule(raw: Any, epochs: int, path: Path) -> Schedule:
    if not isinstance(raw, dict):
        raise PlannerError(f"recipe {path}: train.schedule must be a table (kind, milestones, gamma)")
    unknown = sorted(set(raw) - {"kind", "milestones", "gamma"})
    if unknown:
        raise PlannerError(f"recipe {path}: unknown key train.schedule.{unknown[0]}")
    kind = raw.get("kind", "cosine")
    if kind not in SCHEDULES:
        raise PlannerError(f"recipe {path}: train.schedule.kind = {kind!r}; choose {', '.join(SCHEDULES)}")
    milestones = raw.get("milestones", [])
    if not isinstance(milestones, list) or not all(isinstance(m, int) and 0 < m < epochs for m in milestones):
        raise PlannerError(
            f"recipe {path}: train.schedule.milestones must be epochs between 1 and {epochs - 1}"
        )
    if milestones != sorted(set(milestones)):
        raise PlannerError(f"recipe {path}: train.schedule.milestones must rise")
    gamma = raw.get("gamma", 0.1)
    if not isinstance(gamma, float | int) or isinstance(gamma, bool) or not 0 < gamma <= 1:
        raise PlannerError(f"recipe {path}: train.schedule.gamma must be a number in (0, 1]")
    if kind == "multistep" and not milestones:
        raise PlannerError(f"recipe {path}: a multistep schedule needs train.schedule.milestones")
    return Schedule(kind, tuple(milestones), float(gamma))
