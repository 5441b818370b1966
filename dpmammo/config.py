"""Strict, typed configuration: YAML in, pydantic models out, unknown keys refused.

Every config model in dpmammo derives from `StrictModel` (``extra="forbid"``), so a misspelled
key is an error naming the key rather than a silently ignored option.
"""

from __future__ import annotations

import re
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
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented keys)"
        elif e["type"] == "value_error":  # our validators' own words, without pydantic's prefix
            msg = msg.removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "value_error" else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return f"{source}: " + "; ".join(parts)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; a missing, unreadable, empty or non-mapping file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DpMammoError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DpMammoError(f"{path}: not UTF-8 text (is it a YAML file?)") from None
    except OSError as e:
        raise DpMammoError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DpMammoError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    if data is None:
        # Every key has a default, so an empty file would silently run the defaults (20 epochs
        # of a non-private cnn-small) when the user most likely saved the wrong file.
        raise DpMammoError(f"{path} is empty (or only comments); write the keys to set, e.g. from configs/*.yaml")
    if not isinstance(data, dict):
        raise DpMammoError(f"{path}: the top level must be a mapping of keys to values, not a {type(data).__name__}")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """`<problem> at line L, column C`, on one line."""
    problem = getattr(e, "problem", None) or e.__class__.__name__
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


_KEY_PATH = re.compile(r"^[^.\s=]+(\.[^.\s=]+)*$")  # dotted, no empty part: train.epochs, stages.real+synthetic.epochs


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML (so `1e-4`, `null`, `[1,2]`)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise DpMammoError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not _KEY_PATH.match(key):
            raise DpMammoError(f"--set {item!r}: {key!r} is not a key path; expected e.g. --set train.epochs=5")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
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


def is_valid(model: type[BaseModel], data: dict[str, Any]) -> bool:
    """Whether `data` validates against `model` (to name the kind of a file that fits another model)."""
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def load_config(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Read YAML at `path`, apply `--set` overrides, validate against `model`."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(model, data, str(path))


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config (every default spelled out) beside the outputs."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
