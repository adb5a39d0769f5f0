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
from sqlalchemy.dialects.postgresql import insert as pg_insert

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


def _environment_id(s: Any, data: dict[str, Any]) -> int:
    digest = sha256_of(data)
    s.execute(pg_insert(Environment).values(hash=digest, data=data).on_conflict_do_nothing(index_elements=["hash"]))
    return s.execute(select(Environment.id).where(Environment.hash == digest)).scalar_one()


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


def make_worker(backend: Backend, adapter_path: str) -> Celery:
    """A Celery app whose one task measures runs of ``backend`` with the adapter at ``adapter_path``."""
    settings = get_settings()
    app = make_celery(f"lem-worker-{backend.value}", settings)
    engine = EngineHost(adapter_path, settings.device, settings.run_timeout_s)

    @app.task(name=RUN_TASK, bind=True, shared=False)
    def run_experiment(self: Any, message: dict[str, Any]) -> dict[str, Any]:
        request = RunRequest.model_validate(message)
        run_id = claim_run(request.run_key, self.request.hostname or "unknown", socket.gethostname())
        if run_id is None:
            log.info("run %s already claimed or finished: nothing to do", request.run_key[:12])
            return {"run_key": request.run_key, "status": "duplicate"}
        try:
            measurement = engine.measure(request.experiment)
        except EngineFailure as exc:
            record_failure(run_id, str(exc))
            status = RunStatus.FAILED
        else:
            record_measurement(run_id, measurement)
            status = RunStatus.MEASURED
        app.send_task(
            FINALISE_TASK, args=[FinaliseRequest(run_id=run_id).model_dump(mode="json")], queue=QueueName.CONTROL
        )
        return {"run_key": request.run_key, "run_id": run_id, "status": status.value}

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
