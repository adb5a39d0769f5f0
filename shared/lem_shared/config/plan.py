"""Planning a campaign: validate it against the parameter snapshots and expand its grid into experiments.

A campaign's grid is expanded per backend (shared axes x that backend's axes, plus explicit ``include`` points,
minus ``exclude`` rules); a point that is not a valid experiment for its backend is skipped with its reason.
Entry points: ``load_plan`` (a file), ``plan_text`` (a file's text), ``plan_campaign`` (a mapping)."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from lem_shared.config.bounds import TooManyValues, check_size
from lem_shared.config.errors import ConfigError, describe_errors
from lem_shared.config.files import parse_yaml, read_campaign_file
from lem_shared.config.keys import MISSING, field_paths, is_field, lookup, with_value
from lem_shared.config.schema import CampaignConfig, EngineVersions, ExperimentConfig
from lem_shared.config.suggest import did_you_mean
from lem_shared.measure.carbon import load_intensity_csv
from lem_shared.params.snapshots import SnapshotChoice, SnapshotError, choose_snapshot, validation_context
from lem_shared.settings import get_settings
from lem_shared.wire.messages import canonical_json
from lem_shared.wire.queues import Backend


@dataclass(frozen=True)
class SkippedPoint:
    """A grid point that is not an experiment: the point (dotted key -> value, backend first) and why."""

    point: dict[str, Any]
    reason: str

    def describe(self) -> str:
        where = ", ".join(f"{key}={value!r}" for key, value in self.point.items())
        return f"point ({where}): {self.reason}"


@dataclass(frozen=True)
class CampaignPlan:
    """What a campaign file expands to: its experiments in order, their config hashes and canonical JSON (whose
    sha256 is the hash), and the points skipped with their reasons (invalid, excluded, duplicate)."""

    campaign: CampaignConfig
    config_hashes: list[str]
    config_json: list[str]
    skipped: list[SkippedPoint]
    experiment_values: list[dict[str, Any]]  # validated field values of each experiment
    # per backend the campaign uses, the parameter snapshot its sections were checked against, and why
    snapshots: dict[str, SnapshotChoice]

    @cached_property
    def experiments(self) -> list[ExperimentConfig]:
        """The experiments as models, built on first use (``to_json`` does not need them)."""
        return [ExperimentConfig.model_construct(**values) for values in self.experiment_values]

    def to_json(self) -> str:
        """``{"campaign", "experiments": [{"index", "backend", "config_hash", "config"}], "skipped": [{"point",
        "reason"}]}`` on one line; ``config`` is the canonical JSON (sorted keys) the hash is taken of."""
        backend_json = {backend: json.dumps(backend.value) for backend in Backend}
        experiments = ",".join(
            f'{{"index":{index},"backend":{backend_json[values["backend"]]},"config_hash":"{digest}",'
            f'"config":{config}}}'
            for index, (values, digest, config) in enumerate(
                zip(self.experiment_values, self.config_hashes, self.config_json, strict=True)
            )
        )
        compact = partial(json.dumps, ensure_ascii=False, separators=(",", ":"), default=str)
        campaign = compact(self.campaign.model_dump(mode="json"))
        skipped = compact([{"point": s.point, "reason": s.reason} for s in self.skipped])
        snapshots = compact(
            {b: {"snapshot": c.name, "note": c.note, "warning": c.warning} for b, c in self.snapshots.items()}
        )
        return f'{{"campaign":{campaign},"experiments":[{experiments}],"skipped":{skipped},"snapshots":{snapshots}}}'


def load_plan(path: str | Path, advertised: Mapping[str, Mapping[str, str]] | None = None) -> CampaignPlan:
    """Read and expand a campaign file into its experiments and skipped points, or raise ConfigError
    (``advertised``: see ``plan_campaign``)."""
    return plan_campaign(parse_yaml(read_campaign_file(path), str(path)), advertised, folder=Path(path).parent)


def plan_text(text: str, origin: str, advertised: Mapping[str, Mapping[str, str]] | None = None) -> CampaignPlan:
    """Validate and expand a campaign file's text (``origin`` names it in errors), or raise ConfigError
    (``advertised``: see ``plan_campaign``)."""
    return plan_campaign(parse_yaml(text, origin), advertised)


def inline_carbon(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The campaign mapping with ``carbon.csv`` read into ``carbon.series`` and ``carbon.source`` (the CSV is the
    planner's; workers and the finaliser never need it), or raise ConfigError naming the file and the line."""
    carbon = raw.get("carbon")
    if not isinstance(carbon, dict) or not isinstance(carbon.get("csv"), str) or carbon.get("series") is not None:
        return raw
    if carbon.get("g_per_kwh") is not None:
        return raw  # both given: the schema says so
    path = Path(carbon["csv"]).expanduser()
    path = path if path.is_absolute() else folder / path
    try:
        intensity = load_intensity_csv(path)
    except ValueError as exc:
        raise ConfigError([f"carbon.csv: {exc}"]) from None
    series = [[t, g] for t, g in zip(intensity.times, intensity.values, strict=True)]
    return {**raw, "carbon": {**carbon, "series": series, "source": intensity.source}}


def plan_campaign(
    raw: dict[str, Any], advertised: Mapping[str, Mapping[str, str]] | None = None, folder: Path | None = None
) -> CampaignPlan:
    """Validate a campaign mapping and expand it, or raise ConfigError naming every bad field.

    Each backend's sections are checked against one parameter snapshot (``choose_snapshot``): the version the
    file pins under ``engine_versions``, else the one the live workers advertise (``advertised``: {backend:
    {worker: engine version}}), else the newest committed. A pinned version no snapshot can check is a
    ConfigError; so are live workers no snapshot can check, for a backend the campaign uses."""
    try:
        check_size(raw)
    except TooManyValues as exc:
        raise ConfigError([f"campaign: {exc}"]) from None
    raw = inline_carbon(raw, folder or Path.cwd())
    try:
        pinned = _ENGINE_VERSIONS.validate_python(raw.get("engine_versions") or {})
    except ValidationError:
        pinned = {}  # reported by the whole validation below
    choices: dict[str, SnapshotChoice | SnapshotError] = {}
    for backend in Backend:
        try:
            choices[backend.value] = choose_snapshot(
                backend.value, pinned.get(backend), (advertised or {}).get(backend.value, {})
            )
        except SnapshotError as exc:
            choices[backend.value] = exc
    errors = {b: str(c) for b, c in choices.items() if isinstance(c, SnapshotError)}
    if any(backend in pinned for backend in errors):
        raise ConfigError([errors[backend] for backend in pinned if backend in errors])
    context = validation_context({b: c.version for b, c in choices.items() if isinstance(c, SnapshotChoice)})
    try:
        campaign = CampaignConfig.model_validate(raw, context=context)
    except ValidationError as exc:  # a backend without a snapshot was checked against the newest: say why
        raise ConfigError(describe_errors(exc, CampaignConfig) + list(errors.values())) from None
    used = {backend.value: choices[backend.value] for backend in campaign.backends_used()}
    if any(backend in errors for backend in used):
        raise ConfigError([errors[backend] for backend in used if backend in errors])
    return expand_campaign(campaign, {b: c for b, c in used.items() if isinstance(c, SnapshotChoice)})


_ENGINE_VERSIONS = TypeAdapter(EngineVersions)


def expand_campaign(campaign: CampaignConfig, snapshots: Mapping[str, SnapshotChoice] | None = None) -> CampaignPlan:
    """Per backend (those under ``backends``, or the base experiment's alone) the product of the shared grid axes
    and that backend's axes, in file order, less the points an ``exclude`` rule matches; then the ``include``
    points. Each point is validated as an ExperimentConfig; an invalid one is skipped with its reason, and a
    point whose config hash was already seen is skipped as a duplicate of the first. Raises ConfigError for
    structural problems (unknown parameters, empty axes) and when no experiment remains. ``snapshots``: the
    parameter snapshot of each backend (default: the newest committed)."""
    snapshots = dict(snapshots or {})
    context = validation_context({backend: choice.version for backend, choice in snapshots.items()})
    problems = _structural_problems(campaign)
    if problems:
        raise ConfigError(problems)
    base = campaign.experiment.model_dump(mode="json")
    shared_axes = list(campaign.grid.items())
    if campaign.backends:
        groups = [(backend.value, shared_axes + list(axes.items())) for backend, axes in campaign.backends.items()]
    else:
        groups = [(base["backend"], shared_axes)]
    _check_point_count(groups, len(campaign.include))
    found = _Found()
    rules = list(enumerate(campaign.exclude))
    for backend, axes in groups:
        _expand(base, backend, axes, rules, found, context)
    for point in campaign.include:
        extra = [(key, [value]) for key, value in point.items() if key != "backend"]
        _expand(base, point.get("backend", base["backend"]), extra, [], found, context)
    if not found.values:
        shown = [f"  {s.describe()}" for s in found.skipped[:10]]
        more = [f"  ... and {len(found.skipped) - 10} more"] if len(found.skipped) > 10 else []
        head = f"grid: no valid experiment; every point is invalid or excluded ({len(found.skipped)} skipped):"
        raise ConfigError([head, *shown, *more])
    runs, max_runs = len(found.values) * campaign.cycles, get_settings().max_runs
    if runs > max_runs:
        raise ConfigError(
            [
                f"cycles: {len(found.values):,} experiments x {campaign.cycles:,} cycles = {runs:,} runs, "
                f"over the limit of {max_runs:,}; lower cycles or the grid, or raise LEM_MAX_RUNS"
            ]
        )
    return CampaignPlan(campaign, found.hashes, found.configs, found.skipped, found.values, snapshots)


def _check_point_count(groups: list[tuple[str, list[tuple[str, list[Any]]]]], includes: int) -> None:
    """Refuse, before expanding anything, a grid of more points than ``LEM_MAX_GRID_POINTS`` (the product of each
    backend's axis lengths, plus the include points)."""
    total = includes + sum(math.prod(len(values) for _, values in axes) for _, axes in groups)
    limit = get_settings().max_grid_points
    if total <= limit:
        return
    parts = [f"{backend}: {' x '.join(str(len(values)) for _, values in axes) or '1'}" for backend, axes in groups]
    parts += [f"include: {includes}"] if includes else []
    raise ConfigError(
        [
            f"grid: {total:,} points ({', '.join(parts)}), over the limit of {limit:,}; split the "
            "campaign or raise LEM_MAX_GRID_POINTS"
        ]
    )


def _structural_problems(campaign: CampaignConfig) -> list[str]:
    """Problems that make the whole file wrong (as opposed to one point): unknown parameters, empty axes."""
    problems: list[str] = []

    def check(where: str, keys: list[str]) -> None:
        problems.extend(
            f"{where}.{key}: unknown parameter; {_closest(key)}"
            for key in keys
            if not is_field(ExperimentConfig, key.split("."))
        )

    def check_axes(where: str, axes: dict[str, list[Any]]) -> None:
        check(where, list(axes))
        problems.extend(f"{where}.{key}: must list at least one value" for key, values in axes.items() if not values)

    check_axes("grid", campaign.grid)
    if campaign.backends and "backend" in campaign.grid:
        problems.append("grid.backend: not an axis when backends is given; name each backend under backends")
    for backend, axes in campaign.backends.items():
        where = f"backends.{backend.value}"
        check_axes(where, axes)
        for key in axes:
            if key == "backend":
                problems.append(f"{where}.backend: set by the backends key itself; remove it")
            elif key in campaign.grid:
                problems.append(f"{where}.{key}: also a grid axis; give it in one place")
    for index, point in enumerate(campaign.include):
        check(f"include[{index}]", list(point))
    for index, rule in enumerate(campaign.exclude):
        if not rule:
            problems.append(f"exclude[{index}]: must name at least one parameter")
        check(f"exclude[{index}]", list(rule))
    return problems


def _closest(key: str) -> str:
    """The known dotted keys closest to an unknown one (there are too many to list them all); with none close, the
    keys under its first part, or the first parts there are."""
    paths = field_paths(ExperimentConfig)
    hint = did_you_mean(key, paths)
    if hint:
        return hint
    head = key.partition(".")[0]
    under = [p for p in paths if p.partition(".")[0] == head]
    if under:
        return f"nothing close; {head} has {', '.join(under[:8])}" + (", ..." if len(under) > 8 else "")
    return f"nothing close; keys start with {', '.join(dict.fromkeys(p.partition('.')[0] for p in paths))}"


class _Found:
    """The experiments found so far (first of each config hash) and the skipped points."""

    def __init__(self) -> None:
        self.values: list[dict[str, Any]] = []  # validated field values of each experiment
        self.hashes: list[str] = []
        self.configs: list[str] = []
        self.skipped: list[SkippedPoint] = []
        self.index_of: dict[str, int] = {}

    def add(
        self,
        values: dict[str, Any],
        config: str,
        idx: tuple[int, ...],
        point_of: Callable[[tuple[int, ...]], dict[str, Any]],
    ) -> None:
        """Keep an experiment (``config``: its canonical JSON), or skip it as a duplicate of the first."""
        digest = hashlib.sha256(config.encode()).hexdigest()
        first = self.index_of.setdefault(digest, len(self.values))
        if first != len(self.values):
            self.skipped.append(SkippedPoint(point_of(idx), f"duplicate of experiment {first}"))
            return
        self.values.append(values)
        self.hashes.append(digest)
        self.configs.append(config)


_SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in ExperimentConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
_INVALID = object()


def _field_validators(model: type[BaseModel]) -> dict[str, SchemaValidator] | None:
    """A validator per top-level field, built from the model's own core schema (so constraints and field
    validators are the model's), or None when the model's shape is one the fast path does not handle: a model
    validator other than ``after``, or a field validator that reads other fields."""
    decorators = model.__pydantic_decorators__
    if any(d.info.mode != "after" for d in decorators.model_validators.values()):
        return None
    if any(len(inspect.signature(d.func).parameters) != 1 for d in decorators.field_validators.values()):
        return None
    schema = model.__pydantic_core_schema__
    while schema.get("type") == "function-after":
        schema = schema["schema"]
    if schema.get("type") != "model" or schema["schema"].get("type") != "model-fields":
        return None
    validators = {}
    for name, field in schema["schema"]["fields"].items():
        inner = field["schema"]
        validators[name] = SchemaValidator(
            inner["schema"] if inner["type"] == "default" else inner, schema.get("config")
        )
    return validators


_TOP_LEVEL_VALIDATORS = _field_validators(ExperimentConfig)
_CROSS_FIELD_CHECKS = [d.func for d in ExperimentConfig.__pydantic_decorators__.model_validators.values()]


def _cross_field_problem(values: dict[str, Any]) -> str | None | object:
    """Run ExperimentConfig's ``after`` validators on validated field values: None when they pass, the reason
    pydantic would report when one raises ValueError, ``_INVALID`` when only a whole validation can tell."""
    fields = SimpleNamespace(**values)
    try:
        for check in _CROSS_FIELD_CHECKS:
            check(fields)
    except ValidationError:
        return _INVALID
    except ValueError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - anything else: let pydantic validate the point and say what is wrong
        return _INVALID
    return None


def _validate_whole(config: dict[str, Any], context: dict[str, Any]) -> dict[str, Any] | str:
    """Full validation of one point: its field values, or the ``field: reason`` lines joined."""
    try:
        return dict(ExperimentConfig.model_validate(config, context=context))
    except ValidationError as exc:
        return "; ".join(describe_errors(exc, ExperimentConfig))


def _expand(
    base: dict[str, Any],
    backend: Any,
    axes: list[tuple[str, list[Any]]],
    rules: list[tuple[int, dict[str, Any]]],
    found: _Found,
    context: dict[str, Any],
) -> None:
    """Add the points of one backend's product to ``found`` (sections checked against the snapshots ``context``
    names).

    The result is what ``ExperimentConfig.model_validate`` gives for each point's full mapping (the unit tests
    compare the two), but each top-level value and each nested section (workload, measurement, ...) is validated
    once per distinct value or combination of the axes under it, by the model's own field schemas; per point only
    the model's cross-field (``after``) validators run. A point with an invalid value is validated whole for the
    exact error. The canonical JSON whose sha256 is ``config_hash()`` is assembled from cached pieces.
    """
    keys = [key for key, _ in axes]
    values = [list(v) for _, v in axes]
    start = with_value(base, "backend", backend)

    def point_of(idx: tuple[int, ...]) -> dict[str, Any]:
        point = {"backend": backend}
        point.update({key: values[i][idx[i]] for i, key in enumerate(keys)})
        return point

    def full_config(idx: tuple[int, ...]) -> dict[str, Any]:
        config = start
        for i, key in enumerate(keys):
            config = with_value(config, key, values[i][idx[i]])
        return config

    def section_entry(name: str, axes_of_section: list[int], idx: tuple[int, ...]) -> tuple[BaseModel, str] | None:
        config = {name: start.get(name)}
        for i in axes_of_section:
            config = with_value(config, keys[i], values[i][idx[i]])
        try:
            section = _SECTIONS[name].model_validate(config[name], context=context)
        except ValidationError:
            return None
        return section, f"{json.dumps(name)}:{canonical_json(section.model_dump(mode='json'))}"

    def top_entry(name: str, value: Any) -> tuple[Any, str] | None:
        if _TOP_LEVEL_VALIDATORS is None:
            return None
        try:
            valid = _TOP_LEVEL_VALIDATORS[name].validate_python(value)
        except ValidationError:
            return None
        dumped = ExperimentConfig.model_construct(**{name: valid}).model_dump(mode="json", include={name})[name]
        return valid, f"{json.dumps(name)}:{canonical_json(dumped)}"

    # Validated values and JSON pieces of the fields no axis sets; per axis, of each of its values.
    constant: dict[str, Any] = {}
    fragments: dict[str, str] = {}
    broken = False  # a field no axis sets is invalid (or the fast path is off): validate every point whole
    top_axes: list[tuple[str, int, list[Any]]] = []
    varying_sections: list[tuple[str, list[int], Callable[[tuple[int, ...]], Any], dict[Any, Any]]] = []
    for name in ExperimentConfig.model_fields:
        if name in _SECTIONS:
            axes_of_section = [i for i, key in enumerate(keys) if key.partition(".")[0] == name]
            if axes_of_section:
                varying_sections.append((name, axes_of_section, operator.itemgetter(*axes_of_section), {}))
                continue
            entry = section_entry(name, [], ())
        elif name in keys:
            i = keys.index(name)
            top_axes.append((name, i, [top_entry(name, value) or _INVALID for value in values[i]]))
            continue
        else:
            entry = top_entry(name, start[name])
        if entry is None:
            broken = True
        else:
            constant[name], fragments[name] = entry
    pieces_in_key_order = operator.itemgetter(*sorted(ExperimentConfig.model_fields))

    active_rules = _rules_for(rules, keys, start)
    for idx in itertools.product(*(range(len(v)) for v in values)):
        if active_rules:
            rule = _matching_rule(active_rules, values, idx, full_config)
            if rule is not None:
                found.skipped.append(SkippedPoint(point_of(idx), f"excluded by exclude[{rule}]"))
                continue
        point_values = dict(constant)
        valid = not broken
        for name, i, entries in top_axes:
            entry = entries[idx[i]]
            if entry is _INVALID:
                valid = False
                break
            point_values[name], fragments[name] = entry
        if valid:
            for name, axes_of_section, key_of, cache in varying_sections:
                cache_key = key_of(idx)
                entry = cache.get(cache_key, MISSING)
                if entry is MISSING:
                    entry = cache[cache_key] = section_entry(name, axes_of_section, idx)
                if entry is None:
                    valid = False
                    break
                point_values[name], fragments[name] = entry
        problem = _cross_field_problem(point_values) if valid else _INVALID
        if problem is _INVALID:
            whole = _validate_whole(full_config(idx), context)
            if isinstance(whole, str):
                found.skipped.append(SkippedPoint(point_of(idx), whole))
            else:
                found.add(
                    whole,
                    canonical_json(ExperimentConfig.model_construct(**whole).model_dump(mode="json")),
                    idx,
                    point_of,
                )
            continue
        if isinstance(problem, str):
            found.skipped.append(SkippedPoint(point_of(idx), problem))
            continue
        config = "{" + ",".join(pieces_in_key_order(fragments)) + "}"
        found.add(point_values, config, idx, point_of)


_Rule = tuple[int, list[tuple[int, Any]], list[tuple[str, Any]]]


def _rules_for(rules: list[tuple[int, dict[str, Any]]], keys: list[str], start: dict[str, Any]) -> list[_Rule]:
    """The exclude rules that can match a point of this product, each as (index, checks on one axis' value,
    checks on the point's full mapping); a rule whose fixed keys differ from the base is left out."""
    axis_of = {key: i for i, key in enumerate(keys)}
    active: list[_Rule] = []
    for index, rule in rules:
        on_axis, on_mapping, possible = [], [], True
        for key, expected in rule.items():
            if key in axis_of:
                on_axis.append((axis_of[key], expected))
            elif any(key.startswith(k + ".") or k.startswith(key + ".") for k in keys):
                on_mapping.append((key, expected))
            elif lookup(start, key) != expected:
                possible = False
                break
        if possible:
            active.append((index, on_axis, on_mapping))
    return active


def _matching_rule(
    rules: list[_Rule],
    values: list[list[Any]],
    idx: tuple[int, ...],
    full_config: Callable[[tuple[int, ...]], dict[str, Any]],
) -> int | None:
    for index, on_axis, on_mapping in rules:
        if all(values[i][idx[i]] == expected for i, expected in on_axis):
            config = full_config(idx) if on_mapping else {}
            if all(lookup(config, key) == expected for key, expected in on_mapping):
                return index
    return None
