"""The planner's control worker (queue ``control``): attach energy to measured runs and close campaigns."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update

from lem_shared.celery_app import make_celery
from lem_shared.contracts import FinaliseRequest
from lem_shared.db.models import (
    TERMINAL_RUN_STATUSES,
    Campaign,
    CampaignStatus,
    GpuSample,
    Run,
    RunMetrics,
    RunStatus,
)
from lem_shared.db.session import session_scope
from lem_shared.energy import Sample, window_energy
from lem_shared.queues import FINALISE_TASK, QueueName
from lem_shared.settings import get_settings

log = logging.getLogger(__name__)
app = make_celery("lem-control")

# Samples this far outside the window are read so both edges can be interpolated.
EDGE_MARGIN = timedelta(seconds=2)


def _energy_fields(run: Run, output_tokens: int) -> dict[str, Any] | None:
    """Energy for a measured run, or None while telemetry has not yet covered the window's end."""
    if run.gpu_uuid is None:
        return {"energy_note": f"n/a (no NVML): run on {run.device}, which has no GPU energy counter"}
    assert run.window_start is not None and run.window_end is not None
    with session_scope() as s:
        rows = s.execute(
            select(GpuSample.time, GpuSample.energy_mj, GpuSample.power_w)
            .where(
                GpuSample.gpu_uuid == run.gpu_uuid,
                GpuSample.time >= run.window_start - EDGE_MARGIN,
                GpuSample.time <= run.window_end + EDGE_MARGIN,
            )
            .order_by(GpuSample.time)
        ).all()
    samples = [Sample(t.timestamp(), e, p) for t, e, p in rows]
    start, end = run.window_start.timestamp(), run.window_end.timestamp()
    if not samples or samples[-1].t < end:
        return None
    result = window_energy(samples, start, end)
    if result.energy_j is not None:
        energy, source = result.energy_j, "nvml_energy_counter"
    elif result.power_integral_j is not None:
        energy, source = result.power_integral_j, "nvml_power_integral"
    else:
        return {"energy_note": result.note}
    return {
        "energy_j": energy,
        "energy_power_integral_j": result.power_integral_j,
        "energy_source": source,
        "energy_note": result.note,
        "mean_power_w": result.mean_power_w,
        "j_per_token": energy / output_tokens if output_tokens else None,
    }


def finalise_run(run_id: int, wait_s: float | None = None) -> str:
    """Attach energy to a measured run (waiting up to ``wait_s`` for telemetry), then close the campaign if done."""
    wait_s = get_settings().energy_wait_s if wait_s is None else wait_s
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            return "unknown run"
        s.expunge(run)
        metrics = s.get(RunMetrics, run_id)
        output_tokens = metrics.output_tokens if metrics else 0
    if run.status == RunStatus.MEASURED:
        deadline = time.monotonic() + wait_s
        fields = _energy_fields(run, output_tokens)
        while fields is None and time.monotonic() < deadline:
            time.sleep(0.5)
            fields = _energy_fields(run, output_tokens)
        if fields is None:
            fields = {"energy_note": f"no telemetry for {run.gpu_uuid} up to the window end within {wait_s:.0f} s "
                                     "(is lem-telemetry running on that host?)"}
        with session_scope() as s:
            s.execute(update(RunMetrics).where(RunMetrics.run_id == run_id).values(**fields))
            s.execute(update(Run).where(Run.id == run_id, Run.status == RunStatus.MEASURED)
                      .values(status=RunStatus.DONE))
    close_campaign_if_finished(run.campaign_id)
    return "finalised"


def close_campaign_if_finished(campaign_id: int) -> None:
    with session_scope() as s:
        unfinished = exists().where(Run.campaign_id == campaign_id, Run.status.not_in(TERMINAL_RUN_STATUSES))
        done = select(func.count()).where(Run.campaign_id == campaign_id, Run.status == RunStatus.DONE)
        status = CampaignStatus.DONE if s.scalar(done) else CampaignStatus.FAILED
        s.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.RUNNING, ~unfinished)
            .values(status=status, finished_at=datetime.now(UTC))
        )


@app.task(name=FINALISE_TASK)
def finalise(message: dict[str, Any]) -> str:
    return finalise_run(FinaliseRequest.model_validate(message).run_id)


def main() -> None:
    app.worker_main(["worker", "--queues", QueueName.CONTROL.value, "--pool", "threads", "--concurrency", "2",
                     "--events", "--hostname", "control@%h", "--loglevel", "INFO", *sys.argv[1:]])


if __name__ == "__main__":
    main()
