"""The Celery app the planner's commands send tasks and broadcasts through (dispatch, revoke, inspect): made from
``lem_shared.celery_app`` like every app, so no worker module (and none of its tasks or signals) is imported."""

from __future__ import annotations

from functools import cache

from celery import Celery

from lem_shared.celery_app import make_celery


@cache
def sender() -> Celery:
    """The process's sender app, made on first use (from the settings then)."""
    return make_celery("lem-cli")
