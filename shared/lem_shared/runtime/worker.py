"""The Celery side of every worker: claim a run atomically, pace the GPU, measure the run in the engine host,
record it, and ask for the next one at once.

A worker service is this runtime plus one engine adapter: ``make_worker("pytorch", "pkg.adapter:Class")``.
It publishes a heartbeat in Redis (the scheduler sends it runs only while it is alive and free, and re-queues
its run if it vanishes; the planner checks parameters against the snapshot of the engine version it advertises)
and watches for its campaign's cancellation while it measures.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from pydantic import ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lem_shared import TOOL_VERSION
from lem_shared.celery_app import make_celery
from lem_shared.contracts import FinaliseRequest, Measurement, RunRequest, sha256_of
from lem_shared.db.models import RUN_SCHEMA_VERSION, BatchTimingRow, Environment, GpuSample, Run, RunMetrics, RunStatus
from lem_shared.db.session import session_scope
from lem_shared.environment import package_versions
from lem_shared.heartbeat import WORKER_KEY_PREFIX, gpu_key, publish_worker_beat
from lem_shared.metrics import run_metrics
from lem_shared.params.snapshots import ENGINE_PACKAGES
from lem_shared.queues import FINALISE_TASK, RUN_TASK, Backend, QueueName, queue_for
from lem_shared.runtime.engine_host import EngineFailure, EngineHost
from lem_shared.scheduling import advance, cancel_requested, deep_idle_span, redis_client
from lem_shared.settings import get_settings

log = logging.getLogger(__name__)


def claim_run(run_key: str, worker: str, host: str) -> int | None:
    """Mark the run as ours in one conditional UPDATE; None when it is already running or finished."""
    with session_scope() as s:
        return s.execute(
            update(Run)
            .where(Run.run_key == run_key, Run.status.in_([RunStatus.PENDING, RunStatus.DISPATCHED]))
            .values(
                status=RunStatus.RUNNING,
                attempts=Run.attempts + 1,
                worker=worker,
                host=host,
                started_at=datetime.now(UTC),
                schema_version=RUN_SCHEMA_VERSION,
                tool_version=TOOL_VERSION,
            )
            .returning(Run.id)
        ).scalar_one_or_none()


def _environment_id(s: Session, data: dict[str, Any]) -> int:
    # The snapshot's own hash leaves out volatile fields, so runs in the same environment share a row.
    digest = data.get("hash") or sha256_of(data)
    existing = s.scalar(select(Environment.id).where(Environment.hash == digest))
    if existing is not None:
        return existing
    try:
        with s.begin_nested():
            row = Environment(hash=digest, data=data)
            s.add(row)
        return row.id
    except IntegrityError:  # another worker stored the same environment a moment ago
        return s.execute(select(Environment.id).where(Environment.hash == digest)).scalar_one()


def _span(span: tuple[float, float] | None) -> list[float] | None:
    return list(span) if span else None


def record_measurement(run_id: int, m: Measurement, pause: dict[str, Any] | None = None) -> None:
    phases = {"deep_idle": _span(m.deep_idle), "idle_before": _span(m.idle_before),
              "idle_after": _span(m.idle_after), "model_load": _span(m.model_load)}
    if pause:
        phases["gap"] = pause
    if m.prefill is not None:  # phase split: the prefill-only window, summed (the finaliser needs its energy)
        p = m.prefill
        phases["prefill"] = {"window": [p.window_start, p.window_end], "idle_before": _span(p.idle_before),
                             "idle_after": _span(p.idle_after), "passes": p.passes,
                             "warmup_iterations": p.warmup_iterations,
                             "prompts": sum(b.batch_size for b in p.batches),
                             "latency_s": [b.latency_s for b in p.batches]}
    if m.flops_counted is not None:
        phases["flops_counted"] = m.flops_counted
    if m.model_shape is not None:
        phases["model_shape"] = m.model_shape
    with session_scope() as s:
        s.execute(insert(RunMetrics).values(run_id=run_id, **run_metrics(m)))
        s.execute(insert(BatchTimingRow), [{"run_id": run_id, **b.model_dump()} for b in m.batches])
        s.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                status=RunStatus.MEASURED,
                device=m.device,
                gpu_uuid=m.gpu_uuid,
                environment_id=_environment_id(s, m.environment),
                window_start=datetime.fromtimestamp(m.window_start, UTC),
                window_end=datetime.fromtimestamp(m.window_end, UTC),
                phases=phases,
                finished_at=datetime.now(UTC),
            )
        )


def record_end(run_id: int, status: RunStatus, error: str) -> None:
    with session_scope() as s:
        s.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(status=status, error=error, finished_at=datetime.now(UTC))
        )


@dataclass
class GpuState:
    """What one worker remembers about its GPU between runs (one worker per GPU)."""

    baselined: set[int] = field(default_factory=set)  # campaigns whose deep idle this GPU has measured
    last: tuple[int, int] | None = None  # (campaign, cycle) of the previous run
    gpu_uuid: str | None = None


def _idle_temperature(campaign_id: int, gpu_uuid: str) -> float | None:
    """The GPU's idle temperature: the mean over its deep idle in this campaign, else the lowest of the last
    15 minutes of telemetry."""
    deep = deep_idle_span(campaign_id, gpu_uuid)
    with session_scope() as s:
        temps = GpuSample.temperature_c
        if deep:
            start, end = (datetime.fromtimestamp(t, UTC) for t in deep)
            idle = s.scalar(select(func.avg(temps)).where(GpuSample.gpu_uuid == gpu_uuid,
                                                          GpuSample.time.between(start, end)))
            if idle is not None:
                return float(idle)
        since = datetime.now(UTC) - timedelta(minutes=15)
        low = s.scalar(select(func.min(temps)).where(GpuSample.gpu_uuid == gpu_uuid, GpuSample.time >= since))
    return float(low) if low is not None else None


def _temperature_now(connection: redis.Redis, gpu_uuid: str) -> float | None:
    value = connection.hget(gpu_key(gpu_uuid), "temperature_c")
    return float(value) if value is not None else None


def pace(request: RunRequest, state: GpuState, connection: redis.Redis | None, stop: threading.Event) -> dict:
    """Pause this GPU before the run: the configured gap (between configs, or a longer one when a new cycle
    starts), then the thermal gap; other GPUs are never held up. Returns what was done, for the record."""
    pause: dict[str, Any] = {}
    if state.last is not None and state.last[0] == request.campaign_id:
        new_cycle = request.cycle != state.last[1]
        seconds = request.cycle_gap_s if new_cycle else request.config_gap_s
        if seconds > 0:
            pause.update(kind="cycle" if new_cycle else "config", seconds=seconds)
            stop.wait(seconds)
    gap = request.thermal_gap
    if gap and state.last is not None:
        thermal: dict[str, Any] = {"within_c": gap["within_c"], "max_wait_s": gap["max_wait_s"]}
        idle = _idle_temperature(request.campaign_id, state.gpu_uuid) if state.gpu_uuid else None
        if idle is None or connection is None:
            thermal["note"] = "skipped: no GPU telemetry for this worker's GPU"
        else:
            began = time.monotonic()
            now = _temperature_now(connection, state.gpu_uuid)  # type: ignore[arg-type]
            thermal.update(idle_c=idle, start_c=now)
            while now is not None and now > idle + gap["within_c"] and time.monotonic() - began < gap["max_wait_s"]:
                if stop.wait(1.0):
                    break
                now = _temperature_now(connection, state.gpu_uuid)  # type: ignore[arg-type]
            thermal.update(end_c=now, waited_s=round(time.monotonic() - began, 3),
                           reached=now is not None and now <= idle + gap["within_c"])
        pause["thermal"] = thermal
    return pause


def _watch_cancel(connection: redis.Redis | None, campaign_id: int, engine: EngineHost,
                  stop: threading.Event, done: threading.Event) -> threading.Thread | None:
    """While the run lasts, poll for its campaign's cancellation; on it, kill the engine (the run stops now)."""
    if connection is None:
        return None

    def watch() -> None:
        while not done.wait(0.25):
            try:
                if cancel_requested(connection, campaign_id):
                    stop.set()
                    engine.abort()
                    return
            except redis.RedisError:
                continue

    thread = threading.Thread(target=watch, name=f"cancel-watch-{campaign_id}", daemon=True)
    thread.start()
    return thread


def execute_run(engine: EngineHost, request: RunRequest, worker: str, state: GpuState,
                connection: redis.Redis | None = None) -> tuple[int | None, str]:
    """Claim, pace, measure and record one run: (run id or None for a duplicate, status). Celery-free, so a
    bench on a machine without a broker runs exactly what the worker runs (``connection`` None: no Redis)."""
    run_id = claim_run(request.run_key, worker, socket.gethostname())
    if run_id is None:
        log.info("run %s already claimed or finished: nothing to do", request.run_key[:12])
        return None, "duplicate"
    stop, done = threading.Event(), threading.Event()
    _watch_cancel(connection, request.campaign_id, engine, stop, done)
    try:
        pause = pace(request, state, connection, stop)
        if stop.is_set():
            record_end(run_id, RunStatus.CANCELLED, "cancelled by the user before the run started")
            return run_id, RunStatus.CANCELLED.value
        deep_idle_s = 0.0
        if request.campaign_id not in state.baselined:
            deep_idle_s = float(request.experiment.get("measurement", {}).get("baseline_idle_s", 0.0))
        if request.cold_start:
            engine.stop()  # a fresh engine process: the model load is part of this run, measured apart
        try:
            measurement = engine.measure(request.experiment, deep_idle_s=deep_idle_s)
        except EngineFailure as exc:
            if stop.is_set():
                record_end(run_id, RunStatus.CANCELLED, "cancelled by the user during the run")
                return run_id, RunStatus.CANCELLED.value
            record_end(run_id, RunStatus.FAILED, str(exc))
            return run_id, RunStatus.FAILED.value
    finally:
        done.set()
        state.last = (request.campaign_id, request.cycle)
    state.baselined.add(request.campaign_id)
    state.gpu_uuid = measurement.gpu_uuid
    record_measurement(run_id, measurement, pause)
    return run_id, RunStatus.MEASURED.value


def make_worker(backend: Backend, adapter_path: str) -> Celery:
    """A Celery app whose one task measures runs of ``backend`` with the adapter at ``adapter_path``."""
    settings = get_settings()
    app = make_celery(f"lem-worker-{backend.value}", settings)
    engine = EngineHost(adapter_path, settings.device, settings.run_timeout_s)
    state = GpuState()
    connection = redis_client(settings.broker_url)
    current: dict[str, str | None] = {"name": None, "run_key": None}
    stopping = threading.Event()
    # What the engine host will import, read from the package metadata (importing the engine here would be slow
    # and would initialise CUDA in the worker).
    engine_package = ENGINE_PACKAGES[backend.value]
    engine_version = package_versions(engine_package)[engine_package]
    engine_version = None if engine_version == "not installed" else engine_version

    def beat() -> None:
        while not stopping.wait(settings.worker_heartbeat_s):
            try:
                publish_worker_beat(connection, current["name"] or "", backend.value, current["run_key"],
                                    engine_version)
            except redis.RedisError as exc:
                log.warning("worker heartbeat not written: %s", exc)

    @worker_ready.connect(weak=False)
    def _start_heartbeat(sender: Any = None, **_: Any) -> None:
        current["name"] = sender.hostname
        with session_scope() as s:  # open the database pool now, not inside the first run's dispatch latency
            s.execute(select(1))
        publish_worker_beat(connection, sender.hostname, backend.value, None, engine_version)
        threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()

    @app.task(name=RUN_TASK, bind=True, shared=False)
    def run_experiment(self: Any, message: dict[str, Any]) -> dict[str, Any]:
        try:
            request = RunRequest.model_validate(message)
        except ValidationError as exc:  # a planner of another version: fail the run rather than leave it hanging
            if isinstance(message, dict) and isinstance(message.get("run_id"), int):
                record_end(message["run_id"], RunStatus.FAILED, f"run message this worker cannot read: {exc}")
            raise
        current["run_key"] = request.run_key
        try:
            run_id, status = execute_run(engine, request, self.request.hostname or "unknown", state, connection)
        finally:
            current["run_key"] = None
        if run_id is not None:
            app.send_task(FINALISE_TASK, args=[FinaliseRequest(run_id=run_id).model_dump(mode="json")],
                          queue=QueueName.CONTROL)
            try:  # the next run for this GPU, without waiting for the scheduler loop (which also sends it)
                advance(app, connection)
            except Exception:  # noqa: BLE001 - the run is recorded; the scheduler loop will dispatch instead
                log.exception("dispatching the next run failed; the control worker's scheduler will retry")
        if run_id is None:
            return {"run_key": request.run_key, "status": status}
        return {"run_key": request.run_key, "run_id": run_id, "status": status}

    @worker_shutdown.connect(weak=False)
    def _stop_engine(**_: Any) -> None:
        stopping.set()
        if current["name"]:
            connection.delete(WORKER_KEY_PREFIX + current["name"])
        engine.stop()

    return app


def worker_argv(backend: Backend) -> list[str]:
    """The command line of one worker per GPU: threads pool of one, so ``inspect ping`` answers during a run."""
    return [
        "worker",
        "--queues", queue_for(backend).value,
        "--pool", "threads",
        "--concurrency", "1",
        "--events",
        "--hostname", f"{backend.value}@%h",
        "--loglevel", "INFO",
        *sys.argv[1:],
    ]
