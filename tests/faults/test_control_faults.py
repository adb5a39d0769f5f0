"""The control worker under broker faults: a real ``lem-control`` with a finalise in flight (slowed by waiting for
telemetry that never comes) while its private Redis is killed and restarted; and a measured run whose finalise
was lost, finalised again by the control worker's scheduler pass. Each run ends ``done``, finalised once."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from lem_shared.db.models import Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.wire.celery_app import make_celery
from lem_shared.wire.queues import FINALISE_TASK, QueueName
from tests.faults.conftest import FaultStack
from tests.integration.conftest import Workers
from tests.integration.manifest import measured_run
from tests.integration.telemetry_helpers import wait_for

# How long a finalise waits for telemetry (none comes for the tests' GPU): the window the broker dies in.
ENERGY_WAIT_S = 10


@pytest.fixture
def control(fault_stack: FaultStack, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(
        {**fault_stack.env, "LEM_ENERGY_WAIT_S": str(ENERGY_WAIT_S), "LEM_DISPATCH_INTERVAL_S": "1"}, tmp_path
    )
    workers.start("control", "lem-control")
    try:
        workers.wait_ready(make_celery("lem-tests"), ["control"])
        yield workers
    finally:
        workers.stop()


def status_of(run_id: int) -> str:
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run is not None
        return run.status


def answers_ping(name: str) -> bool:
    try:
        return any(next(iter(r)).startswith(name + "@") for r in make_celery("lem-tests").control.ping(timeout=1))
    except (OSError, redis.RedisError):  # a connection of this process from before the restart
        return False


def finalisations(log: str) -> int:
    """How many finalise tasks of this worker attached energy to a run (the others found it finalised)."""
    return len(re.findall(rf"Task {re.escape(FINALISE_TASK)}\[[^]]+\] succeeded in [0-9.]+s: 'finalised'", log))


def test_control_worker_survives_a_broker_restart_with_a_finalise_in_flight(
    fault_stack: FaultStack, control: Workers
) -> None:
    """Both threads busy finalising (each waits for telemetry) and a duplicate of each queued behind them, when the
    broker is killed: the control worker stays up, reconnects, and each run is finalised once."""
    runs = [measured_run((time.time() - 5, time.time() - 1), f"GPU-fault-no-telemetry-{i}")[0] for i in range(2)]
    sender = make_celery("lem-tests")
    for run_id in runs * 2:
        sender.send_task(FINALISE_TASK, args=[{"run_id": run_id}], queue=QueueName.CONTROL.value)
    wait_for(lambda: control.log("control").count(f"Task {FINALISE_TASK}[") >= 2, 30, "two finalises received")
    time.sleep(1)  # in flight: waiting for telemetry

    fault_stack.redis.kill()
    time.sleep(3)
    process = control.procs["control"][0]
    assert process.poll() is None, "control exited on the broker loss:\n" + control.log("control")[-3000:]
    fault_stack.redis.start()

    wait_for(
        lambda: all(status_of(r) == "done" for r in runs) or process.poll() is not None,
        ENERGY_WAIT_S + 30,
        "the runs finalised (or the control worker gone)",
        poll=0.5,
    )
    assert process.poll() is None, f"control exited ({process.returncode}):\n" + control.log("control")[-3000:]
    assert [status_of(r) for r in runs] == ["done", "done"]
    with session_scope() as s:
        for run_id in runs:
            metrics = s.get(RunMetrics, run_id)
            assert metrics is not None and metrics.energy_note and "no telemetry" in metrics.energy_note
    # it is back on the broker: it answers ping
    wait_for(lambda: answers_ping("control"), 30, "control answering ping again", poll=1)
    log = control.log("control")
    assert process.poll() is None and "Unrecoverable error" not in log, log[-3000:]
    assert "kill_job" not in log, log[-3000:]
    assert finalisations(log) == 2, log[-3000:]


def test_a_measured_run_whose_finalise_was_lost_is_finalised_again_once(
    fault_stack: FaultStack, control: Workers
) -> None:
    """No finalise message at all (the broker lost it): the scheduler pass re-sends one every second while the
    run is measured; however many arrive while the first waits for telemetry, the run is finalised once."""
    run_id, _ = measured_run((time.time() - 300, time.time() - 290), "GPU-fault-lost-finalise")
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(finished_at=datetime.now(UTC) - timedelta(hours=1)))

    wait_for(lambda: status_of(run_id) == "done", ENERGY_WAIT_S + 30, "the lost finalise re-sent and done", poll=0.5)
    time.sleep(3)  # re-sent duplicates still queued are taken and found finalised
    log = control.log("control")
    assert control.procs["control"][0].poll() is None, log[-3000:]
    assert finalisations(log) == 1, log[-3000:]
