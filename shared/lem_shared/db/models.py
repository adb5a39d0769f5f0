"""SQLAlchemy 2 models. Alembic migrations in ``migrations/`` must match them (``alembic check``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from lem_shared.wire.messages import sha256_of

JSONType = JSON().with_variant(JSONB(), "postgresql")
# The Alembic head these models match (a test checks it); every run records RUN_SCHEMA_VERSION, with the tool's
# version (a text, not a number: a CSV export must not read it as 4).
SCHEMA_VERSION = "0012"
RUN_SCHEMA_VERSION = f"alembic {SCHEMA_VERSION}"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, datetime: DateTime(timezone=True)}


class CampaignStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    MEASURED = "measured"  # window closed, energy not yet attached by the control worker
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = (RunStatus.DONE, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.CANCELLED)
# Sent to a worker and not yet back: what occupies a worker, or soon will.
IN_FLIGHT_RUN_STATUSES = (RunStatus.DISPATCHED, RunStatus.RUNNING)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    # The seed of the run order (structure: shuffled), chosen at creation when the file gives none.
    seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.RUNNING)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    # "lem" for campaigns this tool ran, "imported" for results read from the earlier tool's files
    source: Mapped[str] = mapped_column(String(16), default="lem", server_default="lem")
    imported_from: Mapped[str | None] = mapped_column(Text)

    experiments: Mapped[list[Experiment]] = relationship(back_populates="campaign", order_by="Experiment.index")


class Experiment(Base):
    """The manifest: one row per grid point of a campaign."""

    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("campaign_id", "config_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    backend: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(64))

    campaign: Mapped[Campaign] = relationship(back_populates="experiments")
    runs: Mapped[list[Run]] = relationship(back_populates="experiment", order_by="Run.cycle")


class Environment(Base):
    """A snapshot of the software and hardware a run saw; identical snapshots share a row by hash."""

    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    @classmethod
    def id_for(cls, s: Session, snapshot: dict[str, Any]) -> int:
        """The id of the row holding ``snapshot`` (by its ``hash``), inserted when the hash is new: what a worker
        records for each run and ``lem results import`` for each imported one."""
        # The snapshot's own hash leaves out volatile fields, so runs in the same environment share a row.
        digest = snapshot.get("hash") or sha256_of(snapshot)
        existing = s.scalar(select(cls.id).where(cls.hash == digest))
        if existing is not None:
            return existing
        try:
            with s.begin_nested():
                row = cls(hash=digest, data=snapshot)
                s.add(row)
            return row.id
        except IntegrityError:  # another process stored the same environment a moment ago
            return s.execute(select(cls.id).where(cls.hash == digest)).scalar_one()


class Run(Base):
    """One experiment measured once (one cycle). ``run_key`` is also the Celery task id."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_key: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    cycle: Mapped[int]
    # Dispatch order within the campaign (its structure: interleaved, shuffled or grouped).
    position: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(32))
    gpu_uuid: Mapped[str | None] = mapped_column(String(64))
    # Every GPU the run used (a tensor- or pipeline-parallel run has several; gpu_uuid is the first).
    gpu_uuids: Mapped[list[str] | None] = mapped_column(JSONType)
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id"))
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The worker host's clock minus the database's, measured at the claim and at the run's end (seconds): the
    # run's times are on that clock; the finaliser compares it with the offset of the GPU's telemetry host.
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    clock_offset_end_s: Mapped[float | None] = mapped_column(Float)
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    # Spans in Unix seconds, [start, end]: deep_idle, idle_before, idle_after, model_load (a cold start); and
    # the pause before the run on its GPU: gap {kind, seconds, thermal: {...}}.
    phases: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    # The Alembic revision and the tool version the run was recorded under (SCHEMA_VERSION, TOOL_VERSION)
    schema_version: Mapped[str | None] = mapped_column(String(16))
    tool_version: Mapped[str | None] = mapped_column(String(32))
    # Imported runs: the source file and the fields of it that have no column here, as they were
    imported: Mapped[dict[str, Any] | None]

    experiment: Mapped[Experiment] = relationship(back_populates="runs")
    metrics: Mapped[RunMetrics | None] = relationship(back_populates="run", uselist=False)
    # Read-only: what run_records loads with the run (the rows are written through their own tables).
    environment: Mapped[Environment | None] = relationship(viewonly=True)
    batches: Mapped[list[BatchTimingRow]] = relationship(viewonly=True, order_by="BatchTimingRow.batch_index")
    requests: Mapped[list[RequestTimingRow]] = relationship(viewonly=True, order_by="RequestTimingRow.request_index")


class RunMetrics(Base):
    """What a run measured. Energy is null with ``energy_note`` saying why when it could not be measured."""

    __tablename__ = "run_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    requests: Mapped[int]
    input_tokens: Mapped[int]
    output_tokens: Mapped[int]
    duration_s: Mapped[float]
    tokens_per_s: Mapped[float]
    requests_per_s: Mapped[float]
    # None only for imported results that recorded no per-request latencies
    latency_mean_s: Mapped[float | None]
    latency_p50_s: Mapped[float | None]
    latency_p95_s: Mapped[float | None]
    ttft_mean_s: Mapped[float | None]
    # The engine's KV-cache usage (fraction of its blocks) over the window's batches, and requests it preempted;
    # None where the engine does not report them (only vLLM does).
    kv_cache_usage_peak: Mapped[float | None] = mapped_column(Float)
    kv_cache_usage_mean: Mapped[float | None] = mapped_column(Float)
    preemptions: Mapped[int | None]
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_memory_kind: Mapped[str] = mapped_column(String(32))
    model_load_s: Mapped[float]
    model_reused: Mapped[bool]
    # Energy of the model load (cold starts: force_cold_start), from telemetry over the load span.
    model_load_energy_j: Mapped[float | None] = mapped_column(Float)
    warmup_iterations: Mapped[int]
    warmup_converged: Mapped[bool]
    warmup_final_cv: Mapped[float | None]
    passes: Mapped[int]
    # Raw energy of the window: the counter difference (energy_source says which figure it is).
    energy_j: Mapped[float | None] = mapped_column(Float)
    energy_power_integral_j: Mapped[float | None] = mapped_column(Float)
    energy_source: Mapped[str | None] = mapped_column(String(32))
    energy_note: Mapped[str | None] = mapped_column(Text)
    # Baseline-adjusted: energy_j - baseline_power_w x window duration (never over the whole run).
    energy_adjusted_j: Mapped[float | None] = mapped_column(Float)
    baseline_power_w: Mapped[float | None] = mapped_column(Float)
    baseline_method: Mapped[str | None] = mapped_column(String(32))
    deep_idle_power_w: Mapped[float | None] = mapped_column(Float)
    idle_before_w: Mapped[float | None] = mapped_column(Float)
    idle_after_w: Mapped[float | None] = mapped_column(Float)
    mean_power_w: Mapped[float | None] = mapped_column(Float)
    peak_power_w: Mapped[float | None] = mapped_column(Float)
    max_temperature_c: Mapped[float | None] = mapped_column(Float)
    j_per_token: Mapped[float | None] = mapped_column(Float)
    j_per_request: Mapped[float | None] = mapped_column(Float)
    tokens_per_j: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))  # valid | warning | invalid
    # The whole machine: GPU energy summed over the run's GPUs, CPU package and DRAM energy from RAPL where the
    # host exposes it (energy_host_note says why not), their total, and grams CO2e from the campaign's carbon.
    energy_gpu_j: Mapped[float | None] = mapped_column(Float)
    energy_cpu_j: Mapped[float | None] = mapped_column(Float)
    energy_dram_j: Mapped[float | None] = mapped_column(Float)
    energy_total_j: Mapped[float | None] = mapped_column(Float)
    energy_host_note: Mapped[str | None] = mapped_column(Text)
    carbon_g: Mapped[float | None] = mapped_column(Float)
    carbon_source: Mapped[str | None] = mapped_column(Text)
    # Serving runs (workload.mode serving): per-request latency figures, goodput, the steady-state window (seconds
    # after the window's start, found from the engine's occupancy) and its energy, and per-request energy.
    tpot_mean_s: Mapped[float | None] = mapped_column(Float)
    tpot_p50_s: Mapped[float | None] = mapped_column(Float)
    tpot_p90_s: Mapped[float | None] = mapped_column(Float)
    tpot_p99_s: Mapped[float | None] = mapped_column(Float)
    goodput_rps: Mapped[float | None] = mapped_column(Float)
    slo_attainment: Mapped[float | None] = mapped_column(Float)
    steady_start_s: Mapped[float | None] = mapped_column(Float)
    steady_end_s: Mapped[float | None] = mapped_column(Float)
    steady_level: Mapped[int | None] = mapped_column(Integer)
    steady_method: Mapped[str | None] = mapped_column(Text)
    steady_energy_j: Mapped[float | None] = mapped_column(Float)
    steady_j_per_token: Mapped[float | None] = mapped_column(Float)
    steady_tokens_per_j: Mapped[float | None] = mapped_column(Float)
    steady_j_per_request: Mapped[float | None] = mapped_column(Float)
    request_energy_mean_j: Mapped[float | None] = mapped_column(Float)
    request_energy_p50_j: Mapped[float | None] = mapped_column(Float)
    request_energy_p90_j: Mapped[float | None] = mapped_column(Float)
    request_energy_p99_j: Mapped[float | None] = mapped_column(Float)
    # The whole window analysis: reason shares, flags, clocks, coverage, and every check with its message.
    analysis: Mapped[dict[str, Any] | None]

    run: Mapped[Run] = relationship(back_populates="metrics")


class BatchTimingRow(Base):
    """Per-batch timings inside the measurement window (static batching: every request of a batch shares them)."""

    __tablename__ = "batch_timings"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    batch_index: Mapped[int]
    batch_size: Mapped[int]
    input_tokens: Mapped[int]
    output_tokens: Mapped[int]
    latency_s: Mapped[float]
    ttft_s: Mapped[float | None]
    # Each request's own time to first token, where the engine reports it (vLLM's RequestOutput.metrics)
    request_ttfts_s: Mapped[list[float] | None] = mapped_column(JSONType)
    kv_cache_usage_peak: Mapped[float | None] = mapped_column(Float)
    kv_cache_usage_mean: Mapped[float | None] = mapped_column(Float)
    preemptions: Mapped[int | None]


class RequestTimingRow(Base):
    """One request of a serving run: when it arrived, got its first token and finished (Unix seconds), its
    tokens, every token's time, and the energy the finaliser attributed to it (its token share of each step)."""

    __tablename__ = "request_timings"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    request_index: Mapped[int]
    arrival: Mapped[float] = mapped_column(Float)
    first_token: Mapped[float | None] = mapped_column(Float)
    finish: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int]
    output_tokens: Mapped[int]
    token_times: Mapped[list[float]] = mapped_column(JSONType)
    energy_j: Mapped[float | None] = mapped_column(Float)


class GpuSample(Base):
    """One NVML reading of one GPU, written by the telemetry daemon."""

    __tablename__ = "gpu_samples"
    __table_args__ = (Index("ix_gpu_samples_uuid_time", "gpu_uuid", "time"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    gpu_uuid: Mapped[str] = mapped_column(String(64))
    gpu_index: Mapped[int]
    time: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))  # "nvml", or "nvml-replay" for the recorded-trace stand-in
    power_w: Mapped[float | None]
    energy_mj: Mapped[int | None] = mapped_column(BigInteger)
    temperature_c: Mapped[float | None]
    sm_clock_mhz: Mapped[int | None]
    mem_clock_mhz: Mapped[int | None]
    clock_event_reasons: Mapped[int | None] = mapped_column(BigInteger)
    memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    utilization_gpu: Mapped[int | None]
    utilization_memory: Mapped[int | None]
    # power_w is nvmlDeviceGetPowerUsage (a ~1 s average on Ampere and newer); these are the instantaneous
    # field-values readings of the GPU, its memory and the module, where the GPU has them (migration 0008).
    power_instant_w: Mapped[float | None]
    power_memory_w: Mapped[float | None]
    power_module_w: Mapped[float | None]


class HostSample(Base):
    """Host CPU and memory, sampled by telemetry on every host (the only figures on a host without NVML)."""

    __tablename__ = "host_samples"
    __table_args__ = (Index("ix_host_samples_host_time", "host", "time"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    time: Mapped[datetime]
    cpu_percent: Mapped[float]
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_total_bytes: Mapped[int] = mapped_column(BigInteger)


class HostEnergySample(Base):
    """One RAPL reading of one host's energy domain (``package-0``, ``package-0/dram``), written by telemetry: the
    cumulative energy in joules with counter wraparound bridged; ``reset`` marks a reading after which the counter
    could not be bridged (the difference across it is unknown)."""

    __tablename__ = "host_energy_samples"
    __table_args__ = (Index("ix_host_energy_samples_host_time", "host", "time"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    time: Mapped[datetime]
    domain: Mapped[str] = mapped_column(String(64))
    energy_j: Mapped[float] = mapped_column(Float)
    reset: Mapped[bool] = mapped_column(default=False)


class Beacon(Base):
    """A heartbeat or flag (``lem_shared.wire.heartbeat``) when the broker is not Redis: a JSON value that counts
    until ``expires_at`` (Unix seconds on the database's clock, so hosts with skewed clocks agree)."""

    __tablename__ = "beacons"
    __table_args__ = (Index("ix_beacons_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[float] = mapped_column(Float)


class ClockOffset(Base):
    """A host's clock minus the database's, as its telemetry daemon measured it (``lem_shared.db.clock``):
    ``measured_at`` in Unix seconds on the database's clock, the offset good to half ``rtt_s``."""

    __tablename__ = "clock_offsets"
    __table_args__ = (Index("ix_clock_offsets_host_measured_at", "host", "measured_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    measured_at: Mapped[float] = mapped_column(Float)
    offset_s: Mapped[float] = mapped_column(Float)
    rtt_s: Mapped[float] = mapped_column(Float)


class FiringOutcome(StrEnum):
    CREATED = "created"  # a campaign was created and nothing else ran on its backends
    QUEUED = "queued"  # a campaign was created behind one still running on its backends
    SKIPPED = "skipped"  # overlap skip: nothing created
    MISSED = "missed"  # due while no beat ran and beyond the schedule's catch-up: nothing created
    FAILED = "failed"  # the stored campaign no longer validates: nothing created, the reason in detail


class Schedule(Base):
    """A campaign to run on a schedule (celery beat with ``lem_planner.beat``). The campaign file's text is stored
    as it was at ``lem schedule add``, so a later edit of the file does not change what the schedule runs."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))  # the campaign's name
    source_path: Mapped[str] = mapped_column(Text)  # where the file was read from (shown, never read again)
    campaign_text: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64))  # sha256 of campaign_text
    kind: Mapped[str] = mapped_column(String(8))  # cron | every | at
    cron: Mapped[str | None] = mapped_column(String(200))
    every_s: Mapped[float | None] = mapped_column(Float)
    timezone: Mapped[str] = mapped_column(String(64))
    # The first due time (--at, or created + --every); every-schedules fire on start_at + k * every_s.
    start_at: Mapped[datetime | None]
    until_at: Mapped[datetime | None]
    times: Mapped[int | None]
    overlap: Mapped[str] = mapped_column(String(8))  # a lem_planner.schedules.ScheduleOverlap
    catch_up: Mapped[int]
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # The next due time; null once the schedule has no more (--times reached, past --until, a done --at).
    next_due_at: Mapped[datetime | None] = mapped_column(index=True)
    # Due times dealt with so far (fired, skipped, failed or missed); --times bounds it.
    occurrences: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    firings: Mapped[list[ScheduleFiring]] = relationship(
        back_populates="schedule", order_by="ScheduleFiring.due_at", cascade="all, delete-orphan", passive_deletes=True
    )


class ScheduleFiring(Base):
    """One due time of a schedule, recorded once (unique with the schedule), in the transaction that created its
    campaign, so a beat restart can neither repeat nor lose it."""

    __tablename__ = "schedule_firings"
    __table_args__ = (UniqueConstraint("schedule_id", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    due_at: Mapped[datetime]
    fired_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    overlap: Mapped[str] = mapped_column(String(8))  # the policy in force at this firing
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"), index=True)
    # How many due times this row stands for (a run of missed ones is one row: due_at is the first of them).
    occurrences: Mapped[int] = mapped_column(default=1)
    detail: Mapped[str | None] = mapped_column(Text)

    schedule: Mapped[Schedule] = relationship(back_populates="firings")
