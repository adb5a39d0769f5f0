"""Celery app factory: declared queues, JSON only, and the reliability settings of DESIGN §5."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Exchange, Queue

from lem_shared.settings import Settings, get_settings, is_embedded_broker
from lem_shared.wire.queues import QueueName

log = logging.getLogger(__name__)


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


def broker_options(settings: Settings) -> dict[str, Any]:
    """The transport's options. Redis: its visibility timeout (DESIGN §5). The embedded broker (kombu's filesystem
    transport): one folder for messages in and out, fan-out tables (remote control, events) in ``control``, and
    each message moved on delivery into ``processed`` within the same folder, so exactly one consumer gets it
    (a rename is atomic only on one filesystem; the transport's default, the temp folder, may be another).
    The filesystem transport removes a message when delivered, not when acknowledged: a worker killed mid-run
    loses it, and the database's reclaim (heartbeats, ``redispatch_after_s``) sends the run again."""
    if not is_embedded_broker(settings.broker_url):
        return {"visibility_timeout": settings.visibility_timeout_s}
    folder = settings.broker_folder()
    for sub in ("messages", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "messages"),
        "data_folder_out": str(folder / "messages"),
        "processed_folder": str(folder / "processed"),
        "store_processed": True,
        "control_folder": str(folder / "control"),
        "polling_interval": 0.2,
    }


def make_celery(name: str, settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if line := settings.stack_line():
        log.info("%s: %s", name, line)
    app = Celery(name, broker=settings.broker_url, backend=settings.result_backend or None, amqp=ShadowNamedEvents)
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
        broker_transport_options=broker_options(settings),
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


def prune_broker_folder(settings: Settings, older_than_s: float = 600.0) -> int:
    """The embedded broker's housekeeping (the control worker's loop calls it): remove delivered messages older
    than ``older_than_s``, and undelivered ones as old that are not for a queue of ours (events and remote-control
    replies to a Flower or ``celery inspect`` that went away, which nobody will read). Runs are never removed.
    Returns how many files went; nothing for a broker that is not the embedded one."""
    import time

    if not is_embedded_broker(settings.broker_url):
        return 0
    ours = {f"{queue.value}.msg" for queue in QueueName}
    cutoff = time.time() - older_than_s
    removed = 0
    folder = settings.broker_folder()
    for sub, keep in (("processed", set()), ("messages", ours)):
        try:
            entries = list((folder / sub).iterdir())
        except FileNotFoundError:
            continue
        for path in entries:
            if path.name.partition(".")[2] in keep:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # delivered or removed meanwhile
    return removed
