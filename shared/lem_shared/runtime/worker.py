"""The Celery side of every worker: claim a run atomically, measure it in the engine host, record it.

A worker service is this runtime plus one engine adapter: ``make_worker("pytorch", "pkg.adapter:Class")``.
"""

from __future__ import annotations

import logging
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.signals import worker_shutdown
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lem_shared.celery_app import make_celery
from lem_shared.contracts import FinaliseRequest, Measurement, RunRequest, sha256_of
from lem_shared.db.models import BatchTimingRow, Environment, Run, RunMetrics, RunStatus
from lem_shared.db.session import session_scope
from lem_shared.metrics import run_metrics
from lem_shared.queues import FINALISE_TASK, RUN_TASK, Backend, QueueName, queue_for
from lem_shared.runtime.engine_host import EngineFailure, EngineHost
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


def record_measurement(run_id: int, m: Measurement) -> None:
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
                phases={"deep_idle": _span(m.deep_idle), "idle_before": _span(m.idle_before),
                        "idle_after": _span(m.idle_after)},
                finished_at=datetime.now(UTC),
            )
        )


def record_failure(run_id: int, error: str) -> None:
    with session_scope() as s:
        s.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(status=RunStatus.FAILED, error=error, finished_at=datetime.now(UTC))
        )


def execute_run(engine: EngineHost, request: RunRequest, worker: str, baselined: set[int]) -> tuple[int | None, str]:
    """Claim, measure and record one run: (run id or None for a duplicate, status). Celery-free, so a bench
    on a machine without a broker runs exactly what the worker runs."""
    run_id = claim_run(request.run_key, worker, socket.gethostname())
    if run_id is None:
        log.info("run %s already claimed or finished: nothing to do", request.run_key[:12])
        return None, "duplicate"
    deep_idle_s = 0.0
    if request.campaign_id not in baselined:
        deep_idle_s = float(request.experiment.get("measurement", {}).get("baseline_idle_s", 0.0))
    try:
        measurement = engine.measure(request.experiment, deep_idle_s=deep_idle_s)
    except EngineFailure as exc:
        record_failure(run_id, str(exc))
        return run_id, RunStatus.FAILED.value
    baselined.add(request.campaign_id)
    record_measurement(run_id, measurement)
    return run_id, RunStatus.MEASURED.value


def make_worker(backend: Backend, adapter_path: str) -> Celery:
    """A Celery app whose one task measures runs of ``backend`` with the adapter at ``adapter_path``."""
    settings = get_settings()
    app = make_celery(f"lem-worker-{backend.value}", settings)
    engine = EngineHost(adapter_path, settings.device, settings.run_timeout_s)
    baselined: set[int] = set()  # campaigns whose deep-idle baseline this worker's GPU has measured

    @app.task(name=RUN_TASK, bind=True, shared=False)
    def run_experiment(self: Any, message: dict[str, Any]) -> dict[str, Any]:
        request = RunRequest.model_validate(message)
        run_id, status = execute_run(engine, request, self.request.hostname or "unknown", baselined)
        if run_id is None:
            return {"run_key": request.run_key, "status": status}
        app.send_task(
            FINALISE_TASK, args=[FinaliseRequest(run_id=run_id).model_dump(mode="json")], queue=QueueName.CONTROL
        )
        return {"run_key": request.run_key, "run_id": run_id, "status": status}

    @worker_shutdown.connect(weak=False)
    def _stop_engine(**_: Any) -> None:
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
