"""Experiment and campaign configuration: the YAML schema, validation with clear errors, and grid expansion."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lem_shared.contracts import sha256_of
from lem_shared.model_presets import LLAMA_PRESETS, RANDOM_PREFIX, random_preset
from lem_shared.queues import Backend


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticWorkload(_Strict):
    """Prompts of random token ids with fixed input and (forced) output lengths."""

    kind: Literal["synthetic"] = "synthetic"
    num_prompts: int = Field(default=16, ge=1)
    input_len: int = Field(default=64, ge=1)
    output_len: int = Field(default=32, ge=1)
    seed: int = 0


class MeasurementProtocol(_Strict):
    """How a run is measured (DESIGN §6): warm-up to convergence, a long enough window, idle baselines."""

    warmup_window: int = Field(default=5, ge=2, description="k: the CV is taken over the last k warm-up latencies")
    warmup_cv: float = Field(default=0.05, gt=0, description="warm-up ends when that CV is below this")
    warmup_min: int = Field(default=3, ge=0, description="at least this many warm-up batches")
    warmup_max: int = Field(default=50, ge=1, description="at most this many; reaching it is recorded")
    min_window_s: float = Field(default=10.0, ge=0, description="the workload repeats until the window lasts this")
    idle_gap_s: float = Field(default=2.0, ge=0, description="idle just before and after the window (GPU only)")
    baseline_idle_s: float = Field(
        default=30.0, ge=0, description="idle before a campaign's first run on a GPU: the deep-idle baseline"
    )

    @model_validator(mode="after")
    def _ordered(self) -> MeasurementProtocol:
        if self.warmup_min > self.warmup_max:
            raise ValueError(f"warmup_min ({self.warmup_min}) must be <= warmup_max ({self.warmup_max})")
        return self


class PytorchOptions(_Strict):
    """Options only the pytorch (transformers) backend reads."""

    cache_implementation: Literal["dynamic", "static"] = Field(
        default="dynamic",
        description="KV cache of generate; 'static' on CUDA makes transformers compile the decoding step "
        "(torch.compile, CUDA graphs): the first call of each batch shape compiles, in warm-up",
    )


class ExperimentConfig(_Strict):
    """One point of a campaign: everything that decides what a run measures."""

    backend: Backend = Backend.PYTORCH
    model: str = Field(default="random:llama-tiny", min_length=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(default=1, ge=1)
    workload: SyntheticWorkload = SyntheticWorkload()
    measurement: MeasurementProtocol = MeasurementProtocol()
    pytorch: PytorchOptions = PytorchOptions()

    @field_validator("model")
    @classmethod
    def _known_random_preset(cls, model: str) -> str:
        if model.startswith(RANDOM_PREFIX) and model.removeprefix(RANDOM_PREFIX) not in LLAMA_PRESETS:
            allowed = ", ".join(RANDOM_PREFIX + name for name in LLAMA_PRESETS)
            raise ValueError(f"unknown random model preset; allowed: {allowed}, a hub id or a local folder")
        return model

    @model_validator(mode="after")
    def _possible(self) -> ExperimentConfig:
        if self.backend != Backend.PYTORCH and self.pytorch != PytorchOptions():
            raise ValueError(f"the pytorch section applies to backend pytorch only (this is {self.backend.value})")
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


class ThermalGap(_Strict):
    """Before each run, wait until the GPU is back within ``within_c`` of its idle temperature (from telemetry)."""

    within_c: float = Field(default=5.0, gt=0, description="degrees C above the GPU's idle temperature allowed")
    max_wait_s: float = Field(default=300.0, ge=0, description="wait at most this long, then run (recorded)")


class CampaignConfig(_Strict):
    """A campaign file: a base experiment, a grid of overrides (dotted keys), repeated in cycles."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str = ""
    cycles: int = Field(default=3, ge=1, le=1000)
    structure: Literal["interleaved", "shuffled", "grouped"] = Field(
        default="interleaved",
        description="run order: interleaved (every experiment once per cycle), shuffled (each cycle in a seeded "
        "random order) or grouped (all cycles of one experiment, then the next)",
    )
    seed: int | None = Field(default=None, description="seed of the shuffled order; chosen and recorded if unset")
    config_gap_s: float = Field(default=0.0, ge=0, description="pause on a GPU between two runs of one cycle")
    cycle_gap_s: float = Field(default=0.0, ge=0, description="pause on a GPU when a new cycle starts")
    thermal_gap: ThermalGap | None = None
    force_cold_start: bool = Field(
        default=False, description="a fresh engine process (model load) before every run; load time and energy "
        "are recorded separately"
    )
    experiment: ExperimentConfig = ExperimentConfig()
    grid: dict[str, list[Any]] = Field(default_factory=dict)


class ConfigError(Exception):
    """A campaign file that cannot run; ``problems`` are lines of the form ``field: what is allowed``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def load_campaign(path: str | Path) -> tuple[CampaignConfig, list[ExperimentConfig]]:
    """Read, validate and expand a campaign file, or raise ConfigError naming every bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: must be a mapping of keys (name, cycles, experiment, grid)"])
    return parse_campaign(raw)


def parse_campaign(raw: dict[str, Any]) -> tuple[CampaignConfig, list[ExperimentConfig]]:
    try:
        campaign = CampaignConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, CampaignConfig)) from None
    return campaign, expand_grid(campaign)


def expand_grid(campaign: CampaignConfig) -> list[ExperimentConfig]:
    """The product of the grid axes over the base experiment, in file order; duplicates collapse by hash."""
    base = campaign.experiment.model_dump(mode="json")
    problems: list[str] = []
    for key, values in campaign.grid.items():
        if not _is_field(ExperimentConfig, key.split(".")):
            problems.append(f"grid.{key}: unknown parameter; allowed: {', '.join(_field_paths(ExperimentConfig))}")
            continue
        if not values:
            problems.append(f"grid.{key}: must list at least one value")
            continue
        for index, value in enumerate(values):
            try:
                ExperimentConfig.model_validate(_with(base, key, value))
            except ValidationError as exc:
                for line in describe_errors(exc, ExperimentConfig):
                    field, _, reason = line.partition(": ")
                    if field == key:
                        problems.append(f"grid.{key}[{index}]: {reason}")
    if problems:
        raise ConfigError(problems)

    experiments: dict[str, ExperimentConfig] = {}
    keys = list(campaign.grid)
    for point in itertools.product(*(campaign.grid[k] for k in keys)):
        config = dict(base)
        for key, value in zip(keys, point, strict=True):
            config = _with(config, key, value)
        try:
            experiment = ExperimentConfig.model_validate(config)
        except ValidationError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in zip(keys, point, strict=True))
            problems += [f"grid point ({where}): {line}" for line in describe_errors(exc, ExperimentConfig)]
            continue
        experiments.setdefault(experiment.config_hash(), experiment)
    if problems:
        raise ConfigError(problems)
    return list(experiments.values())


def _with(config: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``config`` with the dotted key set to ``value``."""
    head, _, rest = dotted.partition(".")
    out = dict(config)
    out[head] = _with(dict(out.get(head) or {}), rest, value) if rest else value
    return out


def _is_field(model: type[BaseModel], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    sub = field.annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _is_field(sub, path[1:])


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            paths += _field_paths(sub, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = field.annotation if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return list(model.model_fields)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_errors(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """Pydantic errors as ``field: what is allowed`` lines a user can act on."""
    lines = []
    for err in exc.errors():
        loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx", {})
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            reason = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op, bound = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
                         "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
            reason = f"must be {op} {ctx[bound]}"
        elif kind in ("literal_error", "enum"):
            reason = f"must be one of {ctx['expected']}"
        elif kind == "missing":
            reason = "is required"
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            reason = "must be an integer"
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
