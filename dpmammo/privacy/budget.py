"""One typed ε: a finite budget > 0, or ∞ for non-private. One parser, one formatter, one run-id tag.

Spellings accepted on input (configs, --set, results.csv): numbers, `inf`, `infinity`, `∞`,
`non-private`, YAML `.inf`. Written out as `6`, `0.5`, `∞` for people and `eps6`, `epsinf` in
run ids; results.csv stores `inf`, which `parse_epsilon` reads back.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AllowInfNan, BeforeValidator, PlainSerializer

NON_PRIVATE = math.inf
INF_SPELLINGS = ("inf", "infinity", "∞", "nonprivate", "non-private")


def parse_epsilon(value: Any) -> float:
    """A finite ε > 0, or ∞ (non-private) spelled `inf`, `∞` or YAML `.inf`."""
    if isinstance(value, str):
        if value.strip().lower() in INF_SPELLINGS:
            return math.inf
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"ε must be a number > 0 or inf/∞ (non-private), got {value!r}") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ε must be a number > 0 or inf/∞ (non-private), got {value!r}") from None
    if not value > 0:
        raise ValueError(f"ε must be > 0 (use inf or ∞ for non-private), got {value!r}")
    return value


def format_epsilon(eps: float) -> str:
    """`6`, `0.5`, `∞`: ε for people (tables, titles)."""
    return "∞" if math.isinf(eps) else f"{eps:g}"


def epsilon_tag(eps: float) -> str:
    """`eps6`, `epsinf`: ε in run ids and paths."""
    return "epsinf" if math.isinf(eps) else f"eps{eps:g}"


def is_private(eps: float) -> bool:
    return not math.isinf(eps)


# A config or record field holding ε: parsed from any spelling, written as a number or "inf".
Epsilon = Annotated[float, AllowInfNan(True), BeforeValidator(parse_epsilon),
                    PlainSerializer(lambda e: "inf" if math.isinf(e) else e, when_used="json")]
