"""The base of every backend section: groups of first-class engine parameters, and the ``extra`` escape hatch.

A backend section (``pytorch:``, ``vllm:``, ``trtllm:`` of an experiment) holds one ``EngineGroup`` per engine
call (model loading, engine construction, compile, generate/sampling). A group's field names are the engine's
own parameter names, so the mapping to the engine is by name and a test checks every field against the
committed snapshot. Every field defaults to None, meaning "the engine's default": only what a user set is passed.

``extra`` reaches any other parameter of the snapshot: ``{name: value}`` or ``{"group.name": value}`` where a name
is in several groups. A section is checked against the snapshot its validation context names (see ``snapshots``:
the engine version the workers run), the newest committed one by default. A first-class field that version lacks
is refused naming the version; an unknown ``extra`` name is an error with the closest matches; a name that is a
first-class field, is set by another experiment field (``dtype``, ``workload.output_len``) or is set by the tool
itself is refused with the field to use instead. Keys are normalised to ``group.name``, so a stored experiment
says where each extra value goes.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from lem_shared.config.bounds import value_problem
from lem_shared.config.suggest import did_you_mean
from lem_shared.params.snapshots import ENGINE_NAMES, committed_versions, context_version, parameter_groups

# The keyword every engine (transformers, vLLM, TensorRT-LLM) takes for running a model repository's own code.
REMOTE_CODE = "trust_remote_code"


class EngineGroup(BaseModel):
    """Parameters of one engine call, named as the engine names them; None means the engine's default. Numbers
    are finite and integers within int64, in nested values too (``lem_shared.config.bounds``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _storable_numbers(cls, value: Any) -> Any:
        problem = value_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_serializer(mode="wrap")
    def _set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dumps hold the parameters that are set: an experiment's stored config (and its hash) stays small and
        says what was chosen, and validating it again gives the same group."""
        return {name: value for name, value in handler(self).items() if value is not None}

    def arguments(self) -> dict[str, Any]:
        """The parameters the user set, as keyword arguments of the engine call."""
        return self.model_dump(exclude_none=True)


class EngineSection(BaseModel):
    """A backend's section: ``EngineGroup`` fields (one per engine call) and ``extra``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    backend: ClassVar[str]
    # section group -> the snapshot groups its parameter names come from
    snapshot_groups: ClassVar[dict[str, tuple[str, ...]]]
    # groups whose arguments shape the loaded engine (a change means a new engine); the rest go to each request
    load_groups: ClassVar[tuple[str, ...]]
    # "group.name" -> the experiment field that sets it (refused in extra, counted as first-class in coverage)
    set_elsewhere: ClassVar[dict[str, str]] = {}
    # "group.name" -> why the tool sets it itself (refused in extra, not exposed)
    reserved: ClassVar[dict[str, str]] = {}

    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="any other engine parameter of the committed snapshot: {name: value} or {group.name: value}",
    )

    @field_validator("extra")
    @classmethod
    def _resolve_extra(cls, extra: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        version = context_version(info.context, cls.backend)
        resolved: dict[str, Any] = {}
        problems = []
        for key, value in extra.items():
            try:
                qualified = cls.qualify(key, version)
                problem = (
                    _number_problem(value)
                    or cls._refusal(qualified)
                    or _type_problem(value, cls._snapshot_type(qualified, version))
                )
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if problem:
                problems.append(f"{key}: {problem}")
            elif qualified in resolved:
                problems.append(f"{key}: given twice (as {qualified})")
            else:
                resolved[qualified] = value
        if problems:
            raise ValueError("; ".join(problems))
        return resolved

    @model_validator(mode="after")
    def _fields_in_snapshot(self, info: ValidationInfo) -> EngineSection:
        """Refuse a first-class field the engine version in use lacks (fields are named after the newest one)."""
        versions = committed_versions(self.backend)
        version = context_version(info.context, self.backend) or (versions[-1] if versions else None)
        known = parameter_groups(self.backend, version)
        if not known:
            return self
        engine = f"{ENGINE_NAMES[self.backend]} {version}"
        problems = [
            f"{self.backend}.{group}.{name}: {engine} has no parameter {name!r} (snapshot {self.backend}-{version})"
            for group, groups in self.snapshot_groups.items()
            if getattr(self, group) is not None
            for name in getattr(self, group).arguments()
            if not any(name in known.get(g, {}) for g in groups)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def first_class(cls) -> dict[str, set[str]]:
        """``{group: field names}`` of the section's first-class parameters."""
        out = {}
        for group in cls.snapshot_groups:
            model = _group_model(cls.model_fields[group].annotation)
            out[group] = set(model.model_fields)
        return out

    @classmethod
    def engine_label(cls, version: str | None = None) -> str:
        """``vllm 0.33.0``: the backend and the engine version of the snapshot at ``version`` (None: the newest)."""
        versions = committed_versions(cls.backend)
        version = version or (versions[-1] if versions else None)
        return f"{cls.backend} {version}" if version else cls.backend

    @classmethod
    def qualify(cls, key: str, version: str | None = None) -> str:
        """``group.name`` for an ``extra`` key in the snapshot at ``version`` (None: the newest), or ValueError
        naming the closest parameters."""
        known = parameter_groups(cls.backend, version)
        if not known:
            raise ValueError(
                f"{key}: no committed {cls.backend} parameter snapshot to check it against; "
                f"run `lem params discover {cls.backend}`"
            )
        group, dot, name = key.rpartition(".")
        candidates = [group] if dot else list(cls.snapshot_groups)
        if dot and group not in cls.snapshot_groups:
            raise ValueError(f"{key}: unknown group {group!r}; groups: {', '.join(cls.snapshot_groups)}")
        found = [g for g in candidates if any(name in known.get(s, {}) for s in cls.snapshot_groups[g])]
        if len(found) == 1:
            return f"{found[0]}.{name}"
        if len(found) > 1:
            raise ValueError(
                f"{key}: a parameter of several calls; write one of {', '.join(f'{g}.{name}' for g in found)}"
            )
        names = sorted({n for g in candidates for s in cls.snapshot_groups[g] for n in known.get(s, {})})
        hint = did_you_mean(name, names)
        hint = f"; {hint}" if hint else ""
        raise ValueError(f"{key}: not a parameter of {cls.engine_label(version)}{hint}")

    @classmethod
    def _refusal(cls, qualified: str) -> str | None:
        group, _, name = qualified.partition(".")
        if name in cls.first_class()[group]:
            return f"a first-class field; set {cls.backend}.{qualified} instead of extra"
        if qualified in cls.set_elsewhere:
            return f"set by the experiment's {cls.set_elsewhere[qualified]}; set that instead of extra"
        if qualified in cls.reserved:
            return f"set by the tool itself: {cls.reserved[qualified]}"
        return None

    @classmethod
    def _snapshot_type(cls, qualified: str, version: str | None) -> str:
        group, _, name = qualified.partition(".")
        known = parameter_groups(cls.backend, version)
        for snapshot_group in cls.snapshot_groups[group]:
            if name in known.get(snapshot_group, {}):
                return str(known[snapshot_group][name].get("type") or "")
        return ""

    # Cached per instance (the section is frozen): planning checks every grid point against its sections, and
    # one section object is shared by many points.
    @cached_property
    def is_default(self) -> bool:
        """Whether nothing is set (the section of a backend the experiment does not use must be)."""
        return self.model_dump() == type(self)().model_dump()

    @cached_property
    def group_arguments(self) -> dict[str, dict[str, Any]]:
        return {group: self._arguments(group) for group in self.snapshot_groups}

    def arguments(self, group: str) -> dict[str, Any]:
        """Keyword arguments of ``group``'s engine call: its first-class fields that are set, then its extra
        (a fresh dict: callers may change it)."""
        return dict(self.group_arguments[group])

    def _arguments(self, group: str) -> dict[str, Any]:
        value = getattr(self, group)
        args = value.arguments() if value is not None else {}
        prefix = group + "."
        args.update({key.removeprefix(prefix): v for key, v in self.extra.items() if key.startswith(prefix)})
        return args

    def remote_code_fields(self) -> list[str]:
        """The dotted names of every ``trust_remote_code`` this section turns on (first-class or extra): each runs
        code from the model's repository in the engine host."""
        return [
            f"{self.backend}.{group}.{REMOTE_CODE}"
            for group in self.snapshot_groups
            if self.arguments(group).get(REMOTE_CODE)
        ]

    def load_arguments(self) -> dict[str, dict[str, Any] | None]:
        """The arguments that shape the loaded engine: a different value needs a new engine."""
        return {group: None if getattr(self, group) is None else self.arguments(group) for group in self.load_groups}

    def completions_per_prompt(self) -> int:
        """Sequences the engine returns per prompt (1 unless the section asks for more)."""
        return 1

    def check(self, experiment: Any) -> None:
        """Cross-field checks against the rest of the experiment; raise ValueError. None by default."""


def _group_model(annotation: Any) -> type[EngineGroup]:
    """The EngineGroup class of a group field (``Group`` or ``Group | None``)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, EngineGroup):
            return candidate
    raise TypeError(f"{annotation!r} is not an EngineGroup field")


def _number_problem(value: Any) -> str | None:
    """``value_problem`` with the value shown when it is a scalar (nested values name where the bad one is)."""
    problem = value_problem(value)
    return f"{problem} (got {value!r})" if problem and not isinstance(value, dict | list) else problem


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "None": (type(None),),
}


def _type_problem(value: Any, type_text: str) -> str | None:
    """A mismatch between ``value`` and a snapshot type made only of bool/int/float/str/None (``int | None``,
    ``Optional[float]``); other types (models, unions of classes, unannotated) are left to the engine."""
    text = type_text.replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1] + "|None"
    parts = text.split("|") if text else []
    if not parts or any(part not in _SIMPLE_TYPES for part in parts):
        return None
    allowed = tuple(t for part in parts for t in _SIMPLE_TYPES[part])
    if isinstance(value, bool) and bool not in allowed:
        return f"must be {type_text} (got {value!r})"
    if not isinstance(value, allowed):
        return f"must be {type_text} (got {value!r})"
    return None
