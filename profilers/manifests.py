"""Reading a deployment manifest, the one way for both sides: `planner manifest` writes it, the device's
ladder runtime (profilers.ladder) and `planner.deploy.manifest.load_manifest` read it through here.

A manifest is checked against the JSON Schema of its version (profilers/schemas/manifest.schema.json is
the current one; older versions keep their file), its artifact paths must stay inside its folder, and
every artifact must be present and match its sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from profilers.documents import check, load_schema, read_json
from profilers.errors import ProfilerError
from profilers.jobs import file_digest

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 2
# schema version -> its schema file, profilers/schemas/<name>.schema.json
SCHEMAS = {1: "manifest-v1", 2: "manifest"}


def schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The manifest JSON Schema of a version."""
    return load_schema("profilers", SCHEMAS[version])


def read_manifest(path: str | Path, error: type[Exception] = ProfilerError) -> tuple[dict[str, Any], Path]:
    """The manifest at `path` (a file or its folder), checked, and the folder its paths are relative to."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    manifest = read_json(path, "manifest", missing_hint="write one with planner manifest", error=error)
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version not in SCHEMAS:
        readable = ", ".join(map(str, SCHEMAS))
        raise error(f"manifest {path} has schema_version {version!r}; this version reads {readable}")
    check(manifest, schema(version), f"manifest {path}", error)
    base = path.parent.resolve()
    for rung in [manifest["configuration"], *manifest["ladder"]]:
        for entry in rung["artifact"]["files"]:
            file = inside(base, entry["path"], path, error)
            if not file.is_file():
                raise error(f"manifest {path}: artifact {entry['path']} is missing")
            if file_digest(file) != entry["sha256"]:
                raise error(
                    f"manifest {path}: artifact {entry['path']} does not match its sha256 "
                    "(changed or corrupt); rebuild it with planner manifest"
                )
    return manifest, base


def inside(base: Path, relative: str, manifest: Path, error: type[Exception] = ProfilerError) -> Path:
    """`relative` resolved under `base`; a path that leaves the manifest's folder is refused."""
    file = (base / relative).resolve()
    if not file.is_relative_to(base):
        raise error(f"manifest {manifest}: artifact path {relative!r} leaves the manifest's directory")
    return file
