"""The Celery app the planner's commands send tasks and broadcasts through (dispatch, revoke, inspect): made from
``lem_shared.wire.celery_app`` like every app, so no worker module (and none of its tasks or signals) is imported."""

from __future__ import annotations

from functools import cache

from celery import Celery

from lem_shared.settings import get_settings
from lem_shared.wire.celery_app import make_celery


@cache
def _sender_for(broker_url: str, result_backend: str) -> Celery:
    return make_celery("lem-cli")


def sender() -> Celery:
    """The sender app of the current settings, made on first use: one per broker, so a process whose settings
    change (commands run in one test process) never sends through an app made for a broker that is gone."""
    settings = get_settings()
    return _sender_for(settings.broker_url, settings.result_backend)
