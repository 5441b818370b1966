"""Strict, typed configuration: YAML in, pydantic models out, unknown keys refused.

Every config model in dpmammo derives from `StrictModel` (``extra="forbid"``), so a misspelled
key is an error naming the key rather than a silently ignored option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dpmammo.errors import DpMammoError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message (got value)`."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented keys)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{source}: " + "; ".join(parts)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DpMammoError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DpMammoError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DpMammoError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML (so `1e-4`, `null`, `[1,2]`)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise DpMammoError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise DpMammoError(f"--set {key}: {p!r} is not a section")
            node[p] = dict(child)
            node = node[p]
        node[parts[-1]] = value
    return data


def parse_config(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise DpMammoError(format_validation_error(e, source)) from None


def load_config(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Read YAML at `path`, apply `--set` overrides, validate against `model`."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(model, data, str(path))


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config (every default spelled out) beside the outputs."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
