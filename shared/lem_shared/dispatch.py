"""Campaign dispatch, driven by database state: the run order, sending runs as workers free up, reclaiming runs
whose worker vanished, and cancellation. Every step is idempotent, so any process may run it at any time.

``advance`` (sending the next runs) has four callers, each for a reason: the control worker's loop
(``lem_planner.control_loop``, every ``dispatch_interval_s``: the one that always runs, and retries whatever the
others missed); a GPU worker right after its run, so the next run starts without waiting up to an interval; and
``lem campaign run``/``resume`` and a schedule's firing, so a campaign's first runs start at once, even before a
control worker is up.

A backend queue is shared by all workers of that backend (one per GPU or GPU set, on any host). A run is sent
only when a worker of its backend that owns enough GPUs is free, in the campaign's order, so the queues never
hold more than the free workers will take at once: a restart of anything loses at most what was in flight, and
resume sends it again. Pacing (gaps, thermal waits) happens on the worker, on its own GPUs.

GPU sets: a run needs ``gpus_needed`` GPUs (its experiment's parallel settings) and goes to its backend's queue
of that class (``wire/queues.py``); a worker of n GPUs (its heartbeat's ``gpus``) reads classes n down to 1. Each
pass matches runs to free workers: those dispatched but not yet started first (largest first), then pending runs
in campaign order, each to the smallest free worker that can hold it. A run needing more GPUs than any free
worker owns waits, pending, while the runs behind it that fit go ahead; it is never sent where it cannot run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from celery import Celery
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from lem_shared.config.schema import gpus_needed_of
from lem_shared.db.models import (
    IN_FLIGHT_RUN_STATUSES,
    Campaign,
    CampaignStatus,
    Experiment,
    Run,
    RunStatus,
)
from lem_shared.db.session import engine_for, session_scope
from lem_shared.settings import get_settings
from lem_shared.wire.heartbeat import Beacons, beacons, live_leases, live_workers, run_leases, worker_gpus
from lem_shared.wire.messages import RunRequest
from lem_shared.wire.queues import FINALISE_TASK, MAX_GPUS_PER_WORKER, RUN_TASK, QueueName, queue_for

log = logging.getLogger(__name__)

CANCEL_KEY_PREFIX = "lem:cancel:"
# One scheduler pass at a time across every process (PostgreSQL advisory lock; SQLite has one writer anyway).
_ADVISORY_LOCK_ID = 0x6C656D5F  # "lem_"


def run_order(experiments: int, cycles: int, structure: str, seed: int) -> list[tuple[int, int]]:
    """(experiment index, cycle) in dispatch order. interleaved: every experiment once per cycle; shuffled: the
    same, each cycle in its own random order from ``seed`` (replayable); grouped: all cycles of one experiment."""
    if structure == "grouped":
        return [(e, c) for e in range(experiments) for c in range(cycles)]
    rng = random.Random(seed)
    order = []
    for cycle in range(cycles):
        indices = list(range(experiments))
        if structure == "shuffled":
            rng.shuffle(indices)
        order += [(e, cycle) for e in indices]
    return order


# --- cancellation -------------------------------------------------------------------------------------------------


@lru_cache
def _database_identity(url: str) -> str:
    engine = engine_for(url)
    if engine.dialect.name != "postgresql":
        return f"file/{engine.url.database}"
    with engine.connect() as connection:  # the cluster's own identifier, whatever address reaches it
        cluster, database = connection.execute(
            text("select (select system_identifier from pg_control_system()), current_database()")
        ).one()
    return f"{cluster}/{database}"


def cancel_key(campaign_id: int) -> str:
    """Campaign ids repeat across databases that share a broker, so the key names the database too."""
    return f"{CANCEL_KEY_PREFIX}{_database_identity(get_settings().database_url)}:campaign:{campaign_id}"


CANCEL_FLAG_TTL_S = 7 * 24 * 3600


def request_cancel(store: Beacons, campaign_id: int) -> None:
    store.put([(cancel_key(campaign_id), {"cancelled": True})], CANCEL_FLAG_TTL_S)


def cancel_requested(store: Beacons, campaign_id: int) -> bool:
    return store.get(cancel_key(campaign_id)) is not None


def aware(t: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes; PostgreSQL aware ones."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# --- the scheduler pass -------------------------------------------------------------------------------------------


def _lock(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_ID)))


def run_request(run: Run, experiment: Experiment, campaign: Campaign) -> RunRequest:
    """The message for one run: its experiment and how the worker paces the GPU before it (campaign settings)."""
    spec = campaign.spec
    return RunRequest(
        run_key=run.run_key,
        run_id=run.id,
        campaign_id=run.campaign_id,
        cycle=run.cycle,
        experiment=experiment.config,
        position=run.position,
        config_gap_s=spec.get("config_gap_s", 0.0),
        cycle_gap_s=spec.get("cycle_gap_s", 0.0),
        thermal_gap=spec.get("thermal_gap"),
        cold_start=bool(spec.get("force_cold_start")),
    )


# GPUs each experiment needs, by (database, experiment id): an experiment's config never changes, so each is read
# and worked out once per process, not at every pass.
_needs_cache: dict[tuple[str, int], int] = {}
_UNREADABLE = MAX_GPUS_PER_WORKER + 1  # a stored config the rule cannot read: no worker is big enough, it waits


def _gpus_needed(s: Session, experiment_ids: set[int]) -> dict[int, int]:
    """GPUs needed per experiment id, from the cache or the manifest's stored configs."""
    database = get_settings().database_url
    missing = [e for e in experiment_ids if (database, e) not in _needs_cache]
    if len(_needs_cache) > 500_000:
        _needs_cache.clear()
        missing = list(experiment_ids)
    for chunk in range(0, len(missing), 1000):
        for experiment_id, config in s.execute(
            select(Experiment.id, Experiment.config).where(Experiment.id.in_(missing[chunk : chunk + 1000]))
        ):
            try:
                needed = gpus_needed_of(config)
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning("experiment %s: cannot tell how many GPUs it needs (%s); its runs wait", experiment_id, exc)
                needed = _UNREADABLE
            _needs_cache[(database, experiment_id)] = needed
    return {e: _needs_cache.get((database, e), _UNREADABLE) for e in experiment_ids}


def best_fit(free: Mapping[str, int], needed: int) -> str | None:
    """The free worker (name: GPUs) that can hold a run needing ``needed`` GPUs with the fewest to spare, so
    larger sets stay free for runs that need them; None when none is large enough."""
    fitting = [(gpus, name) for name, gpus in free.items() if gpus >= needed]
    return min(fitting)[1] if fitting else None


def advance(app: Celery, store: Beacons | None = None) -> list[RunRequest]:
    """Send the next runs of the running campaigns, in order, each to a free worker of its backend with enough
    GPUs (see the module docstring)."""
    beats = live_workers(store or beacons())
    if not beats:
        return []
    now = datetime.now(UTC)
    to_send: list[tuple[RunRequest, str, int]] = []
    with session_scope() as s:
        _lock(s)
        running = select(Campaign.id).where(Campaign.status == CampaignStatus.RUNNING)
        in_flight = s.execute(
            select(Run.status, Run.worker, Run.experiment_id, Experiment.backend)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .where(Run.status.in_(IN_FLIGHT_RUN_STATUSES), Run.campaign_id.in_(running))
        ).all()
        waiting = s.execute(
            select(Run.experiment_id, Experiment.backend)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .where(Run.status == RunStatus.PENDING, Run.campaign_id.in_(running))
            .distinct()
        ).all()
        needs = _gpus_needed(s, {row.experiment_id for row in in_flight} | {row.experiment_id for row in waiting})
        measuring = {row.worker for row in in_flight if row.status == RunStatus.RUNNING and row.worker}
        for backend in sorted({str(beat["backend"]) for beat in beats.values()}):
            free = {
                name: worker_gpus(beat)
                for name, beat in beats.items()
                if beat["backend"] == backend and not beat.get("run_key") and name not in measuring
            }
            # Runs already in a queue will be taken by free workers that can hold them: those are not free.
            queued = [
                needs[row.experiment_id]
                for row in in_flight
                if row.status != RunStatus.RUNNING and row.backend == backend
            ]
            for needed in sorted(queued, reverse=True):
                taker = best_fit(free, needed)
                if taker is not None:
                    del free[taker]
            pending_experiments = {row.experiment_id for row in waiting if row.backend == backend}
            while free and pending_experiments:
                largest = max(free.values())
                too_big = [e for e in pending_experiments if needs[e] > largest]
                query = (
                    select(Run, Experiment, Campaign)
                    .join(Experiment, Run.experiment_id == Experiment.id)
                    .join(Campaign, Run.campaign_id == Campaign.id)
                    .where(
                        Run.status == RunStatus.PENDING,
                        Campaign.status == CampaignStatus.RUNNING,
                        Experiment.backend == backend,
                    )
                )
                if too_big:
                    query = query.where(Run.experiment_id.notin_(too_big))
                rows = s.execute(query.order_by(Run.campaign_id, Run.position).limit(len(free))).all()
                if not rows:
                    break
                # The first row fits the largest free worker, so every round sends at least one run.
                for run, experiment, campaign in rows:
                    needed = needs[experiment.id]
                    taker = best_fit(free, needed)
                    if taker is None:
                        continue
                    del free[taker]
                    run.status, run.dispatched_at = RunStatus.DISPATCHED, now
                    to_send.append(
                        (
                            run_request(run, experiment, campaign),
                            f"run {campaign.name}#{campaign.id}/experiment {experiment.index}/cycle {run.cycle}",
                            needed,
                        )
                    )
                s.flush()
    # Largest first: a worker of n GPUs reads its largest class first, so one waiting for a whole-set run takes
    # that, and the smaller runs of this pass go to the smaller workers they were matched with.
    to_send.sort(key=lambda item: -item[2])
    sent: list[RunRequest] = []
    try:
        for request, name, _ in to_send:
            send_run(app, request, name)
            sent.append(request)
    finally:
        unsent = [r.run_id for r, _, _ in to_send if r not in sent]
        if unsent:  # the broker went away mid-way: those go back to pending, the next pass sends them
            with session_scope() as s:
                s.execute(
                    update(Run)
                    .where(Run.id.in_(unsent), Run.status == RunStatus.DISPATCHED)
                    .values(status=RunStatus.PENDING, dispatched_at=None)
                )
    return sent


def send_run(app: Celery, request: RunRequest, name: str) -> None:
    """The run key is the task id, so Flower, the broker and the database name a run the same way; `name` (the
    task's shadow name, which Flower and the worker's log show instead of lem.run_experiment) is for people."""
    app.send_task(
        RUN_TASK,
        args=[request.model_dump(mode="json")],
        task_id=request.run_key,
        queue=queue_for(request.experiment["backend"], gpus_needed_of(request.experiment)).value,
        shadow=name,
    )


def wait_for_heartbeats(store: Beacons) -> None:
    """Sleep until the heartbeats' store has been up for a heartbeat lifetime, so every live worker has written
    its beat (a restarted Redis has none)."""
    ttl = get_settings().worker_heartbeat_ttl_s
    while (up := store.up_s()) < ttl:
        time.sleep(ttl - up)


def orphaned(
    run: Run,
    alive: Mapping[str, Mapping[str, Any]],
    now: datetime,
    leases: Mapping[str, Mapping[str, Any]] | None = None,
) -> str | None:
    """Why nobody measures this running run any more, or None while its worker may still be measuring it: its
    heartbeat (``alive``) or, when that is missing (a worker cut off from the broker), the run's lease in the
    database (``leases``, by run key). A worker restarted under the same name is alive but says (its heartbeat's
    run key) it runs something else."""
    ttl = get_settings().worker_heartbeat_ttl_s
    started = aware(run.started_at) if run.started_at else now
    beat = alive.get(run.worker or "")
    if beat is None:
        lease = (leases or {}).get(run.run_key)
        if lease is not None and lease.get("worker") == run.worker and lease.get("attempt") == run.attempts:
            return None  # its worker renews the lease: it measures the run, out of the broker's reach
        return (
            None
            if now - started < timedelta(seconds=ttl)
            else f"worker {run.worker} vanished (no heartbeat or run lease for {ttl:.0f} s)"
        )
    # Heartbeat and started_at come from the worker's own clock: a beat older than the claim proves nothing.
    if beat.get("run_key") == run.run_key or float(beat.get("time", 0)) <= started.timestamp():
        return None
    return f"worker {run.worker} is alive but not running it (restarted?)"


def reclaim(store: Beacons | None = None) -> list[str]:
    """Runs nobody measures any more (their worker vanished, or was restarted and runs something else) go back to
    pending, or fail after ``max_attempts``, or are cancelled when their campaign was; runs dispatched long ago and
    never started go back to pending. Returns one line per change, for the log."""
    settings = get_settings()
    store = store or beacons()
    alive = live_workers(store)
    leases = live_leases(run_leases())
    heartbeats_complete = store.up_s() >= settings.worker_heartbeat_ttl_s
    now = datetime.now(UTC)
    stale_dispatch = now - timedelta(seconds=settings.redispatch_after_s)
    changes = []
    with session_scope() as s:
        _lock(s)
        running = (
            s.execute(
                select(Run, Campaign.status)
                .join(Campaign, Run.campaign_id == Campaign.id)
                .where(Run.status == RunStatus.RUNNING)
            ).all()
            if heartbeats_complete
            else []
        )
        for run, campaign_status in running:
            reason = orphaned(run, alive, now, leases)
            if reason is None:
                continue
            lost = f"attempt {run.attempts}: {reason}"
            if campaign_status == CampaignStatus.CANCELLED:
                run.status, run.error, run.finished_at = RunStatus.CANCELLED, f"cancelled by the user; {lost}", now
                changes.append(f"run {run.id} cancelled: {lost}")
            elif run.attempts >= settings.max_attempts:
                run.status, run.error, run.finished_at = (
                    RunStatus.FAILED,
                    f"{lost}; gave up after {run.attempts} attempts",
                    now,
                )
                changes.append(f"run {run.id} failed: {lost}")
            else:
                run.status, run.worker, run.error = RunStatus.PENDING, None, lost
                changes.append(f"run {run.id} re-queued: {lost}")
        stuck = s.scalars(select(Run).where(Run.status == RunStatus.DISPATCHED, Run.dispatched_at < stale_dispatch))
        for run in stuck:
            run.status, run.dispatched_at = RunStatus.PENDING, None
            changes.append(f"run {run.id} re-queued: dispatched but not started within the limit")
    return changes


def refinalise_stale(app: Celery, older_than_s: float) -> list[int]:
    """Measured runs the control worker never finalised (it crashed): ask again. Finalising is idempotent."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    with session_scope() as s:
        ids = list(s.scalars(select(Run.id).where(Run.status == RunStatus.MEASURED, Run.finished_at < cutoff)))
    for run_id in ids:
        app.send_task(FINALISE_TASK, args=[{"run_id": run_id}], queue=QueueName.CONTROL.value)
    return ids


def requeue_for_resume(
    campaign_id: int, alive: Mapping[str, Mapping[str, Any]], leases: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, int]:
    """After a crash: dispatched runs (the broker may have lost them) and running runs nobody measures any more
    (``orphaned``, from the live workers' heartbeats and the runs' leases) go back to pending; finished runs stay
    as they are. Returns how many of each were re-queued."""
    counts = {"dispatched": 0, "running": 0}
    now = datetime.now(UTC)
    with session_scope() as s:
        _lock(s)
        for run in s.scalars(select(Run).where(Run.campaign_id == campaign_id, Run.status.in_(IN_FLIGHT_RUN_STATUSES))):
            reason = orphaned(run, alive, now, leases) if run.status == RunStatus.RUNNING else None
            if run.status == RunStatus.RUNNING and reason is None:
                continue  # still being measured
            counts[run.status] += 1
            if reason:
                run.error = f"attempt {run.attempts}: {reason}"
            run.status, run.dispatched_at, run.worker = RunStatus.PENDING, None, None
    return counts


def manifest_request(run_key: str) -> RunRequest | None:
    """The message the manifest makes for this run key (what a worker measures), or None for an unknown key."""
    with session_scope() as s:
        row = s.execute(
            select(Run, Experiment, Campaign)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .join(Campaign, Run.campaign_id == Campaign.id)
            .where(Run.run_key == run_key)
        ).one_or_none()
        return run_request(*row) if row else None
