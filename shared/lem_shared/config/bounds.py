"""Bounds every configured number keeps, whatever field it is in: floats are finite and integers fit int64 (what
PostgreSQL's JSON and BIGINT columns hold), and a free-form value (a grid axis value, an engine's ``extra``
parameter) is checked all the way down, within a budget of values so that YAML aliases cannot make it endless.

Typed fields get the same bounds from pydantic: ``allow_inf_nan=False`` in the models' config and an ``le``/``ge``
on every integer field; ``FiniteJson`` is for fields typed ``Any``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import AfterValidator

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Values (scalars, lists, mappings, counted with YAML aliases expanded) one campaign may hold: a 1 MiB file
# holds a few hundred thousand; more can only come from aliases referring to aliases.
MAX_VALUES = 1_000_000


class TooManyValues(ValueError):
    """A value that expands to more than ``MAX_VALUES`` values."""


def number_problem(value: Any) -> str | None:
    """Why a scalar is not a storable number (non-finite float, integer outside int64), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return f"must be an integer within int64 ({INT64_MIN:,} to {INT64_MAX:,})"
    return None


def _where(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _scalars(value: Any, budget: int) -> Iterator[tuple[list[Any], Any]]:
    """(path, scalar) of every scalar in nested lists and mappings, depth first; TooManyValues past ``budget``
    values (a shared list counts each time it is reached)."""
    stack: list[tuple[list[Any], Any]] = [([], value)]
    seen = 0
    while stack:
        path, item = stack.pop()
        seen += 1
        if seen > budget:
            raise TooManyValues(
                f"holds more than {budget:,} values once YAML aliases are expanded; write the "
                "values out or split the campaign"
            )
        if isinstance(item, dict):
            stack.extend((path + [key], inner) for key, inner in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((path + [index], inner) for index, inner in reversed(list(enumerate(item))))
        else:
            yield path, item


def check_size(value: Any, budget: int = MAX_VALUES) -> None:
    """Raise TooManyValues when ``value`` holds more than ``budget`` values."""
    for _ in _scalars(value, budget):
        pass


def value_problem(value: Any, budget: int = MAX_VALUES) -> str | None:
    """The first number in ``value`` (scalar, or nested lists and mappings) that ``number_problem`` refuses, as
    ``must be ... (got X at a.b[1])``, or None. Raises TooManyValues past ``budget`` values."""
    for path, item in _scalars(value, budget):
        problem = number_problem(item)
        if problem:
            return f"{problem} (got {item!r} at {_where(path)})" if path else problem
    return None


def _finite_json(value: Any) -> Any:
    problem = value_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# A free-form value whose numbers are all finite and within int64 (refused with where the bad one is).
FiniteJson = Annotated[Any, AfterValidator(_finite_json)]
