"""`lem-flower`: Celery's Flower for the control app, with Prometheus' /metrics behind the same authentication as
every other page (Flower 2.2 serves /metrics to anyone; its task and worker names and counts are the campaign's
business). /healthcheck stays open: it says "OK" and nothing else. Arguments are Flower's own (--port, ...)."""

from __future__ import annotations

import sys

from flower import urls
from flower.views.monitor import Metrics
from tornado import web

CELERY_APP = "lem_planner.control:app"


class AuthenticatedMetrics(Metrics):
    @web.authenticated
    async def get(self) -> None:
        await super().get()


def protect_metrics() -> None:
    """Swap Flower's /metrics handler for the authenticated one, in the handler list Flower builds its app from."""
    for index, route in enumerate(urls.handlers):
        if isinstance(route, tuple) and route[1] is Metrics:
            urls.handlers[index] = (route[0], AuthenticatedMetrics, *route[2:])


def main() -> None:
    from celery.bin.celery import main as celery_main

    protect_metrics()
    sys.argv = ["celery", "-A", CELERY_APP, "flower", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
