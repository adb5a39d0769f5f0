"""Create a campaign's manifest (campaign → experiments → runs in their order), start, wait for, cancel, resume or
close one. ``lem campaign`` and the Python API (``lem.run``) both go through these.

Dispatch itself is ``lem_shared.dispatch.advance``: runs are sent as workers free up, from database state.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from lem_planner.results import campaign_progress
from lem_shared.config.schema import CampaignConfig, ExperimentConfig
from lem_shared.db.models import TERMINAL_RUN_STATUSES, Campaign, CampaignStatus, Experiment, Run, RunStatus
from lem_shared.db.session import session_scope
from lem_shared.dispatch import (
    orphaned,
    request_cancel,
    requeue_for_resume,
    run_order,
    run_request,
    wait_for_heartbeats,
)
from lem_shared.wire.heartbeat import BeaconsAway, beacons, live_leases, live_workers, run_leases, worker_gpus
from lem_shared.wire.messages import RunRequest, run_key, sha256_of
from lem_shared.wire.queues import QueueName, queue_for


def create_campaign(
    campaign: CampaignConfig, experiments: list[ExperimentConfig], session: Session | None = None
) -> tuple[int, list[RunRequest]]:
    """Write the manifest in one transaction (``session``'s, when given: a schedule's firing is recorded in the
    same one); return the campaign id and its runs in dispatch order.

    The order follows ``structure``: interleaved (the default) runs every experiment once per cycle, so slow
    drift (thermal, clocks) is spread over all experiments rather than landing on one; shuffled does the same
    in a seeded random order per cycle; grouped runs all cycles of one experiment together.
    """
    seed = campaign.seed if campaign.seed is not None else secrets.randbelow(2**31)
    spec = campaign.model_dump(mode="json")
    with nullcontext(session) if session is not None else session_scope() as s:
        row = Campaign(name=campaign.name, spec=spec, spec_hash=sha256_of(spec), seed=seed)
        s.add(row)
        s.flush()
        rows = []
        for index, experiment in enumerate(experiments):
            config = experiment.model_dump(mode="json")
            exp_row = Experiment(
                campaign_id=row.id,
                index=index,
                backend=experiment.backend.value,
                config=config,
                config_hash=experiment.config_hash(),
            )
            s.add(exp_row)
            rows.append((exp_row, config))
        s.flush()
        runs = []
        for position, (index, cycle) in enumerate(run_order(len(rows), campaign.cycles, campaign.structure, seed)):
            exp_row, config = rows[index]
            run = Run(
                run_key=run_key(row.id, config, cycle),
                campaign_id=row.id,
                experiment_id=exp_row.id,
                cycle=cycle,
                position=position,
            )
            s.add(run)
            runs.append((run, exp_row))
        s.flush()
        return row.id, [run_request(run, exp_row, row) for run, exp_row in runs]


def cancel_campaign(app: Celery, campaign_id: int) -> dict[str, Any]:
    """Cancel a running campaign: queued runs are dropped at once (cancelled, their tasks revoked); a run its worker
    is measuring is stopped by that worker, which watches for this; a run left running by a worker that vanished
    or restarted is cancelled at once. Returns ``{"queued", "stopping", "orphaned"}`` counts, and ``already``: the
    status of a campaign that had already ended (nothing changed then). LookupError when there is no such one."""
    store = beacons()
    alive = live_workers(store)  # before any change: heartbeats that cannot be read change nothing
    leases = live_leases(run_leases())
    now = datetime.now(UTC)
    with session_scope() as s:
        status = s.scalar(select(Campaign.status).where(Campaign.id == campaign_id).with_for_update())
        if status is None:
            raise LookupError(f"no campaign {campaign_id}")
        if status != CampaignStatus.RUNNING:
            return {"already": status, "queued": 0, "stopping": 0, "orphaned": 0}
        # the campaign first, so nothing closes it as failed meanwhile
        s.execute(
            update(Campaign).where(Campaign.id == campaign_id).values(status=CampaignStatus.CANCELLED, finished_at=now)
        )
        queued = (
            s.execute(
                update(Run)
                .where(Run.campaign_id == campaign_id, Run.status.in_([RunStatus.PENDING, RunStatus.DISPATCHED]))
                .values(status=RunStatus.CANCELLED, error="cancelled by the user", finished_at=now)
                .returning(Run.run_key)
            )
            .scalars()
            .all()
        )
        stopping = orphans = 0
        for run in s.scalars(select(Run).where(Run.campaign_id == campaign_id, Run.status == RunStatus.RUNNING)):
            reason = orphaned(run, alive, now, leases)
            if reason is None:
                stopping += 1
            else:
                run.status, run.error, run.finished_at = RunStatus.CANCELLED, f"cancelled by the user; {reason}", now
                orphans += 1
    if stopping:
        request_cancel(store, campaign_id)  # the worker measuring it stops it
    if queued:
        app.control.revoke(list(queued))
    return {"already": None, "queued": len(queued), "stopping": stopping, "orphaned": orphans}


def resume_campaign(campaign_id: int) -> dict[str, int]:
    """Continue a campaign after a crash of anything: in-flight runs whose message or worker may be gone go
    back to pending (finished runs are never re-run) and the campaign is running again. Right after a broker
    restart it first waits a heartbeat lifetime, so runs still being measured are known by their workers' beats."""
    with session_scope() as s:
        status = s.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
        if status is None:
            raise LookupError(f"no campaign {campaign_id}")
        if status == CampaignStatus.CANCELLED:
            raise ValueError(f"campaign {campaign_id} was cancelled; run its file again for a new campaign")
    store = beacons()
    wait_for_heartbeats(store)
    with session_scope() as s:
        unfinished = s.scalar(
            select(Run.id)
            .where(
                Run.campaign_id == campaign_id,
                Run.status.in_([RunStatus.PENDING, RunStatus.DISPATCHED, RunStatus.RUNNING, RunStatus.MEASURED]),
            )
            .limit(1)
        )
        if unfinished is not None:
            s.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(status=CampaignStatus.RUNNING, finished_at=None)
            )
    return requeue_for_resume(campaign_id, live_workers(store), live_leases(run_leases()))


def close_finished_campaigns() -> None:
    """Close every running campaign whose runs have all ended, however they ended (a finalise closes its own;
    a run failed or cancelled by reclaim, or by a worker's last attempt, has no finalise to do it)."""
    with session_scope() as s:
        unfinished = exists().where(Run.campaign_id == Campaign.id, Run.status.not_in(TERMINAL_RUN_STATUSES))
        ended = s.scalars(select(Campaign.id).where(Campaign.status == CampaignStatus.RUNNING, ~unfinished)).all()
    for campaign_id in ended:
        close_campaign_if_finished(campaign_id)


def close_campaign_if_finished(campaign_id: int) -> None:
    """End a running campaign once all its runs have ended: cancelled if any was, done if any run is done, else
    failed."""
    with session_scope() as s:
        unfinished = exists().where(Run.campaign_id == campaign_id, Run.status.not_in(TERMINAL_RUN_STATUSES))
        done = select(func.count()).where(Run.campaign_id == campaign_id, Run.status == RunStatus.DONE)
        cancelled = exists().where(Run.campaign_id == campaign_id, Run.status == RunStatus.CANCELLED)
        status = (
            CampaignStatus.CANCELLED
            if s.scalar(select(cancelled))
            else CampaignStatus.DONE
            if s.scalar(done)
            else CampaignStatus.FAILED
        )
        s.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.RUNNING, ~unfinished)
            .values(status=status, finished_at=datetime.now(UTC))
        )


def failed_runs_by_campaign() -> dict[int, int]:
    """How many failed runs each campaign has (a campaign ends ``done`` when some runs failed: this shows them)."""
    with session_scope() as s:
        return {
            campaign: count
            for campaign, count in s.execute(
                select(Run.campaign_id, func.count()).where(Run.status == RunStatus.FAILED).group_by(Run.campaign_id)
            )
        }


def consumers_by_queue(app: Celery, timeout: float = 2.0) -> dict[str, list[str]]:
    """Live workers per queue, asked through the broker (``celery inspect active_queues``)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    out: dict[str, list[str]] = {}
    for worker, queues in replies.items():
        for queue in queues:
            out.setdefault(queue["name"], []).append(worker)
    return out


def campaign_status(campaign_id: int) -> dict[str, Any]:
    """The manifest of one campaign: its runs in dispatch order, counts per status, and an ETA from the runs done
    so far (their mean time from start to end, spread over the workers seen running this campaign)."""
    with session_scope() as s:
        campaign = s.get(Campaign, campaign_id)
        if campaign is None:
            raise LookupError(f"no campaign {campaign_id}")
        rows = s.execute(
            select(Run, Experiment.index, Experiment.backend)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .where(Run.campaign_id == campaign_id)
            .order_by(Run.position)
        ).all()
        runs: list[dict[str, Any]] = [
            {
                "run_id": run.id,
                "position": run.position,
                "experiment_index": index,
                "backend": backend,
                "cycle": run.cycle,
                "status": run.status,
                "attempts": run.attempts,
                "worker": run.worker,
                "host": run.host,
                "gpu_uuid": run.gpu_uuid,
                "dispatched_at": _iso(run.dispatched_at),
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "error": run.error,
                "_seconds": (run.finished_at - run.started_at).total_seconds()
                if run.finished_at and run.started_at and run.status in (RunStatus.MEASURED, RunStatus.DONE)
                else None,
            }
            for run, index, backend in rows
        ]
        header = {
            "campaign_id": campaign.id,
            "name": campaign.name,
            "status": campaign.status,
            "structure": campaign.spec.get("structure", "interleaved"),
            "seed": campaign.seed,
            "created_at": _iso(campaign.created_at),
            "finished_at": _iso(campaign.finished_at),
        }
    counts = Counter(r["status"] for r in runs)
    finished = sum(counts[s] for s in TERMINAL_RUN_STATUSES)
    durations = [seconds for r in runs if (seconds := r.pop("_seconds")) is not None]
    workers = len({r["worker"] for r in runs if r["worker"]}) or 1
    remaining = len(runs) - finished - counts[RunStatus.MEASURED]
    eta = (
        (statistics.fmean(durations) * remaining / workers)
        if durations and remaining
        else (0.0 if not remaining else None)
    )
    return {
        **header,
        "total": len(runs),
        "finished": finished,
        "failed": counts[RunStatus.FAILED],
        "counts": dict(counts),
        "eta_s": None if header["status"] != CampaignStatus.RUNNING else eta,
        "runs": runs,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def advertised_engine_versions() -> dict[str, dict[str, str]]:
    """``{backend: {worker: engine version}}`` from the live workers' heartbeats; none when they cannot be read
    (planning on a laptop)."""
    from lem_shared.wire.heartbeat import advertised_engine_versions as advertised

    store = beacons(timeout_s=1.0)
    try:
        return advertised(live_workers(store))
    except BeaconsAway:
        return {}
    finally:
        store.close()


def missing_workers(app: Celery, experiments: list[ExperimentConfig]) -> str | None:
    """Why the campaign's runs would wait for ever (a backend without a live worker, no control worker), with how
    to start what is missing; None when every queue it needs has a consumer."""
    consumers = consumers_by_queue(app)
    missing = sorted({e.backend.value for e in experiments if queue_for(e.backend).value not in consumers})
    if missing:
        hint = "; ".join(
            f"start one with `make up` or `lem-worker-{b}`"
            if b == "pytorch"
            else f"start `lem-worker-{b}` on a host with {b} installed"
            for b in missing
        )
        return (
            f"no live worker for backend(s) {', '.join(missing)}: {hint} "
            "(or pass --no-require-workers to queue the runs for later)"
        )
    if QueueName.CONTROL.value not in consumers:
        return (
            "no control worker (it dispatches runs in order and finalises their energy): start "
            "`lem-control` or `make up` (or pass --no-require-workers to queue the runs for later)"
        )
    return None


def start_campaign(campaign: CampaignConfig, experiments: list[ExperimentConfig]) -> tuple[int, list[RunRequest]]:
    """Write the manifest and send the first runs now, not at the control loop's next pass (and even with no
    control worker up yet); the loop sends whatever this misses. The campaign id and its runs in order."""
    from lem_planner.sender import sender
    from lem_shared.dispatch import advance

    campaign_id, requests = create_campaign(campaign, experiments)
    advance(sender())
    return campaign_id, requests


def wait_for_campaign(
    campaign_id: int,
    timeout: float | None,
    on_progress: Callable[[str, Counter[str]], None] | None = None,
    poll_s: float = 0.5,
) -> str:
    """Wait until the campaign is no longer running (``timeout`` None: for ever) and return its status, calling
    ``on_progress(status, counts)`` at each look; TimeoutError when it is still running after ``timeout`` s (the
    campaign goes on)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status, counts = campaign_progress(campaign_id)
        if on_progress is not None:
            on_progress(status, counts)
        if status != CampaignStatus.RUNNING:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"gave up waiting after {timeout:.0f} s; the campaign goes on: `lem results show {campaign_id}`"
            )
        time.sleep(poll_s)


def run_summary(campaign_id: int, name: str, experiments: int, cycles: int) -> dict[str, Any]:
    """What ``campaign run --json`` prints: the campaign's id, status and run counts per status."""
    status, counts = campaign_progress(campaign_id)
    return {
        "campaign_id": campaign_id,
        "name": name,
        "status": str(status),
        "experiments": experiments,
        "cycles": cycles,
        "runs": sum(counts.values()),
        "counts": {str(k): n for k, n in sorted(counts.items())},
    }


def largest_live_gpu_sets() -> dict[str, tuple[int, str]]:
    """``{backend: (GPUs, worker)}``: the largest GPU set a live worker of each backend advertises in its
    heartbeat (what the dispatcher matches runs against); none when the heartbeats cannot be read."""
    store = beacons(timeout_s=1.0)
    try:
        beats = live_workers(store)
    except BeaconsAway:
        return {}
    finally:
        store.close()
    largest: dict[str, tuple[int, str]] = {}
    for name, beat in sorted(beats.items()):
        gpus = worker_gpus(beat)
        if gpus > largest.get(beat["backend"], (0, ""))[0]:
            largest[beat["backend"]] = (gpus, name)
    return largest


def gpu_shortfall(experiments: list[ExperimentConfig], largest: dict[str, tuple[int, str]]) -> str | None:
    """Why some experiments could never be sent: each needs more GPUs than the largest live worker of its backend
    owns (``largest``: ``largest_live_gpu_sets``); None when every one fits. A backend with no live worker is left
    to the "no live worker" check."""
    short = [
        (index, experiment, experiment.gpus_needed())
        for index, experiment in enumerate(experiments)
        if experiment.backend.value in largest and experiment.gpus_needed() > largest[experiment.backend.value][0]
    ]
    if not short:
        return None
    lines = [
        f"experiment {index} ({experiment.backend.value}, {experiment.model}) needs {needed} GPUs; the largest live "
        f"{experiment.backend.value} worker, {largest[experiment.backend.value][1]}, owns "
        f"{largest[experiment.backend.value][0]}"
        for index, experiment, needed in short[:5]
    ]
    if len(short) > 5:
        lines.append(f"... and {len(short) - 5} more experiments")
    most = max(needed for _, _, needed in short)
    example = "cuda:" + ",".join(str(i) for i in range(most))
    return (
        "not enough GPUs on any live worker, nothing was created: "
        + "; ".join(lines)
        + f". Start a worker for a GPU set of at least {most} (LEM_DEVICE={example}), "
        "or pass --no-require-workers to queue the runs until one is up"
    )
