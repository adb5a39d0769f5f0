"""The events Flower builds its task list from name a run task the same way, whichever reaches it first."""

from __future__ import annotations

from lem_shared.wire.celery_app import make_celery
from lem_shared.wire.queues import RUN_TASK


def test_the_task_sent_event_carries_the_shadow_name_the_worker_reports() -> None:
    # Flower merges every field of a task-sent event that arrives after task-received (an earlier state), so a
    # sent event named lem.run_experiment would undo the worker's "run campaign#1/experiment 0/cycle 0".
    app = make_celery("test-events")
    message = app.amqp.create_task_message(
        "k" * 64, RUN_TASK, [{}], {}, shadow="run c#1/experiment 0/cycle 0", create_sent_event=True
    )
    assert message.headers["task"] == RUN_TASK and message.headers["shadow"] == "run c#1/experiment 0/cycle 0"
    assert message.sent_event["name"] == "run c#1/experiment 0/cycle 0"
    plain = app.amqp.create_task_message("f" * 64, "lem.control.finalise_run", [{}], {}, create_sent_event=True)
    assert plain.sent_event["name"] == "lem.control.finalise_run"
