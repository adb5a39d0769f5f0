"""The Celery side of every worker: claim a run atomically, pace the GPU, measure the run in the engine host,
record it, and ask for the next one at once.

A worker service is this runtime plus one engine adapter: ``make_worker("pytorch", "pkg.adapter:Class")``.
It publishes a heartbeat in Redis (the scheduler sends it runs only while it is alive and free, and re-queues
its run if it vanishes; the planner checks parameters against the snapshot of the engine version it advertises)
and watches for its campaign's cancellation while it measures.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from lem_shared import TOOL_VERSION
from lem_shared.db.clock import clock_offset
from lem_shared.db.measurements import idle_temperature
from lem_shared.db.models import (
    RUN_SCHEMA_VERSION,
    BatchTimingRow,
    Environment,
    RequestTimingRow,
    Run,
    RunMetrics,
    RunStatus,
)
from lem_shared.db.session import session_scope
from lem_shared.device.environment import package_versions
from lem_shared.dispatch import advance, cancel_key, manifest_request
from lem_shared.measure.metrics import run_metrics
from lem_shared.params.snapshots import ENGINE_PACKAGES
from lem_shared.run_record import stored
from lem_shared.runtime.engine_host import EngineFailure, EngineHost
from lem_shared.settings import get_settings
from lem_shared.wire.celery_app import make_celery
from lem_shared.wire.heartbeat import (
    LEASE_KEY_PREFIX,
    WORKER_KEY_PREFIX,
    Beacons,
    BeaconsAway,
    beacons,
    gpu_key,
    publish_worker_beat,
    renew_lease,
    run_leases,
)
from lem_shared.wire.messages import FinaliseRequest, Measurement, RunRequest, ServedRequest
from lem_shared.wire.queues import FINALISE_TASK, RUN_TASK, Backend, QueueName, worker_queues

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# How long a worker keeps retrying a write while PostgreSQL is away (a restart, a failover) before it gives up and
# leaves the run to the scheduler's reclaim; and the longest pause it takes before a run.
DATABASE_RETRY_S = 600.0
MAX_GAP_S = 24 * 3600.0

T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """This worker's claim on a run: writes about the run succeed only while the claim is still the run's."""

    run_id: int
    attempt: int
    worker: str


class ClaimLost(RuntimeError):
    """The run was taken from this worker (re-queued, claimed by another, cancelled) while it measured it."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def with_database_retry(what: str, write: Callable[[], T], give_up_after_s: float = DATABASE_RETRY_S) -> T:
    """``write()``, retried with back-off while the database cannot be reached, rather than leave a run running."""
    deadline, delay = time.monotonic() + give_up_after_s, 0.5
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: the database is away (%s); retrying in %.1f s", what, _first_line(exc.orig or exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def claim_run(run_key: str, worker: str, host: str) -> Claim | None:
    """Mark the run as ours in one conditional UPDATE; None when it is already running or finished."""
    with session_scope() as s:
        offset = clock_offset(s.connection()).offset_s
        row = s.execute(
            update(Run)
            .where(Run.run_key == run_key, Run.status.in_([RunStatus.PENDING, RunStatus.DISPATCHED]))
            .values(
                status=RunStatus.RUNNING,
                clock_offset_s=offset,
                attempts=Run.attempts + 1,
                worker=worker,
                host=host,
                started_at=datetime.now(UTC),
                schema_version=RUN_SCHEMA_VERSION,
                tool_version=TOOL_VERSION,
            )
            .returning(Run.id, Run.attempts)
        ).one_or_none()
    return Claim(row.id, row.attempts, worker) if row else None


def _owned(claim: Claim) -> Any:
    return (
        Run.id == claim.run_id,
        Run.status == RunStatus.RUNNING,
        Run.attempts == claim.attempt,
        Run.worker == claim.worker,
    )


def _span(span: tuple[float, float] | None) -> list[float] | None:
    return list(span) if span else None


def record_measurement(
    claim: Claim, m: Measurement, pause: dict[str, Any] | None = None, experiment: dict[str, Any] | None = None
) -> None:
    """Store the measurement, only while the claim is still the run's (else ClaimLost, nothing stored);
    ``experiment`` (the run's config) gives a serving run its SLOs and concurrency cap."""
    phases: dict[str, Any] = {
        "deep_idle": _span(m.deep_idle),
        "idle_before": _span(m.idle_before),
        "idle_after": _span(m.idle_after),
        "model_load": _span(m.model_load),
    }
    if pause:
        phases["gap"] = pause
    if m.edges is not None:  # every GPU's counter at the window's exact edges: the finaliser's energy figure
        phases["edges"] = m.edges.model_dump(mode="json")
    if m.prefill is not None:  # phase split: the prefill-only window, summed (the finaliser needs its energy)
        p = m.prefill
        phases["prefill"] = {
            "window": [p.window_start, p.window_end],
            "idle_before": _span(p.idle_before),
            "idle_after": _span(p.idle_after),
            "passes": p.passes,
            "warmup_iterations": p.warmup_iterations,
            "prompts": sum(b.batch_size for b in p.batches),
            "latency_s": [b.latency_s for b in p.batches],
            "edges": p.edges.model_dump(mode="json") if p.edges is not None else None,
        }
    if m.flops_counted is not None:
        phases["flops_counted"] = m.flops_counted
    if m.serving is not None:  # the engine's steps, for the finaliser's per-request energy: [start, end, running,
        # waiting, {request index: [prefill, decode]}] each (the requests go to request_timings)
        phases["serving"] = {
            "steps": [
                [s.start, s.end, s.running, s.waiting, {str(k): list(v) for k, v in s.tokens.items()}]
                for s in m.serving.steps
            ],
            "facts": m.serving.facts,
        }
    if m.model_shape is not None:
        phases["model_shape"] = m.model_shape
    run_id = claim.run_id
    with session_scope() as s:
        owned = s.execute(
            update(Run)
            .where(*_owned(claim))
            .values(
                status=RunStatus.MEASURED,
                device=m.device,
                gpu_uuid=m.gpu_uuid,
                gpu_uuids=list(m.gpu_uuids) or None,
                environment_id=Environment.id_for(s, m.environment),
                window_start=datetime.fromtimestamp(m.window_start, UTC),
                window_end=datetime.fromtimestamp(m.window_end, UTC),
                phases=phases,
                finished_at=datetime.now(UTC),
                clock_offset_end_s=clock_offset(s.connection()).offset_s,
            )
            .returning(Run.id)
        ).scalar_one_or_none()
        if owned is None:
            raise ClaimLost(f"run {run_id}: attempt {claim.attempt} is no longer this worker's claim")
        workload = (experiment or {}).get("workload") or {}
        slo = {k: v for k, v in (workload.get("slo") or {}).items() if v is not None} or None
        figures = run_metrics(m, slo)
        s.execute(insert(RunMetrics).values(run_id=run_id, **stored(figures)))
        if m.batches:
            s.execute(insert(BatchTimingRow), [{"run_id": run_id, **b.model_dump()} for b in m.batches])
        if m.serving is not None and m.serving.requests:
            store_requests(s, run_id, m.serving.requests)


_REQUEST_COLUMNS = (
    "run_id",
    "request_index",
    "arrival",
    "first_token",
    "finish",
    "prompt_tokens",
    "output_tokens",
    "token_times",
)


def store_requests(s: Session, run_id: int, requests: list[ServedRequest]) -> None:
    """A serving run's requests into request_timings, in the run's transaction: by COPY on PostgreSQL (a long
    run has thousands of requests, each with every token's time), by one multi-row INSERT elsewhere."""
    rows = [
        (run_id, r.index, r.arrival, r.first_token, r.finish, r.prompt_tokens, r.output_tokens, r.token_times)
        for r in requests
    ]
    connection = s.connection()
    if connection.dialect.name != "postgresql":
        s.execute(insert(RequestTimingRow), [dict(zip(_REQUEST_COLUMNS, row, strict=True)) for row in rows])
        return

    from psycopg.types.json import Jsonb  # PostgreSQL's driver: absent on a host whose database is SQLite

    raw = cast("psycopg.Connection[Any]", connection.connection.dbapi_connection)
    statement = f"COPY request_timings ({', '.join(_REQUEST_COLUMNS)}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row((*row[:-1], Jsonb(row[-1])))


def record_end(claim: Claim, status: RunStatus, error: str) -> None:
    """End the run (failed or cancelled, with the reason), only while the claim is still the run's."""
    with session_scope() as s:
        owned = s.execute(
            update(Run)
            .where(*_owned(claim))
            .values(
                status=status,
                error=error,
                finished_at=datetime.now(UTC),
                clock_offset_end_s=clock_offset(s.connection()).offset_s,
            )
            .returning(Run.id)
        ).scalar_one_or_none()
    if owned is None:
        raise ClaimLost(f"run {claim.run_id}: attempt {claim.attempt} is no longer this worker's claim")


def fail_unstarted(run_id: int, reason: str) -> None:
    with session_scope() as s:
        s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status.in_([RunStatus.PENDING, RunStatus.DISPATCHED]))
            .values(status=RunStatus.FAILED, error=reason, finished_at=datetime.now(UTC))
        )


def refuse_message(run_id: int, reason: str) -> None:
    """Note on a run not yet started why a message for it was refused (the run itself is left to its real one)."""
    with session_scope() as s:
        s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status.in_([RunStatus.PENDING, RunStatus.DISPATCHED]))
            .values(error=reason)
        )


def _wait(stop: threading.Event, seconds: float, what: str) -> None:
    if seconds > MAX_GAP_S:  # Event.wait overflows on huge values, and a day-long pause is a mistake anyway
        raise ValueError(f"{what} of {seconds:g} s is longer than a worker pauses ({MAX_GAP_S:.0f} s)")
    stop.wait(seconds)


@dataclass
class GpuState:
    """What one worker remembers about its GPU between runs (one worker per GPU)."""

    baselined: set[int] = field(default_factory=set)  # campaigns whose deep idle this GPU has measured
    last: tuple[int, int] | None = None  # (campaign, cycle) of the previous run
    gpu_uuid: str | None = None


def _temperature_now(store: Beacons, gpu_uuid: str) -> float | None:
    try:
        beat = store.get(gpu_key(gpu_uuid))
    except BeaconsAway:
        return None
    value = None if beat is None else beat.get("temperature_c")
    return float(value) if value is not None else None


def pace(request: RunRequest, state: GpuState, store: Beacons | None, stop: threading.Event) -> dict:
    """Pause this GPU before the run: the configured gap (between configs, or a longer one when a new cycle
    starts), then the thermal gap; other GPUs are never held up. Returns what was done, for the record."""
    pause: dict[str, Any] = {}
    if state.last is not None and state.last[0] == request.campaign_id:
        new_cycle = request.cycle != state.last[1]
        seconds = request.cycle_gap_s if new_cycle else request.config_gap_s
        if seconds > 0:
            pause.update(kind="cycle" if new_cycle else "config", seconds=seconds)
            _wait(stop, seconds, "cycle_gap_s" if new_cycle else "config_gap_s")
    gap = request.thermal_gap
    if gap and state.last is not None:
        thermal: dict[str, Any] = {"within_c": gap["within_c"], "max_wait_s": min(gap["max_wait_s"], MAX_GAP_S)}
        uuid = state.gpu_uuid
        idle = idle_temperature(request.campaign_id, uuid) if uuid else None
        if idle is None or uuid is None or store is None:
            thermal["note"] = "skipped: no GPU telemetry for this worker's GPU"
        else:
            began = time.monotonic()
            now = _temperature_now(store, uuid)
            thermal.update(idle_c=idle, start_c=now)
            while now is not None and now > idle + gap["within_c"] and time.monotonic() - began < thermal["max_wait_s"]:
                if stop.wait(1.0):
                    break
                now = _temperature_now(store, uuid)
            thermal.update(
                end_c=now,
                waited_s=round(time.monotonic() - began, 3),
                reached=now is not None and now <= idle + gap["within_c"],
            )
        pause["thermal"] = thermal
    return pause


def _watch_cancel(
    store: Beacons | None, campaign_id: int, engine: EngineHost, stop: threading.Event, done: threading.Event
) -> threading.Thread | None:
    """While the run lasts, poll for its campaign's cancellation; on it, kill the engine (the run stops now)."""
    if store is None:
        return None
    key = cancel_key(campaign_id)  # now, while the database answers: the watch must not need it

    def watch() -> None:
        while not done.wait(0.25):
            try:
                if store.get(key) is not None:
                    stop.set()
                    engine.abort()
                    return
            except BeaconsAway:
                continue

    thread = threading.Thread(target=watch, name=f"cancel-watch-{campaign_id}", daemon=True)
    thread.start()
    return thread


def _hold_lease(claim: Claim, run_key: str, done: threading.Event) -> None:
    """While the run lasts, renew its lease in the database (its own thread: a write stalled by an unreachable
    database must not hold up the broker's heartbeat, which proves the same from the other side)."""
    leases = run_leases()
    interval = get_settings().worker_heartbeat_s

    def hold() -> None:
        while True:
            try:
                renew_lease(leases, run_key, claim.worker, claim.attempt)
            except BeaconsAway as exc:
                log.warning("run lease not renewed: %s", _first_line(exc))
            if done.wait(interval):
                break
        with contextlib.suppress(BeaconsAway):  # it expires on its own
            leases.delete(LEASE_KEY_PREFIX + run_key)

    threading.Thread(target=hold, name=f"run-lease-{claim.run_id}", daemon=True).start()


def _differences(message: RunRequest, manifest: RunRequest) -> list[str]:
    sent, kept = message.model_dump(mode="json"), manifest.model_dump(mode="json")
    fields = [name for name in kept if name != "experiment" and sent.get(name) != kept[name]]
    fields += [
        f"experiment.{name}"
        for name in sorted(set(sent["experiment"]) | set(kept["experiment"]))
        if sent["experiment"].get(name) != kept["experiment"].get(name)
    ]
    return fields


def execute_run(
    engine: EngineHost, request: RunRequest, worker: str, state: GpuState, store: Beacons | None = None
) -> tuple[int | None, str]:
    """Check the message against the manifest, claim, pace, measure and record one run: (run id or None when
    nothing was claimed, status). Every path after the claim ends the run exactly once, or leaves it to the
    claim that took it over. Celery-free, so a bench on a machine without a broker runs exactly what the worker
    runs (``store`` None: no heartbeats, cancel flags or temperatures)."""
    manifest = with_database_retry("reading the manifest", lambda: manifest_request(request.run_key))
    if manifest is None:
        log.warning("refused a run message for run key %s: no such run in the database", request.run_key[:12])
        return None, "refused"
    if manifest != request:  # the broker is not the record: the manifest says what to measure
        reason = (
            f"refused a run message that does not match the manifest (differs in "
            f"{', '.join(_differences(request, manifest))})"
        )
        log.warning("run %s: %s", manifest.run_id, reason)
        with_database_retry("noting a refused message", lambda: refuse_message(manifest.run_id, reason))
        return None, "refused"
    claim = with_database_retry("claiming the run", lambda: claim_run(manifest.run_key, worker, socket.gethostname()))
    if claim is None:
        log.info("run %s already claimed or finished: nothing to do", request.run_key[:12])
        return None, "duplicate"
    stop, done = threading.Event(), threading.Event()
    _hold_lease(claim, manifest.run_key, done)
    _watch_cancel(store, manifest.campaign_id, engine, stop, done)
    try:
        status, error = _measure_and_record(engine, manifest, claim, state, store, stop)
    except ClaimLost as exc:
        log.warning("%s: recorded nothing (the run was re-queued, cancelled or claimed again)", exc)
        return claim.run_id, "lost"
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the run ends with the reason, not stuck running
        log.exception("run %s failed in the worker", claim.run_id)
        status = RunStatus.CANCELLED if stop.is_set() else RunStatus.FAILED
        error = (
            "cancelled by the user during the run"
            if stop.is_set()
            else f"worker error: {type(exc).__name__}: {_first_line(exc)}"
        )
    finally:
        done.set()
        state.last = (manifest.campaign_id, manifest.cycle)
    if status == RunStatus.MEASURED:
        return claim.run_id, status.value
    try:
        with_database_retry("recording the run's end", lambda: record_end(claim, status, error))
    except ClaimLost as exc:
        log.warning("%s: recorded nothing", exc)
        return claim.run_id, "lost"
    return claim.run_id, status.value


def _measure_and_record(
    engine: EngineHost,
    request: RunRequest,
    claim: Claim,
    state: GpuState,
    store: Beacons | None,
    stop: threading.Event,
) -> tuple[RunStatus, str]:
    """Pace, measure and store the run: (MEASURED, "") when stored, else the status and reason to end it with."""
    pause = pace(request, state, store, stop)
    if stop.is_set():
        return RunStatus.CANCELLED, "cancelled by the user before the run started"
    deep_idle_s = 0.0
    if request.campaign_id not in state.baselined:
        deep_idle_s = float(request.experiment.get("measurement", {}).get("baseline_idle_s", 0.0))
    if request.cold_start:
        engine.stop()  # a fresh engine process: the model load is part of this run, measured apart
    try:
        measurement = engine.measure(request.experiment, deep_idle_s=deep_idle_s)
    except EngineFailure as exc:
        if stop.is_set():
            return RunStatus.CANCELLED, "cancelled by the user during the run"
        return RunStatus.FAILED, str(exc)
    state.baselined.add(request.campaign_id)
    state.gpu_uuid = measurement.gpu_uuid
    with_database_retry(
        "recording the measurement", lambda: record_measurement(claim, measurement, pause, request.experiment)
    )
    return RunStatus.MEASURED, ""


def make_worker(backend: Backend, adapter_path: str) -> Celery:
    """A Celery app whose one task measures runs of ``backend`` with the adapter at ``adapter_path``."""
    settings = get_settings()
    app = make_celery(f"lem-worker-{backend.value}", settings)
    # Read this worker's queues (its GPU classes, largest first) in the order given, not round robin: a run that
    # needs the whole GPU set is taken before a smaller one that a smaller worker can take as well.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "queue_order_strategy": "priority"}
    # The whole GPU set goes to the engine host; the adapter gives its engine exactly those GPUs.
    engine = EngineHost(adapter_path, settings.device, settings.run_timeout_s)
    gpus = settings.worker_gpus()
    state = GpuState()
    store = beacons()
    current: dict[str, str | None] = {"name": None, "run_key": None}
    stopping = threading.Event()
    # What the engine host will import, read from the package metadata (importing the engine here would be slow
    # and would initialise CUDA in the worker).
    engine_package = ENGINE_PACKAGES[backend.value]
    installed = package_versions(engine_package)[engine_package]
    engine_version = None if installed == "not installed" else installed

    def beat_now() -> None:
        try:
            name, run_key = current["name"] or "", current["run_key"]
            publish_worker_beat(store, name, backend.value, run_key, engine_version, gpus, settings.device)
        except BeaconsAway as exc:
            log.warning("worker heartbeat not written: %s", exc)

    def beat() -> None:
        while not stopping.wait(settings.worker_heartbeat_s):
            beat_now()

    @worker_ready.connect(weak=False)
    def _start_heartbeat(sender: Any = None, **_: Any) -> None:
        current["name"] = sender.hostname
        with session_scope() as s:  # open the database pool now, not inside the first run's dispatch latency
            s.execute(select(1))
        publish_worker_beat(store, sender.hostname, backend.value, None, engine_version, gpus, settings.device)
        threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()

    @app.task(name=RUN_TASK, bind=True, shared=False)
    def run_experiment(self: Any, message: dict[str, Any]) -> dict[str, Any]:
        try:
            request = RunRequest.model_validate(message)
        except ValidationError as exc:  # a planner of another version: fail the run rather than leave it hanging
            if isinstance(message, dict) and isinstance(message.get("run_id"), int):
                fail_unstarted(message["run_id"], f"run message this worker cannot read: {exc}")
            raise
        current["run_key"] = request.run_key
        beat_now()  # the scheduler tells a restarted worker's stale run by the run key its heartbeat carries
        try:
            run_id, status = execute_run(engine, request, self.request.hostname or "unknown", state, store)
        finally:
            current["run_key"] = None
            beat_now()
        if run_id is not None:
            app.send_task(
                FINALISE_TASK, args=[FinaliseRequest(run_id=run_id).model_dump(mode="json")], queue=QueueName.CONTROL
            )
            # The next run for this GPU at once: the control loop would send it too, but up to dispatch_interval_s
            # later, a gap on the GPU between runs that pacing (config_gap_s) is meant to set alone.
            try:
                advance(app, store)
            except Exception:  # noqa: BLE001 - the run is recorded; the scheduler loop will dispatch instead
                log.exception("dispatching the next run failed; the control worker's scheduler will retry")
        if run_id is None:
            return {"run_key": request.run_key, "status": status}
        return {"run_key": request.run_key, "run_id": run_id, "status": status}

    @worker_shutdown.connect(weak=False)
    def _stop_engine(**_: Any) -> None:
        stopping.set()
        if current["name"]:
            with contextlib.suppress(BeaconsAway):  # it expires on its own
                store.delete(WORKER_KEY_PREFIX + current["name"])
        engine.stop()

    return app


def worker_argv(backend: Backend) -> list[str]:
    """The command line of one worker per GPU or GPU set (``LEM_DEVICE``): its backend's queues for runs of up to
    as many GPUs as it owns, largest first; threads pool of one, so ``inspect ping`` answers during a run."""
    return [
        "worker",
        "--queues",
        ",".join(q.value for q in worker_queues(backend, get_settings().worker_gpus())),
        "--pool",
        "threads",
        "--concurrency",
        "1",
        "--events",
        "--hostname",
        f"{backend.value}@%h",
        "--loglevel",
        "INFO",
        *sys.argv[1:],
    ]
