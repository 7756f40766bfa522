"""Reading a saved document the one way: a file that is missing, unreadable, not JSON or not matching its
JSON Schema gives one line naming the file and the place in it.

Every saved format has a schema file: the device side's under profilers/schemas/ (jobs, and the manifest,
which the ladder runtime reads on the device), planner's under planner/schemas/ (width configuration,
latency table, LeGR coefficients, target). Semantic
checks a schema cannot say (a layer that the model does not have) stay with the code that reads it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from profilers.errors import ProfilerError


def load_schema(package: str, name: str) -> dict[str, Any]:
    """The JSON Schema `<name>.schema.json` shipped in `package`'s schemas/ folder."""
    text = resources.files(package).joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def check(document: Any, schema: dict[str, Any], source: str, error: type[Exception] = ProfilerError) -> None:
    """Raise `error` naming `source` and the first key of `document` that breaks `schema`."""
    problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if problem is None:
        return
    if problem.validator == "additionalProperties" and isinstance(problem.instance, dict):
        allowed = problem.schema.get("properties", {})
        unknown = sorted(key for key in problem.instance if key not in allowed)
        raise error(
            f"{source} does not match its schema: unknown key {_key(problem.absolute_path, unknown[0])!r}"
        )
    if problem.validator == "required" and isinstance(problem.instance, dict):
        missing = [key for key in problem.validator_value if key not in problem.instance]
        raise error(
            f"{source} does not match its schema: missing key {_key(problem.absolute_path, missing[0])!r}"
        )
    where = _key(problem.absolute_path)
    raise error(
        f"{source} does not match its schema: " + (f"key {where!r}: " if where else "") + problem.message
    )


def _key(path: Any, last: str | None = None) -> str:
    """A place in a document as a person writes it: `connection.port`, `[0].onnx`."""
    text = ""
    for part in [*path, *([last] if last is not None else [])]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_json(
    path: str | Path,
    what: str,
    schema: dict[str, Any] | None = None,
    missing_hint: str = "",
    error: type[Exception] = ProfilerError,
) -> Any:
    """The JSON document at `path` (a `what`: "jobs file", "latency table"), checked against `schema`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist" + (f": {missing_hint}" if missing_hint else "")) from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"cannot read {what} {path}: {problem}") from None
    except json.JSONDecodeError as problem:
        raise error(f"{what} {path} is not valid JSON (truncated or corrupt?): {problem}") from None
    if schema is not None:
        check(document, schema, f"{what} {path}", error)
    return document
