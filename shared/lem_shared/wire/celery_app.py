"""Celery app factory: declared queues, JSON only, and the reliability settings of DESIGN §5."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Exchange, Queue

from lem_shared.settings import Settings, get_settings
from lem_shared.wire.queues import QueueName


class ShadowNamedEvents(AMQP):
    """The ``task-sent`` event names a task by its shadow name, as the worker's ``task-received`` does.

    The two events come from different processes, so Flower may get ``task-sent`` last; its event state merges
    every field of an earlier-state event, and the task would be renamed back to ``lem.run_experiment``."""

    def as_task_v2(self, task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


def make_celery(name: str, settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery(name, broker=settings.broker_url, backend=settings.result_backend, amqp=ShadowNamedEvents)
    exchange = Exchange("lem", type="direct")
    app.conf.update(
        task_queues=[Queue(q.value, exchange, routing_key=q.value) for q in QueueName],
        task_default_queue=QueueName.CONTROL.value,
        task_default_exchange="lem",
        task_default_routing_key=QueueName.CONTROL.value,
        task_create_missing_queues=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=7 * 24 * 3600,
        # At-least-once delivery; the database claim makes a redelivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # Events on, so Flower shows everything.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        enable_utc=True,
        timezone="UTC",
    )
    return app
