"""Strict, typed configuration: YAML in, pydantic models out, unknown keys refused.

Every config model in dpmammo derives from `StrictModel` (``extra="forbid"``), so a misspelled
key is an error naming the key rather than a silently ignored option.
"""

from __future__ import annotations

import math
import re
import types
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from dpmammo.errors import DpMammoError

M = TypeVar("M", bound=BaseModel)


INT64_MAX = 2**63 - 1  # torch seeds, tensor sizes and counts are 64-bit; a larger integer is a typo
ECHO_CHARS = 200  # at most this much of a user's value is repeated in an error line
MAX_PROBLEMS = 5  # validation problems named in one error line; the rest are counted

# A seed: initialisation, augmentation, sampling of public randomness (never DP noise). numpy refuses
# negative seeds and torch those beyond 64 bits, so both are refused here, in one line.
Seed = Annotated[int, Field(ge=0, le=INT64_MAX)]


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, values are validated on assignment.

    Numbers are numbers: `inf`/`nan` are refused wherever a float is validated (a field that means
    "unbounded" by ∞, such as ε, opts in), an integer must fit in 64 bits, and YAML `true`/`false` is
    not taken for 1 or 0 (nor 1/0 for a switch): `epochs: true` would otherwise run one epoch.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = [InitErrorDetails(type=PydanticCustomError("number_kind", problem), loc=(name, *at), input=value)
                    for name, given in data.items() if (field := cls.model_fields.get(name)) is not None
                    for at, value, problem in _number_problems(field.annotation, given)]
        if problems:  # raised as a ValidationError so that each problem keeps its key path
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return data


def _scalar_types(annotation: Any) -> set[Any]:
    """The plain types a field accepts, through Optional/Union/Annotated (containers left out)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _scalar_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in get_args(annotation)))
    return {annotation} if origin is None else {origin}


def _number_problems(annotation: Any, value: Any, at: tuple = ()) -> list[tuple[tuple, Any, str]]:
    """(location, value, problem) for each value that a lax parser would take for a number it is not."""
    items = get_args(annotation) if get_origin(annotation) in (list, tuple) else ()
    if items and isinstance(value, (list, tuple)):  # list[int] (seeds), tuple[float, float, float]
        return [p for i, item in enumerate(value) for p in _number_problems(items[0], item, (*at, i))]
    kinds = _scalar_types(annotation)
    if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
        return [(at, value, "Input should be a number, not true/false")]
    if bool in kinds and kinds <= {bool, type(None)} and value is not None and not isinstance(value, bool):
        return [(at, value, "Input should be true or false")]  # not 1/0 or "yes"/"off" taken for a switch
    if isinstance(value, int) and not isinstance(value, bool) and int in kinds and abs(value) > INT64_MAX:
        return [(at, value, f"Input should fit in 64 bits (at most {INT64_MAX})")]
    return []


def _clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def check_option(name: str, value: float | int, *, minimum: float | int | None = None,
                 maximum: float | int | None = INT64_MAX) -> None:
    """A number given on the command line (not through a config): finite, and in [minimum, maximum]."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DpMammoError(f"{name} {value}: expected a finite number")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        where = (f"between {minimum} and {maximum}" if minimum is not None and maximum is not None
                 else f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        raise DpMammoError(f"{name} {_clip(str(value), 40)}: must be {where}")


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message (got value)`."""
    parts = []
    errors = err.errors()
    for e in errors[:MAX_PROBLEMS]:
        loc = _clip(".".join(str(p) for p in e["loc"]), 120)
        msg = _clip(e["msg"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented keys)"
        elif e["type"] == "value_error":  # our validators' own words, without pydantic's prefix
            msg = msg.removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "value_error" else f" (got {_clip(repr(got))})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more problems")
    return f"{source}: " + "; ".join(parts)


class _ConfigYamlError(yaml.MarkedYAMLError):
    """YAML that parses but that a config refuses: a repeated key, an alias."""


class ConfigLoader(yaml.SafeLoader):
    """YAML as configs use it: a key given twice in one mapping is an error (plain YAML keeps the
    last one silently), and aliases (`*name`) are refused. Why refuse aliases rather than cap their
    expansion: a config is a few dozen hand-written keys that never need one, an alias makes a
    value depend on another place in the file (and merge keys, `<<: *base`, repeat keys without
    the duplicate check seeing them), and a 400-byte file of nested aliases expands into millions
    of values before any limit could be checked cheaply."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _ConfigYamlError(problem=f"alias *{_clip(str(event.anchor), 40)} at line {event.start_mark.line + 1}: "
                                           "aliases are not allowed in dpmammo configs; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the constructor names it below
                    continue
                if earlier is not key_node.start_mark:
                    raise _ConfigYamlError(problem=f"key {_clip(repr(key), 80)} is given twice in one mapping (lines "
                                                   f"{earlier.line + 1} and {key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """YAML text parsed as configs are (see ConfigLoader)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 — ConfigLoader is a SafeLoader


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
        data = load_yaml_text(text)
    except _ConfigYamlError as e:
        raise DpMammoError(f"{path}: {e.problem}") from None
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
            value = load_yaml_text(raw)
        except _ConfigYamlError as e:
            raise DpMammoError(f"--set {_clip(item, 80)}: {e.problem}") from None
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
