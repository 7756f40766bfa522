"""Targets: the devices and runtimes a configuration is profiled on, one TOML file each.

A target file is data (parsed with `tomllib`, never executed) and is validated against the dataclasses
below, so a typo in a key or a string where a number belongs is an error naming the file and the key
instead of a surprise on the device. The schema is documented in planner/targets/README.md.

Target files are looked up in `--targets-dir`, then `$PLANNER_TARGETS_DIR`, then the built-in
planner/targets/ (package data); a name found in an earlier directory shadows the same name in a later
one, which is how a user overrides a shipped target or adds a new one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from planner.errors import PlannerError
from profilers.backends import BACKENDS
from profilers.documents import check, load_schema
from profilers.jobs import PRECISIONS

TARGETS_DIR_ENV = "PLANNER_TARGETS_DIR"
BUILTIN_TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"  # planner/targets/, package data

CONNECTION_KINDS = ("local", "ssh")

# A DNS name (RFC 1123 labels); IP literals are checked with `ipaddress`. Nothing a shell could interpret.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class Connection:
    """How to reach the device: `local` (this machine) or `ssh` (host, user, port, device's python)."""

    kind: str = "local"
    host: str | None = None
    user: str | None = None
    port: int = 22
    python: str = "python3"
    workdir: str = ".cache/planner"

    @property
    def is_remote(self) -> bool:
        return self.kind == "ssh"

    @property
    def address(self) -> str:
        """`user@host:port` as a user would type it (for messages)."""
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class Budgets:
    """Default budgets `planner select` applies to this target when none are given."""

    max_latency_ms: float | None = None
    max_memory_mb: float | None = None


@dataclass(frozen=True)
class Hardware:
    """Published peak figures for roofline estimates and sanity bounds; `source` says where they are from."""

    source: str
    peak_fp32_gflops: float | None = None
    peak_fp16_gflops: float | None = None
    memory_bandwidth_gbs: float | None = None
    ram_gb: float | None = None

    def peak_gflops(self, precision: str) -> float | None:
        """Peak for a precision; fp16 falls back to the fp32 figure when no faster one is known."""
        if precision == "fp16" and self.peak_fp16_gflops is not None:
            return self.peak_fp16_gflops
        return self.peak_fp32_gflops


@dataclass(frozen=True)
class Target:
    """One device + runtime + settings: everything needed to profile a configuration there."""

    name: str
    backend: str
    device: str = "CPU"
    precision: str = "fp32"
    threads: int = 0
    batch: int = 1
    description: str = ""
    aliases: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None
    connection: Connection = field(default_factory=Connection)
    budgets: Budgets = field(default_factory=Budgets)
    hardware: Hardware | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def is_remote(self) -> bool:
        return self.connection.is_remote

    def with_host(self, spec: str) -> Target:
        """This target reached over SSH at `spec` (`[user@]host[:port]`), as given by `--host`."""
        user, host, port = parse_host(spec)
        connection = dataclasses.replace(
            self.connection,
            kind="ssh",
            host=host,
            user=user or self.connection.user,
            port=port or self.connection.port,
        )
        return dataclasses.replace(self, connection=connection)

    def to_dict(self) -> dict[str, typing.Any]:
        """Plain JSON-ready dict (what `planner targets --json` prints)."""
        data = dataclasses.asdict(self)
        data["path"] = str(self.path) if self.path else None
        return data


def parse_host(spec: str) -> tuple[str | None, str, int | None]:
    """Split `[user@]host[:port]`; anything that is not a plain user, host name or IP is refused."""
    user, at, rest = spec.rpartition("@")
    port: int | None = None
    if rest.startswith("["):  # [v6-address]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else tail
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not _is_host(host) or (at and not _USER.match(user)):
        raise PlannerError(
            f"invalid host {spec!r}: expected [user@]host[:port] with a host name or IP address"
        )
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise PlannerError(f"invalid port in host {spec!r}: expected a number from 1 to 65535")
        port = int(port_text)
    return (user or None), host, port


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def search_dirs(targets_dir: Path | str | None = None) -> list[Path]:
    """Directories to read targets from, in priority order (see the module docstring)."""
    dirs = []
    if targets_dir is not None:
        path = Path(targets_dir).expanduser()
        if not path.is_dir():
            raise PlannerError(f"targets directory {path} does not exist")
        dirs.append(path)
    env_dir = os.environ.get(TARGETS_DIR_ENV)
    if env_dir:
        path = Path(env_dir).expanduser()
        if not path.is_dir():
            raise PlannerError(f"${TARGETS_DIR_ENV}={env_dir} is not a directory")
        dirs.append(path)
    if BUILTIN_TARGETS_DIR.is_dir():
        dirs.append(BUILTIN_TARGETS_DIR)
    return dirs


def list_targets(targets_dir: Path | str | None = None) -> list[Target]:
    """Every target visible from the search directories, sorted by name; earlier directories win."""
    found: dict[str, Target] = {}
    for directory in search_dirs(targets_dir):
        for path in sorted(directory.glob("*.toml")):
            target = read_target(path)
            found.setdefault(target.name, target)
    if not found:
        raise PlannerError(
            f"no target files found; pass --targets-dir DIR or set ${TARGETS_DIR_ENV} "
            "to a directory of <name>.toml files (see planner/targets/README.md)"
        )
    return sorted(found.values(), key=lambda target: target.name)


def load_target(name: str, targets_dir: Path | str | None = None) -> Target:
    """The target called `name` or having it as an alias (`jetson` -> jetson-orin-nano)."""
    targets = list_targets(targets_dir)
    for target in targets:
        if target.name == name:
            return target
    for target in targets:
        if name in target.aliases:
            return target
    known = ", ".join(target.name for target in targets)
    raise PlannerError(f"unknown target {name!r}; known targets: {known}")


def read_target(path: Path) -> Target:
    """Parse and validate one target file (data only)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise PlannerError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise PlannerError(f"{path}: cannot read: {error.strerror}") from None
    data.setdefault("name", path.stem)
    check(data, load_schema("planner", "target"), str(path), PlannerError)
    parts = {
        "connection": Connection(**data.get("connection", {})),
        "budgets": Budgets(**data.get("budgets", {})),
        "hardware": Hardware(**data["hardware"]) if "hardware" in data else None,
    }
    sequences = {key: tuple(data[key]) for key in ("aliases", "input_shape") if key in data}
    target = Target(**{**data, **parts, **sequences, "path": path})
    _check_values(target, path)
    return target


def _check_values(target: Target, path: Path) -> None:
    """Range and enum checks the types alone cannot express."""

    def fail(key: str, message: str) -> typing.NoReturn:
        raise PlannerError(f"{path}: key {key!r} {message}")

    if target.backend not in BACKENDS:
        fail("backend", f"must be one of {', '.join(BACKENDS)}, got {target.backend!r}")
    if target.precision not in PRECISIONS:
        fail("precision", f"must be one of {', '.join(PRECISIONS)}, got {target.precision!r}")
    if target.input_shape is not None and target.input_shape[0] != target.batch:
        fail("input_shape", "must be [batch, channels, height, width] with its batch matching batch")
    connection = target.connection
    if connection.host is not None and not _is_host(connection.host):
        fail("connection.host", "must be a host name or IP address (user and port have their own keys)")
    if connection.user is not None and not _USER.match(connection.user):
        fail("connection.user", "must be a plain user name")
