"""The planner's control worker (queue ``control``): its Celery app and thin tasks over ``lem_planner.finalise``
(attach energy to measured runs, then close their campaign), and the scheduler loop
(``lem_planner.control_loop``) started beside it."""

from __future__ import annotations

import sys
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from lem_planner.control_loop import SchedulerLoop
from lem_planner.finalise import finalise_run
from lem_shared.wire.celery_app import make_celery
from lem_shared.wire.messages import FinaliseRequest
from lem_shared.wire.queues import FINALISE_TASK, QueueName

app = make_celery("lem-control")
# Take a message only when a thread is free to start it (and acknowledge it: see finalise), so none waits
# unacknowledged inside this worker when the broker goes away.
app.conf.worker_disable_prefetch = True

_scheduler = SchedulerLoop(app)


@worker_ready.connect
def _start_scheduler(**_: Any) -> None:
    _scheduler.start()


@worker_shutdown.connect
def _stop_scheduler(**_: Any) -> None:
    _scheduler.stop()


# Acknowledged when it starts, not when it ends: the control worker's work is driven by the database (a measured
# run whose finalise was lost is re-sent by the scheduler pass, refinalise_stale), so it needs no redelivery, and a
# message left unacknowledged when the broker goes away kills this worker (celery 5.7 / kombu 5.7: the consumer
# detaches the transport, then closing its channel restores the unacked message through it: AttributeError
# 'NoneType' object has no attribute 'hostname', "Unrecoverable error"). Nor can the threads pool cancel a task on
# connection loss (worker_cancel_long_running_tasks_on_connection_loss: NotImplementedError ... kill_job); an
# acknowledged one is left running, and finishes.
@app.task(name=FINALISE_TASK, acks_late=False)
def finalise(message: dict[str, Any]) -> str:
    return finalise_run(FinaliseRequest.model_validate(message).run_id)


def main() -> None:
    app.worker_main(
        [
            "worker",
            "--queues",
            QueueName.CONTROL.value,
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "--events",
            "--hostname",
            "control@%h",
            "--loglevel",
            "INFO",
            *sys.argv[1:],
        ]
    )


if __name__ == "__main__":
    main()
