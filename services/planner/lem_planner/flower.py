"""`lem-flower`: Celery's Flower for the control app, with Prometheus' /metrics behind the same authentication as
every other page (Flower 2.2 serves /metrics to anyone; its task and worker names and counts are the campaign's
business). /healthcheck stays open: it says "OK" and nothing else. Arguments are Flower's own (--port, ...).

The login comes from LEM_FLOWER_USER and LEM_FLOWER_PASSWORD (lem_shared.settings: the environment or .env), in
local mode and in compose alike; Flower's own --basic-auth / FLOWER_BASIC_AUTH are refused (one way to set it).
Without them Flower runs unauthenticated, says so, and listens on 127.0.0.1 only."""

from __future__ import annotations

import os
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


def flower_argv(argv: list[str]) -> list[str]:
    """Flower's arguments, with the login from the settings put in FLOWER_BASIC_AUTH (the environment, never the
    command line, which `ps` shows); exits 2 on a half or unusable login or on Flower's own auth options."""
    from lem_shared.settings import get_settings

    if "FLOWER_BASIC_AUTH" in os.environ or any(a.startswith(("--basic-auth", "--basic_auth")) for a in argv):
        sys.exit("lem-flower: set LEM_FLOWER_USER and LEM_FLOWER_PASSWORD instead of Flower's basic auth option")
    settings = get_settings()
    user, password = settings.flower_user, settings.flower_password.get_secret_value()
    if bool(user) != bool(password):
        sys.exit("lem-flower: set both LEM_FLOWER_USER and LEM_FLOWER_PASSWORD, or neither")
    if ":" in user or "," in user + password:
        sys.exit("lem-flower: LEM_FLOWER_USER may not contain ':' or ',', LEM_FLOWER_PASSWORD not ','")
    if user:
        os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
        return argv
    print(
        "lem-flower: LEM_FLOWER_USER/LEM_FLOWER_PASSWORD are not set: Flower runs without authentication, "
        "on 127.0.0.1 only",
        file=sys.stderr,
    )
    return [*argv, "--address=127.0.0.1"]  # the last --address wins


def main() -> None:
    from celery.bin.celery import main as celery_main

    argv = flower_argv(sys.argv[1:])
    protect_metrics()
    sys.argv = ["celery", "-A", CELERY_APP, "flower", *argv]
    celery_main()


if __name__ == "__main__":
    main()
