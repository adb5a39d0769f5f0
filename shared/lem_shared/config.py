"""Experiment and campaign configuration: the YAML schema, validation with clear errors, and grid expansion.

A campaign's grid is expanded per backend (shared axes x that backend's axes, plus explicit ``include`` points,
minus ``exclude`` rules); a point that is not a valid experiment for its backend is skipped with its reason.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import operator
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import SchemaValidator

from lem_shared.bounds import INT64_MAX as INT64_MAX  # re-exported: the bounds of every integer field
from lem_shared.bounds import INT64_MIN as INT64_MIN
from lem_shared.bounds import FiniteJson, TooManyValues, check_size
from lem_shared.contracts import canonical_json, sha256_of
from lem_shared.model_presets import LLAMA_PRESETS, RANDOM_PREFIX, random_preset
from lem_shared.params.engine import EngineSection
from lem_shared.params.pytorch import PytorchOptions
from lem_shared.params.snapshots import SnapshotChoice, SnapshotError, choose_snapshot, validation_context
from lem_shared.params.trtllm import TrtllmOptions
from lem_shared.params.vllm import VllmOptions
from lem_shared.queues import Backend
from lem_shared.settings import get_settings
from lem_shared.suggest import did_you_mean

# Upper bounds a real user never reaches but a typo does (each is stated in its field's description).
MAX_SECONDS = 86_400  # any wait, gap or window: one day
MAX_PROMPTS = 1_000_000
MAX_TOKENS_PER_PROMPT = 1_048_576  # input or output length: 2^20 tokens, beyond any model's context today
# num_prompts x (input_len + output_len): the token ids the engine host holds for one workload (~36 bytes each in
# Python lists, so ~2.4 GB at the bound).
MAX_WORKLOAD_TOKENS = 67_108_864


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SyntheticWorkload(_Strict):
    """Prompts of random token ids with fixed input and (forced) output lengths."""

    kind: Literal["synthetic"] = "synthetic"
    num_prompts: int = Field(default=16, ge=1, le=MAX_PROMPTS, description=f"prompts, 1 to {MAX_PROMPTS:,}")
    input_len: int = Field(
        default=64, ge=1, le=MAX_TOKENS_PER_PROMPT, description=f"prompt tokens, 1 to {MAX_TOKENS_PER_PROMPT:,}"
    )
    output_len: int = Field(
        default=32,
        ge=1,
        le=MAX_TOKENS_PER_PROMPT,
        description=f"generated tokens (forced), 1 to {MAX_TOKENS_PER_PROMPT:,}",
    )
    seed: int = Field(
        default=0,
        ge=INT64_MIN,
        le=INT64_MAX,
        description=f"of the random token ids; an int64 ({INT64_MIN:,} to {INT64_MAX:,})",
    )


class MeasurementProtocol(_Strict):
    """How a run is measured (DESIGN §6): warm-up to convergence, a long enough window, idle baselines."""

    warmup_window: int = Field(
        default=5, ge=2, le=1000, description="k: the CV is taken over the last k warm-up latencies (2 to 1,000)"
    )
    warmup_cv: float = Field(
        default=0.05, gt=0, le=10, description="warm-up ends when that CV is below this (above 0, at most 10)"
    )
    warmup_min: int = Field(default=3, ge=0, le=10_000, description="at least this many warm-up batches (0 to 10,000)")
    warmup_max: int = Field(
        default=50, ge=1, le=10_000, description="at most this many; reaching it is recorded (1 to 10,000)"
    )
    min_window_s: float = Field(
        default=10.0,
        ge=0,
        le=MAX_SECONDS,
        description=f"the workload repeats until the window lasts this (0 to {MAX_SECONDS:,} s)",
    )
    idle_gap_s: float = Field(
        default=2.0,
        ge=0,
        le=MAX_SECONDS,
        description=f"idle just before and after the window (GPU only; 0 to {MAX_SECONDS:,} s)",
    )
    baseline_idle_s: float = Field(
        default=30.0,
        ge=0,
        le=MAX_SECONDS,
        description=f"idle before a campaign's first run on a GPU: the deep-idle baseline (0 to {MAX_SECONDS:,} s)",
    )
    phase_split: bool = Field(
        default=False,
        description="also measure a prefill-only window (one new token per prompt) after the full "
        "one: prefill and decode get time, energy, tokens/s, J/token and FLOPs apart (decode = full - prefill)",
    )
    profiler: Literal["off", "flops"] = Field(
        default="off",
        description="flops: one extra, unmeasured generate under torch's FLOP counter after the "
        "windows, stored beside the analytic FLOPs (pytorch only)",
    )

    @field_validator("profiler", mode="before")
    @classmethod
    def _bare_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `profiler: off` (the README's) as false

    @model_validator(mode="after")
    def _ordered(self) -> MeasurementProtocol:
        if self.warmup_min > self.warmup_max:
            raise ValueError(f"warmup_min ({self.warmup_min}) must be <= warmup_max ({self.warmup_max})")
        return self


class ExperimentConfig(_Strict):
    """One point of a campaign: everything that decides what a run measures."""

    backend: Backend = Backend.PYTORCH
    model: str = Field(default="random:llama-tiny", min_length=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(
        default=1,
        ge=1,
        le=MAX_PROMPTS,
        description=f"prompts per engine call, 1 to {MAX_PROMPTS:,} (and <= workload.num_prompts)",
    )
    workload: SyntheticWorkload = SyntheticWorkload()
    measurement: MeasurementProtocol = MeasurementProtocol()
    pytorch: PytorchOptions = PytorchOptions()
    vllm: VllmOptions = VllmOptions()
    trtllm: TrtllmOptions = TrtllmOptions()

    @field_validator("model")
    @classmethod
    def _known_random_preset(cls, model: str) -> str:
        if model.startswith(RANDOM_PREFIX) and model.removeprefix(RANDOM_PREFIX) not in LLAMA_PRESETS:
            allowed = ", ".join(RANDOM_PREFIX + name for name in LLAMA_PRESETS)
            raise ValueError(f"unknown random model preset; allowed: {allowed}, a hub id or a local folder")
        return model

    @model_validator(mode="after")
    def _possible(self) -> ExperimentConfig:
        for name in _SECTION_NAMES:
            if name != self.backend.value and not getattr(self, name).is_default:
                raise ValueError(f"the {name} section applies to backend {name} only (this is {self.backend.value})")
        getattr(self, self.backend.value).check(self)
        if self.measurement.profiler != "off" and self.backend != Backend.PYTORCH:
            raise ValueError(
                f"measurement.profiler: counts FLOPs with torch inside the pytorch backend only "
                f"(this is {self.backend.value}); set it to off"
            )
        if self.measurement.phase_split and self.workload.output_len < 2:
            raise ValueError(
                "measurement.phase_split: needs workload.output_len >= 2 (decode is the tokens after the first)"
            )
        tokens = self.workload.num_prompts * (self.workload.input_len + self.workload.output_len)
        if tokens > MAX_WORKLOAD_TOKENS:
            raise ValueError(
                f"workload.num_prompts x (workload.input_len + workload.output_len) = {tokens:,} tokens, over "
                f"{MAX_WORKLOAD_TOKENS:,} (the engine host holds them all); give fewer or shorter prompts"
            )
        if self.batch_size > self.workload.num_prompts:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be <= workload.num_prompts ({self.workload.num_prompts})"
            )
        preset = random_preset(self.model)
        if preset and self.workload.input_len + self.workload.output_len > preset["max_position_embeddings"]:
            raise ValueError(
                f"workload.input_len + workload.output_len must be <= {preset['max_position_embeddings']}, "
                f"the context length of {self.model}"
            )
        return self

    def config_hash(self) -> str:
        return sha256_of(self.model_dump(mode="json"))

    def section(self) -> EngineSection:
        """This experiment's backend section (``pytorch``, ``vllm`` or ``trtllm``)."""
        return getattr(self, self.backend.value)

    def engine_key(self) -> str:
        """Equal for two experiments that can share one loaded engine: same backend, model, dtype and the
        section's load-time arguments (model loading, engine construction, compile)."""
        return sha256_of(
            {
                "backend": self.backend.value,
                "model": self.model,
                "dtype": self.dtype,
                "load": self.section().load_arguments(),
            }
        )


_SECTION_NAMES = tuple(backend.value for backend in Backend)


class ThermalGap(_Strict):
    """Before each run, wait until the GPU is back within ``within_c`` of its idle temperature (from telemetry)."""

    within_c: float = Field(
        default=5.0,
        gt=0,
        le=100,
        description="degrees C above the GPU's idle temperature allowed (above 0, at most 100)",
    )
    max_wait_s: float = Field(
        default=300.0,
        ge=0,
        le=MAX_SECONDS,
        description=f"wait at most this long, then run (recorded; 0 to {MAX_SECONDS:,} s)",
    )


EngineVersion = Annotated[str, Field(pattern=r"^[0-9][A-Za-z0-9.+-]*$")]
EngineVersions = dict[Backend, EngineVersion]  # campaign.engine_versions; validated alone first, to pick snapshots


class CampaignConfig(_Strict):
    """A campaign file: a base experiment, grid axes (dotted keys) shared by every backend and per backend, extra
    points to include and rules to exclude, repeated in cycles."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str = ""
    cycles: int = Field(default=3, ge=1, le=1000, description="every experiment runs once per cycle (1 to 1,000)")
    structure: Literal["interleaved", "shuffled", "grouped"] = Field(
        default="interleaved",
        description="run order: interleaved (every experiment once per cycle), shuffled (each cycle in a seeded "
        "random order) or grouped (all cycles of one experiment, then the next)",
    )
    seed: int | None = Field(
        default=None,
        ge=INT64_MIN,
        le=INT64_MAX,
        description="seed of the shuffled order; "
        f"chosen and recorded if unset (an int64: {INT64_MIN:,} to {INT64_MAX:,})",
    )
    config_gap_s: float = Field(
        default=0.0,
        ge=0,
        le=MAX_SECONDS,
        description=f"pause on a GPU between two runs of one cycle (0 to {MAX_SECONDS:,} s)",
    )
    cycle_gap_s: float = Field(
        default=0.0,
        ge=0,
        le=MAX_SECONDS,
        description=f"pause on a GPU when a new cycle starts (0 to {MAX_SECONDS:,} s)",
    )
    thermal_gap: ThermalGap | None = None
    force_cold_start: bool = Field(
        default=False,
        description="a fresh engine process (model load) before every run; load time and energy "
        "are recorded separately",
    )
    engine_versions: EngineVersions = Field(
        default_factory=dict,
        description="per backend, the engine version its parameters are checked against "
        "(default: the version the live workers advertise, else the newest committed snapshot)",
    )
    experiment: ExperimentConfig = ExperimentConfig()
    grid: dict[str, list[FiniteJson]] = Field(default_factory=dict, description="axes shared by every backend")
    backends: dict[Backend, dict[str, list[FiniteJson]]] = Field(
        default_factory=dict,
        description="per backend, its own axes; the product of grid x these axes is taken "
        "once per backend named here (none: once, for the base experiment's backend)",
    )
    include: list[dict[str, FiniteJson]] = Field(
        default_factory=list, description="extra points (dotted key -> value, may set backend) on the base experiment"
    )
    exclude: list[dict[str, FiniteJson]] = Field(
        default_factory=list, description="rules (dotted key -> value): a grid point matching every key is dropped"
    )

    @field_validator("backends", mode="before")
    @classmethod
    def _no_axes_is_empty(cls, backends: Any) -> Any:
        """``vllm:`` with nothing under it means the backend with no axes of its own."""
        if isinstance(backends, dict):
            return {name: {} if axes is None else axes for name, axes in backends.items()}
        return backends

    def backends_used(self) -> list[Backend]:
        """The backends the campaign's experiments may have: those under ``backends`` (else the base
        experiment's) and those of ``include`` points."""
        used = list(self.backends) or [self.experiment.backend]
        used += [Backend(point["backend"]) for point in self.include if point.get("backend") in set(Backend)]
        return list(dict.fromkeys(used))


class ConfigError(Exception):
    """A campaign file that cannot run; ``problems`` are lines of the form ``field: what is allowed``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


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


def load_campaign(path: str | Path) -> tuple[CampaignConfig, list[ExperimentConfig]]:
    """Read, validate and expand a campaign file, or raise ConfigError naming every bad field. Grid points that
    are not valid experiments are left out; ``load_plan`` says which and why."""
    plan = load_plan(path)
    return plan.campaign, plan.experiments


def load_plan(path: str | Path, advertised: Mapping[str, Mapping[str, str]] | None = None) -> CampaignPlan:
    """Read and expand a campaign file into its experiments and skipped points, or raise ConfigError
    (``advertised``: see ``plan_campaign``)."""
    return plan_text(read_campaign_file(path), str(path), advertised)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_campaign_file(path: str | Path) -> str:
    """The text of a campaign file, or ConfigError with one line naming the path and the problem. It must be a
    regular file (a symlink to one is followed; a device, FIFO, socket or directory is refused without reading
    it, so nothing blocks or reads forever) of at most ``LEM_MAX_CAMPAIGN_FILE_BYTES``, in UTF-8. Every command
    that takes a campaign file (plan, validate, run, schedule add) reads it through here."""
    limit = get_settings().max_campaign_file_bytes
    try:
        _check_regular(path, os.stat(path).st_mode)
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: cannot be read (permission denied)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    try:
        info = os.fstat(fd)
        _check_regular(path, info.st_mode)
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(limit + 1 - size, 1 << 20))):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(
            [
                f"{path}: {max(size, info.st_size):,} bytes, over the limit of {limit:,}; a campaign "
                "file is a few KiB (raise LEM_MAX_CAMPAIGN_FILE_BYTES if it must be larger)"
            ]
        )
    return decode_campaign_text(b"".join(chunks), str(path))


def _check_regular(path: str | Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise ConfigError([f"{path}: not a regular file ({kind}); give a campaign YAML file"])


def decode_campaign_text(data: bytes, origin: str) -> str:
    """A campaign file's bytes as text, or ConfigError (one line) when they are not UTF-8 text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_like_utf16(data):
        raise ConfigError([f"{origin}: not UTF-8 text (it looks like UTF-16); save it as UTF-8"])
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError([f"{origin}: not text (a NUL byte at offset {nul}); give a campaign YAML file"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                f"{origin}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column "
                f"{column}: Latin-1 or another encoding?); save it as UTF-8"
            ]
        ) from None


def _looks_like_utf16(data: bytes) -> bool:
    """UTF-16 without a byte order mark: mostly ASCII text with a NUL beside nearly every character."""
    sample = data[:4096]
    half = len(sample) // 2
    return half >= 2 and max(sample[0::2].count(0), sample[1::2].count(0)) >= 0.8 * half


def plan_text(text: str, origin: str, advertised: Mapping[str, Mapping[str, str]] | None = None) -> CampaignPlan:
    """Validate and expand a campaign file's text (``origin`` names it in errors), or raise ConfigError
    (``advertised``: see ``plan_campaign``)."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(exc.problem or exc).split())
        raise ConfigError([f"{origin}: not valid YAML{where}: {problem}"]) from None
    except yaml.YAMLError as exc:  # a character YAML does not allow, ...
        raise ConfigError([f"{origin}: not valid YAML: {' '.join(str(exc).split())}"]) from None
    except RecursionError:
        raise ConfigError([f"{origin}: not valid YAML: nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{origin}: must be a mapping of keys (name, cycles, experiment, grid)"])
    return plan_campaign(raw, advertised)


# a base chosen at import time (PyYAML built without libyaml has no CSafeLoader), which mypy cannot type
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe subset of YAML (the C parser when PyYAML has it) that refuses a key given twice in one mapping
    (PyYAML keeps the last one silently). Keys merged in with ``<<`` may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first_line[key]}); give each key once",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_campaign(raw: dict[str, Any]) -> tuple[CampaignConfig, list[ExperimentConfig]]:
    plan = plan_campaign(raw)
    return plan.campaign, plan.experiments


def plan_campaign(raw: dict[str, Any], advertised: Mapping[str, Mapping[str, str]] | None = None) -> CampaignPlan:
    """Validate a campaign mapping and expand it, or raise ConfigError naming every bad field.

    Each backend's sections are checked against one parameter snapshot (``choose_snapshot``): the version the
    file pins under ``engine_versions``, else the one the live workers advertise (``advertised``: {backend:
    {worker: engine version}}), else the newest committed. A pinned version no snapshot can check is a
    ConfigError; so are live workers no snapshot can check, for a backend the campaign uses."""
    try:
        check_size(raw)
    except TooManyValues as exc:
        raise ConfigError([f"campaign: {exc}"]) from None
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


def expand_grid(campaign: CampaignConfig) -> list[ExperimentConfig]:
    """The experiments of a campaign, in order (``expand_campaign`` also gives the skipped points)."""
    return expand_campaign(campaign).experiments


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
            if not _is_field(ExperimentConfig, key.split("."))
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
    paths = _field_paths(ExperimentConfig)
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
_MISSING = object()
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
    start = _with(base, "backend", backend)

    def point_of(idx: tuple[int, ...]) -> dict[str, Any]:
        point = {"backend": backend}
        point.update({key: values[i][idx[i]] for i, key in enumerate(keys)})
        return point

    def full_config(idx: tuple[int, ...]) -> dict[str, Any]:
        config = start
        for i, key in enumerate(keys):
            config = _with(config, key, values[i][idx[i]])
        return config

    def section_entry(name: str, axes_of_section: list[int], idx: tuple[int, ...]) -> tuple[BaseModel, str] | None:
        config = {name: start.get(name)}
        for i in axes_of_section:
            config = _with(config, keys[i], values[i][idx[i]])
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
                entry = cache.get(cache_key, _MISSING)
                if entry is _MISSING:
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
            elif _lookup(start, key) != expected:
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
            if all(_lookup(config, key) == expected for key, expected in on_mapping):
                return index
    return None


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config mapping as dotted keys (``workload.input_len``); an empty mapping has no keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _MISSING
        config = config[part]
    return config


def _with(config: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``config`` with the dotted key set to ``value``."""
    head, _, rest = dotted.partition(".")
    out = dict(config)
    if rest:
        inner = out.get(head)
        out[head] = _with(dict(inner) if isinstance(inner, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field annotated ``Model`` or ``Model | None``."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: Any) -> bool:
    return any(getattr(a, "__origin__", a) is dict for a in (annotation, *getattr(annotation, "__args__", ())))


def _is_field(model: type[BaseModel], path: list[str]) -> bool:
    """Whether a dotted key names a field; any key below a mapping field (such as ``extra``) counts."""
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    sub = _model_of(field.annotation)
    if sub is not None:
        return _is_field(sub, path[1:])
    return _is_mapping(field.annotation)


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is not None:
            paths += _field_paths(sub, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = _model_of(field.annotation) if field else None
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
