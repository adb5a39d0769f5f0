"""Dotted keys (``workload.input_len``) over config mappings and the schema's models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

MISSING = object()  # what ``lookup`` returns for a key that is not there


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config mapping as dotted keys (``workload.input_len``); an empty mapping has no keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def lookup(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return MISSING
        config = config[part]
    return config


def with_value(config: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``config`` with the dotted key set to ``value``."""
    head, _, rest = dotted.partition(".")
    out = dict(config)
    if rest:
        inner = out.get(head)
        out[head] = with_value(dict(inner) if isinstance(inner, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field annotated ``Model`` or ``Model | None``."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: Any) -> bool:
    return any(getattr(a, "__origin__", a) is dict for a in (annotation, *getattr(annotation, "__args__", ())))


def is_field(model: type[BaseModel], path: list[str]) -> bool:
    """Whether a dotted key names a field; any key below a mapping field (such as ``extra``) counts."""
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    sub = model_of(field.annotation)
    if sub is not None:
        return is_field(sub, path[1:])
    return _is_mapping(field.annotation)


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        sub = model_of(field.annotation)
        if sub is not None:
            paths += field_paths(sub, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths
