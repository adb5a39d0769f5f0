"""Celery app factory: declared queues, JSON only, and the reliability settings of DESIGN §5."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from lem_shared.queues import QueueName
from lem_shared.settings import Settings, get_settings


def make_celery(name: str, settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery(name, broker=settings.broker_url, backend=settings.result_backend)
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
