"""ConfigError and the one formatter of pydantic's errors as ``field: what is allowed`` lines a user can act on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from lem_shared.config.keys import model_of
from lem_shared.config.suggest import did_you_mean


class ConfigError(Exception):
    """A campaign file that cannot run; ``problems`` are lines of the form ``field: what is allowed``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = model_of(field.annotation) if field else None
        if sub is None:
            return None
        model = sub
    return list(model.model_fields)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an error in a mapping's key, which the part before names
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_MAX_LISTED = 12  # an unknown key lists the allowed ones only when there are at most this many


def describe_errors(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """Pydantic errors as ``field: what is allowed`` lines a user can act on."""
    lines = []
    for err in exc.errors():
        loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx", {})
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1]) or []
            hint = did_you_mean(str(loc[-1]), allowed) if loc else ""
            if not hint and allowed:
                hint = (
                    f"allowed: {', '.join(allowed)}"
                    if len(allowed) <= _MAX_LISTED
                    else f"nothing close among its {len(allowed)} keys"
                )
            reason = "unknown key" + (f"; {hint}" if hint else "")
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op, bound = {
                "greater_than_equal": (">=", "ge"),
                "greater_than": (">", "gt"),
                "less_than_equal": ("<=", "le"),
                "less_than": ("<", "lt"),
            }[kind]
            reason = f"must be {op} {ctx[bound]}"
        elif kind in ("literal_error", "enum"):
            reason = f"must be one of {ctx['expected']}"
        elif kind == "missing":
            reason = "is required"
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            reason = "must be an integer"
        elif kind == "finite_number":
            reason = "must be a finite number"
        elif kind == "string_pattern_mismatch":
            reason = f"must match {ctx['pattern']}"
        elif kind == "value_error":
            reason = str(err["msg"]).removeprefix("Value error, ")
        else:
            reason = str(err["msg"])
        got = err.get("input")
        if kind not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
            reason += f" (got {got!r})"
        where = _format_loc(loc)
        lines.append(f"{where}: {reason}" if where else reason)
    return lines
