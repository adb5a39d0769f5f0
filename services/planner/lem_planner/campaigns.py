"""Create a campaign's manifest (campaign → experiments → runs) and dispatch its runs by task name."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery
from sqlalchemy import update

from lem_shared.config import CampaignConfig, ExperimentConfig
from lem_shared.contracts import RunRequest, run_key, sha256_of
from lem_shared.db.models import Campaign, Experiment, Run, RunStatus
from lem_shared.db.session import session_scope
from lem_shared.queues import RUN_TASK, queue_for


def create_campaign(campaign: CampaignConfig, experiments: list[ExperimentConfig]) -> tuple[int, list[RunRequest]]:
    """Write the manifest in one transaction; return the campaign id and its runs in dispatch order.

    Cycles are interleaved: every experiment once per cycle, so slow drift (thermal, clocks) is spread
    over all experiments rather than landing on one.
    """
    spec = campaign.model_dump(mode="json")
    with session_scope() as s:
        row = Campaign(name=campaign.name, spec=spec, spec_hash=sha256_of(spec))
        s.add(row)
        s.flush()
        rows = []
        for index, experiment in enumerate(experiments):
            config = experiment.model_dump(mode="json")
            exp_row = Experiment(
                campaign_id=row.id, index=index, backend=experiment.backend.value,
                config=config, config_hash=experiment.config_hash(),
            )
            s.add(exp_row)
            rows.append((exp_row, config))
        s.flush()
        requests = []
        for cycle in range(campaign.cycles):
            for exp_row, config in rows:
                key = run_key(row.id, config, cycle)
                run = Run(run_key=key, campaign_id=row.id, experiment_id=exp_row.id, cycle=cycle)
                s.add(run)
                s.flush()
                requests.append(
                    RunRequest(run_key=key, run_id=run.id, campaign_id=row.id, cycle=cycle, experiment=config)
                )
        return row.id, requests


def dispatch(app: Celery, requests: list[RunRequest]) -> None:
    """Send each run to its backend's queue; the run key is the task id, so Flower and the DB agree."""
    for request in requests:
        backend = request.experiment["backend"]
        app.send_task(RUN_TASK, args=[request.model_dump(mode="json")], task_id=request.run_key,
                      queue=queue_for(backend).value)
        with session_scope() as s:
            s.execute(
                update(Run)
                .where(Run.id == request.run_id, Run.status == RunStatus.PENDING)
                .values(status=RunStatus.DISPATCHED, dispatched_at=datetime.now(UTC))
            )


def consumers_by_queue(app: Celery, timeout: float = 2.0) -> dict[str, list[str]]:
    """Live workers per queue, asked through the broker (``celery inspect active_queues``)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    out: dict[str, list[str]] = {}
    for worker, queues in replies.items():
        for queue in queues:
            out.setdefault(queue["name"], []).append(worker)
    return out
